"""The worker process's loop: register, recover expired leases, claim, train, wait when idle.

Each claimed experiment is trained by a `TrainingRun` in the worker's training child; the
child is replaced when it dies, is killed, or has worn out (TRAINER_MAX_EXPERIMENTS,
TRAINER_MAX_RSS_BYTES).
"""

import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from threading import Event
from types import FrameType

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import leases, queue, registry
from service.queue import Claim
from service.settings import Settings
from service.worker.claimed_run import ClaimedRun, DatabaseLostError
from service.worker.trainer_process import TrainerProcess
from service.worker.training_run import TrainingRun
from service.worker.wakeup import Wakeup

logger = logging.getLogger(__name__)

MIB = 1024**2


def resolve_device(requested: str, gpus: list[str]) -> str:
    """'auto' becomes 'gpu' where the Keras backend sees a GPU, else 'cpu'."""
    if requested == "gpu" and not gpus:
        raise SystemExit(
            "--device gpu, but the Keras backend sees no GPU: check the driver, or use --device cpu"
        )
    if requested == "auto":
        return "gpu" if gpus else "cpu"
    return requested


class TrainingWorker:
    """Runs experiments one at a time until stopped (or, with drain, until the queue is empty).

    `trainer_factory` starts a training child; tests give one that replays scripted messages.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        device: str,
        trainer_factory: Callable[[], TrainerProcess] | None = None,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.requested_device = device
        self.trainer_factory = trainer_factory or self._start_trainer_process
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
        self.trainer = self.trainer_factory()
        wakeup = Wakeup(self.settings.database_url, self.shutdown)
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

    def _loop(self, drain: bool, wakeup: Wakeup) -> None:
        heartbeat_due = 0.0
        while not self.shutdown.is_set():
            try:
                # On its own interval, not on every poll: an idle worker polls often.
                if time.monotonic() >= heartbeat_due:
                    registry.worker_heartbeat(
                        self.session_factory, self.worker_id, experiment_id=None
                    )
                    heartbeat_due = time.monotonic() + self.settings.worker_heartbeat_seconds
                claim = self._recover_and_claim()
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
                spent = self.train(claim)
            except DatabaseLostError as error:
                # The lease runs out and another worker (or this one) resumes the experiment.
                logger.error("experiment %s: %s", claim.experiment_id, error)
                spent = True
            if spent:
                self._replace_trainer()
            else:
                self._renew_worn_trainer()

    def _recover_and_claim(self) -> Claim | None:
        recovered = leases.recover_expired_leases(
            self.session_factory,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
        )
        if recovered:
            logger.warning("recovered experiments with expired leases: %s", recovered)
        return queue.claim_next_experiment(
            self.session_factory, worker_id=self.worker_id, worker_device=self.device
        )

    def train(self, claim: Claim) -> bool:
        """Train one claimed experiment; True when the training process must be replaced."""
        assert self.trainer is not None
        logger.info("experiment %s claimed (attempt %s)", claim.experiment_id, claim.attempt)
        claimed = ClaimedRun(
            claim,
            self.session_factory,
            worker_id=self.worker_id,
            retry_seconds=self.settings.lease_seconds,
        )
        run = TrainingRun(
            claimed,
            self.trainer,
            self.settings,
            shutdown=self.shutdown,
            force_stop=self.force_stop,
        )
        return run.train("gpu" if self.device == "gpu" and claim.spec.device != "cpu" else "cpu")

    def _replace_trainer(self) -> None:
        assert self.trainer is not None
        if self.trainer.alive():
            self.trainer.kill()
        if not self.shutdown.is_set():
            self.trainer = self.trainer_factory()

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

    def _start_trainer_process(self) -> TrainerProcess:
        return TrainerProcess(
            self.settings.fashion_mnist_dir,
            nice=self.settings.worker_nice,
            threads=self.settings.worker_threads,
        )
