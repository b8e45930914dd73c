"""The worker process: claim an experiment, have the training child run it, record it.

The worker holds the lease (heartbeats from this process, never from inside a training step),
writes every result under its claim's token, and decides what each way of stopping means:
cancel, shutdown, a lost lease, a crashed training process, a run past MAX_RUN_SECONDS.
"""

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from threading import Event
from types import FrameType
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import queue, registry
from service.ml.trainer import TrainerCrashedError, TrainerProcess
from service.settings import Settings

logger = logging.getLogger(__name__)

MESSAGE_WAIT_SECONDS = 0.05
DATABASE_RETRY_SECONDS = 0.5
# How long a run past MAX_RUN_SECONDS gets to stop between batches before it is killed.
OVERDUE_KILL_SECONDS = 2.0
MIB = 1024**2
Result = TypeVar("Result")


class DatabaseLostError(RuntimeError):
    """The database stayed unreachable for longer than a lease."""


def resolve_device(requested: str, gpus: list[str]) -> str:
    """'auto' becomes 'gpu' where the Keras backend sees a GPU, else 'cpu'."""
    if requested == "gpu" and not gpus:
        raise SystemExit(
            "--device gpu, but the Keras backend sees no GPU: check the driver, or use --device cpu"
        )
    if requested == "auto":
        return "gpu" if gpus else "cpu"
    return requested


@dataclass
class _Run:
    """One claimed experiment being trained, and what the worker has decided about it."""

    claim: queue.Claim
    trainer: TrainerProcess
    # This attempt's claim plus MAX_RUN_SECONDS, on this worker's monotonic clock: the claim
    # does not say how long earlier attempts ran.
    deadline: float
    lease_lost: bool = False
    cancelling: bool = False
    overdue: bool = False
    kill_at: float | None = None
    grace_deadline: float | None = None
    next_heartbeat: float = 0.0

    def lose_lease(self) -> None:
        self.lease_lost = True
        self.trainer.stop_now.set()


class _Wakeup:
    """Idle waiting: PostgreSQL's LISTEN/NOTIFY wakes the worker at once; polling is the
    fallback on every database."""

    def __init__(self, database_url: str, stop: Event) -> None:
        url = make_url(database_url)
        self.stop = stop
        self.conninfo = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url.get_backend_name() == "postgresql"
            else None
        )
        self.connection = None

    def wait(self, timeout: float) -> None:
        if self.conninfo is None or self.stop.is_set():
            self.stop.wait(timeout)
            return
        import psycopg

        try:
            if self.connection is None:
                self.connection = psycopg.connect(self.conninfo, autocommit=True)
                self.connection.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
            for _ in self.connection.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            self.close()
            self.stop.wait(timeout)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class Worker:
    """Runs experiments one at a time until stopped (or, with drain, until the queue is empty)."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], *, device: str
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.requested_device = device
        self.host = socket.gethostname()
        self.worker_id = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.shutdown = Event()
        self.force_stop = Event()
        self.trainer: TrainerProcess | None = None
        self.device = "cpu"

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            if self.shutdown.is_set():
                logger.warning("%s again: stopping the training now", name)
                self.force_stop.set()
            else:
                logger.info("%s: finishing the current epoch, then stopping", name)
                self.shutdown.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, drain: bool = False) -> None:
        """Register, then loop: recover expired leases, claim, train; wait when idle."""
        self.trainer = self._new_trainer()
        wakeup = _Wakeup(self.settings.database_url, self.shutdown)
        try:
            self.device = resolve_device(self.requested_device, self.trainer.gpus)
            registry.register_worker(
                self.session_factory,
                worker_id=self.worker_id,
                host=self.host,
                pid=os.getpid(),
                device=self.device,
                lease_seconds=self.settings.lease_seconds,
            )
            logger.info("worker %s started on %s", self.worker_id, self.device)
            self._loop(drain, wakeup)
        finally:
            wakeup.close()
            self.trainer.close()
            try:
                registry.unregister_worker(self.session_factory, self.worker_id)
            except DBAPIError as error:
                logger.warning("could not unregister: %s", error.orig)
            logger.info("worker %s stopped", self.worker_id)

    def _loop(self, drain: bool, wakeup: _Wakeup) -> None:
        heartbeat_due = 0.0
        while not self.shutdown.is_set():
            try:
                # On its own interval, not on every poll: an idle worker polls often.
                if time.monotonic() >= heartbeat_due:
                    registry.worker_heartbeat(
                        self.session_factory, self.worker_id, experiment_id=None
                    )
                    heartbeat_due = time.monotonic() + self.settings.worker_heartbeat_seconds
                recovered = queue.recover_expired_leases(
                    self.session_factory,
                    lease_seconds=self.settings.lease_seconds,
                    max_attempts=self.settings.max_attempts,
                )
                if recovered:
                    logger.warning("recovered experiments with expired leases: %s", recovered)
                claim = queue.claim_next_experiment(
                    self.session_factory, worker_id=self.worker_id, worker_device=self.device
                )
            except DBAPIError as error:
                logger.warning("database unavailable, retrying: %s", error.orig)
                self.shutdown.wait(self.settings.worker_poll_seconds)
                continue
            if claim is None:
                if drain:
                    return
                wakeup.wait(self.settings.worker_poll_seconds)
                continue
            heartbeat_due = 0.0  # Back to idle: say so at the next turn.
            try:
                self.process(claim)
            except DatabaseLostError as error:
                # The lease runs out and another worker (or this one) resumes the experiment.
                logger.error("experiment %s: %s", claim.experiment_id, error)
                self._replace_trainer()
            else:
                self._renew_worn_trainer()

    def _with_retries(self, operation: Callable[..., Result], *args, **kwargs) -> Result:
        """Ride out a database restart; give up once a lease's worth of time has passed."""
        deadline = time.monotonic() + self.settings.lease_seconds
        while True:
            try:
                return operation(*args, **kwargs)
            except DBAPIError as error:
                if time.monotonic() > deadline:
                    raise DatabaseLostError(f"database unreachable: {error.orig}") from error
                logger.warning("database unavailable, retrying: %s", error.orig)
                time.sleep(DATABASE_RETRY_SECONDS)

    def _replace_trainer(self) -> None:
        assert self.trainer is not None
        if self.trainer.alive():
            self.trainer.kill()
        if not self.shutdown.is_set():
            self.trainer = self._new_trainer()

    def _renew_worn_trainer(self) -> None:
        """Start a fresh training process after TRAINER_MAX_EXPERIMENTS experiments or once it
        holds more than TRAINER_MAX_RSS_BYTES: what the backend keeps from every run goes back
        to the system with the old one."""
        assert self.trainer is not None
        if self.shutdown.is_set():
            return
        old = self.trainer
        rss = old.memory_bytes()
        if old.experiments >= self.settings.trainer_max_experiments:
            reason = f"TRAINER_MAX_EXPERIMENTS ({old.experiments}) reached"
        elif rss > self.settings.trainer_max_rss_bytes:
            reason = (
                f"it holds {rss / MIB:.0f} MiB, more than TRAINER_MAX_RSS_BYTES "
                f"({self.settings.trainer_max_rss_bytes} bytes)"
            )
        else:
            return
        self._replace_trainer()
        logger.info("training process %s replaced by %s: %s", old.pid, self.trainer.pid, reason)

    def _new_trainer(self) -> TrainerProcess:
        return TrainerProcess(
            self.settings.fashion_mnist_dir,
            nice=self.settings.worker_nice,
            threads=self.settings.worker_threads,
        )

    def process(self, claim: queue.Claim) -> None:
        """Train one claimed experiment until it succeeds, fails, is cancelled or released."""
        assert self.trainer is not None
        logger.info("experiment %s claimed (attempt %s)", claim.experiment_id, claim.attempt)
        resume = self._with_retries(queue.load_checkpoint, self.session_factory, claim)
        device = "gpu" if self.device == "gpu" and claim.spec.device != "cpu" else "cpu"
        run = _Run(claim, self.trainer, deadline=time.monotonic() + self.settings.max_run_seconds)
        run.trainer.start(claim.spec.model_dump(mode="json"), device, resume)
        if resume:
            logger.info("experiment %s resumes after epoch %s", claim.experiment_id, resume[0])

        while True:
            try:
                message = run.trainer.poll(MESSAGE_WAIT_SECONDS)
            except TrainerCrashedError as error:
                logger.error("experiment %s: %s", claim.experiment_id, error)
                if not run.lease_lost:
                    self._with_retries(
                        queue.requeue_lost,
                        self.session_factory,
                        claim,
                        error=str(error),
                        max_attempts=self.settings.max_attempts,
                    )
                self._replace_trainer()
                return
            if message is not None and self._handle_message(run, message):
                return
            now = time.monotonic()
            if now >= run.next_heartbeat and not run.lease_lost:
                self._heartbeat(run, now)
            if self._stop_if_overdue(run, now) or self._stop_on_shutdown(run, now):
                return

    def _handle_message(self, run: _Run, message: tuple) -> bool:
        """Record what the training child reports; True once the run is over."""
        kind, claim = message[0], run.claim
        if kind == "started":
            _, device_label, steps = message
            if not self._with_retries(
                queue.start_training,
                self.session_factory,
                claim,
                device=device_label,
                steps_per_epoch=steps,
            ):
                run.lose_lease()
        elif kind == "epoch":
            _, result, checkpoint = message
            if not run.lease_lost and not self._with_retries(
                queue.record_epoch, self.session_factory, claim, result, checkpoint
            ):
                run.lose_lease()
        elif kind == "done":
            if not run.lease_lost:
                final = self._with_retries(queue.complete, self.session_factory, claim, message[1])
                logger.info("experiment %s %s", claim.experiment_id, final or "lost")
            return True
        elif kind == "error":
            if not run.lease_lost:
                self._with_retries(queue.fail, self.session_factory, claim, error=message[1])
                logger.error("experiment %s failed: %s", claim.experiment_id, message[1])
            return True
        elif kind == "interrupted":
            self._after_interruption(run)
            return True
        return False

    def _heartbeat(self, run: _Run, now: float) -> None:
        """Renew the lease and publish progress; stop the training when the lease is gone or a
        cancel was asked for."""
        claim = run.claim
        run.next_heartbeat = now + self.settings.worker_heartbeat_seconds
        reply = self._with_retries(
            queue.heartbeat,
            self.session_factory,
            claim,
            epoch=run.trainer.epoch.value,
            step=run.trainer.step.value,
        )
        self._with_retries(
            registry.worker_heartbeat,
            self.session_factory,
            self.worker_id,
            experiment_id=claim.experiment_id,
        )
        if not reply.holds_lease:
            logger.warning("experiment %s: lease lost, stopping", claim.experiment_id)
            run.lose_lease()
        elif reply.cancel_requested and not run.cancelling:
            logger.info("experiment %s: cancel requested", claim.experiment_id)
            run.cancelling = True
            run.trainer.stop_now.set()

    def _stop_if_overdue(self, run: _Run, now: float) -> bool:
        """Past MAX_RUN_SECONDS, stop the training between batches, or kill it when it has not
        stopped OVERDUE_KILL_SECONDS later; True once the run is over."""
        if not run.overdue and now > run.deadline:
            logger.warning(
                "experiment %s ran past MAX_RUN_SECONDS (%g s), stopping it",
                run.claim.experiment_id,
                self.settings.max_run_seconds,
            )
            run.overdue = True
            run.kill_at = now + OVERDUE_KILL_SECONDS
            run.trainer.stop_now.set()
        if run.kill_at is None or now < run.kill_at:
            return False
        logger.warning(
            "experiment %s: the training did not stop, killing it", run.claim.experiment_id
        )
        run.trainer.kill()
        self._after_interruption(run)
        self._replace_trainer()
        return True

    def _stop_on_shutdown(self, run: _Run, now: float) -> bool:
        """On SIGTERM let the epoch finish, up to the grace period; on a second signal or past
        it, kill the training and put the experiment back. True once the run is over."""
        if self.shutdown.is_set() and run.grace_deadline is None:
            run.trainer.stop_after_epoch.set()
            run.grace_deadline = now + self.settings.shutdown_grace_seconds
        grace_over = run.grace_deadline is not None and now > run.grace_deadline
        if not (self.force_stop.is_set() or grace_over):
            return False
        logger.warning("experiment %s: stopping the training now", run.claim.experiment_id)
        run.trainer.kill()
        if not run.lease_lost:
            self._with_retries(
                queue.release,
                self.session_factory,
                run.claim,
                error="the worker shut down before the epoch ended",
            )
        return True

    def _after_interruption(self, run: _Run) -> None:
        """The training stopped before its end; why decides where the experiment goes."""
        claim = run.claim
        if run.lease_lost:
            logger.warning("experiment %s: taken over by another worker", claim.experiment_id)
        elif run.cancelling:
            self._with_retries(queue.finish_cancelled, self.session_factory, claim)
            logger.info("experiment %s cancelled", claim.experiment_id)
        elif run.overdue:
            error = f"ran past MAX_RUN_SECONDS ({self.settings.max_run_seconds:g} s)"
            self._with_retries(queue.fail, self.session_factory, claim, error=error)
            logger.error("experiment %s failed: %s", claim.experiment_id, error)
        elif self._with_retries(queue.release, self.session_factory, claim):
            logger.info("experiment %s returned to the queue", claim.experiment_id)
