"""One claimed experiment in the training child: what the child reports, the worker's
heartbeats and deadlines, and what each way of stopping means for the experiment.

The worker holds the lease (heartbeats from this process, never from inside a training step)
and decides: cancel, shutdown, a lost lease, a crashed training process, a run past
MAX_RUN_SECONDS.
"""

import logging
import time
from threading import Event

from service.ml.messages import Done, EpochFinished, Failed, Interrupted, Started, TrainerMessage
from service.results import EpochResult
from service.settings import Settings
from service.worker.claimed_run import ClaimedRun
from service.worker.trainer_process import TrainerCrashedError, TrainerProcess

logger = logging.getLogger(__name__)

MESSAGE_WAIT_SECONDS = 0.05
# How long a run past MAX_RUN_SECONDS gets to stop between batches before it is killed.
OVERDUE_KILL_SECONDS = 2.0


class TrainingRun:
    """Trains one claimed experiment until it succeeds, fails, is cancelled or released."""

    def __init__(
        self,
        claimed: ClaimedRun,
        trainer: TrainerProcess,
        settings: Settings,
        *,
        shutdown: Event,
        force_stop: Event,
    ) -> None:
        self.claimed = claimed
        self.trainer = trainer
        self.settings = settings
        self.shutdown = shutdown
        self.force_stop = force_stop
        # This attempt's start plus MAX_RUN_SECONDS, on this worker's monotonic clock: the
        # claim does not say how long earlier attempts ran.
        self.deadline = time.monotonic() + settings.max_run_seconds
        self.lease_lost = False
        self.cancelling = False
        # From which epoch on its study's pruning rule judges it, and why it stopped it.
        self.judged_from: int | None = None
        self.pruned: str | None = None
        self.overdue = False
        self.kill_at: float | None = None
        self.grace_deadline: float | None = None
        self.next_heartbeat = 0.0

    @property
    def experiment_id(self) -> int:
        return self.claimed.experiment_id

    def train(self, device: str) -> bool:
        """Run it to its end on `device`; True when the training process died or was killed
        on the way and must be replaced."""
        resume = self.claimed.load_checkpoint()
        self.judged_from = self.claimed.judged_from_epoch()
        self.trainer.start(self.claimed.claim.spec, device, resume, self.judged_from)
        if resume:
            logger.info("experiment %s resumes after epoch %s", self.experiment_id, resume.epoch)
        while True:
            try:
                message = self.trainer.poll(MESSAGE_WAIT_SECONDS)
            except TrainerCrashedError as error:
                self._on_crash(error)
                return True
            if message is not None and self._handle(message):
                return False
            now = time.monotonic()
            if now >= self.next_heartbeat and not self.lease_lost:
                self._heartbeat(now)
            if self._stop_if_overdue(now) or self._stop_on_shutdown(now):
                return True

    def _handle(self, message: TrainerMessage) -> bool:
        """Act on what the child reports; True once the run is over."""
        match message:
            case Started():
                self._on_started(message)
            case EpochFinished():
                self._on_epoch_finished(message)
            case Done():
                self._on_done(message)
                return True
            case Failed():
                self._on_failed(message)
                return True
            case Interrupted():
                self._on_interrupted()
                return True
        return False

    def _on_started(self, started: Started) -> None:
        if not self.claimed.start_training(
            device=started.device,
            backend=started.backend,
            steps_per_epoch=started.steps_per_epoch,
            reproducibility=started.reproducibility,
        ):
            self._lose_lease()

    def _on_epoch_finished(self, finished: EpochFinished) -> None:
        if not self.lease_lost and not self.claimed.record_epoch(
            finished.result, finished.checkpoint
        ):
            self._lose_lease()
        epoch = finished.result.epoch
        # The child waits for the verdict on each such epoch, as the rule sees it committed.
        if (
            self.judged_from is not None
            and self.judged_from <= epoch < self.claimed.claim.spec.epochs
        ):
            self.trainer.send_verdict(stop=self._prune(finished.result))

    def _prune(self, result: EpochResult) -> bool:
        """Whether the run stops after this epoch: pruned, or already stopping."""
        if self.lease_lost or self.cancelling:
            return True
        self.pruned = self.claimed.prune_reason(result)
        if self.pruned is not None:
            logger.info("experiment %s: %s", self.experiment_id, self.pruned)
        return self.pruned is not None

    def _on_done(self, done: Done) -> None:
        if not self.lease_lost:
            final = self.claimed.complete(done.result)
            logger.info("experiment %s %s", self.experiment_id, final or "lost")

    def _on_failed(self, failed: Failed) -> None:
        if not self.lease_lost:
            self.claimed.fail(failed.error)
            logger.error("experiment %s failed: %s", self.experiment_id, failed.error)

    def _on_interrupted(self) -> None:
        """The training stopped before its end; why decides where the experiment goes."""
        if self.lease_lost:
            logger.warning("experiment %s: taken over by another worker", self.experiment_id)
        elif self.cancelling:
            self.claimed.finish_cancelled()
            logger.info("experiment %s cancelled", self.experiment_id)
        elif self.pruned is not None:
            self.claimed.finish_pruned(self.pruned)
        elif self.overdue:
            error = f"ran past MAX_RUN_SECONDS ({self.settings.max_run_seconds:g} s)"
            self.claimed.fail(error)
            logger.error("experiment %s failed: %s", self.experiment_id, error)
        elif self.claimed.release():
            logger.info("experiment %s returned to the queue", self.experiment_id)

    def _on_crash(self, error: TrainerCrashedError) -> None:
        logger.error("experiment %s: %s", self.experiment_id, error)
        if not self.lease_lost:
            self.claimed.requeue_lost(str(error), max_attempts=self.settings.max_attempts)

    def _lose_lease(self) -> None:
        """Another worker holds the experiment now: stop, and write nothing more."""
        if not self.lease_lost:
            logger.warning("experiment %s: lease lost, stopping", self.experiment_id)
        self.lease_lost = True
        self.trainer.stop_now.set()

    def _heartbeat(self, now: float) -> None:
        """Renew the lease and publish progress; stop the training when the lease is gone or a
        cancel was asked for."""
        self.next_heartbeat = now + self.settings.worker_heartbeat_seconds
        reply = self.claimed.heartbeat(epoch=self.trainer.epoch.value, step=self.trainer.step.value)
        if not reply.holds_lease:
            self._lose_lease()
        elif reply.cancel_requested and not self.cancelling:
            logger.info("experiment %s: cancel requested", self.experiment_id)
            self.cancelling = True
            self.trainer.stop_now.set()

    def _stop_if_overdue(self, now: float) -> bool:
        """Past MAX_RUN_SECONDS, stop the training between batches, or kill it when it has not
        stopped OVERDUE_KILL_SECONDS later; True once it is killed and the run is over."""
        if not self.overdue and now > self.deadline:
            logger.warning(
                "experiment %s ran past MAX_RUN_SECONDS (%g s), stopping it",
                self.experiment_id,
                self.settings.max_run_seconds,
            )
            self.overdue = True
            self.kill_at = now + OVERDUE_KILL_SECONDS
            self.trainer.stop_now.set()
        if self.kill_at is None or now < self.kill_at:
            return False
        logger.warning("experiment %s: the training did not stop, killing it", self.experiment_id)
        self.trainer.kill()
        self._on_interrupted()
        return True

    def _stop_on_shutdown(self, now: float) -> bool:
        """On SIGTERM let the epoch finish, up to the grace period; on a second signal or past
        it, kill the training and put the experiment back. True once it is killed."""
        if self.shutdown.is_set() and self.grace_deadline is None:
            self.trainer.stop_after_epoch.set()
            self.grace_deadline = now + self.settings.shutdown_grace_seconds
        grace_over = self.grace_deadline is not None and now > self.grace_deadline
        if not (self.force_stop.is_set() or grace_over):
            return False
        logger.warning("experiment %s: stopping the training now", self.experiment_id)
        self.trainer.kill()
        if not self.lease_lost:
            self.claimed.release(error="the worker shut down before the epoch ended")
        return True
