"""The worker process: claim an experiment, train it, report every epoch, store the result."""

import logging
import os
import signal
import socket
import threading
from types import FrameType

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service import queue
from service.datasets import load_fashion_mnist
from service.settings import Settings
from service.training import (
    EpochResult,
    Progress,
    TrainingInterrupted,
    available_gpus,
    describe_device,
    steps_per_epoch,
    train,
    training_arrays,
)

logger = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    """Another worker owns the experiment now; this one must stop writing."""


def resolve_device(requested: str) -> str:
    """'auto' becomes 'gpu' where the Keras backend sees a GPU, else 'cpu'."""
    gpus = available_gpus()
    if requested == "gpu" and not gpus:
        raise SystemExit(
            "--device gpu, but the Keras backend sees no GPU: check the driver, or use --device cpu"
        )
    if requested == "auto":
        return "gpu" if gpus else "cpu"
    return requested


class Worker:
    """Runs experiments one at a time until stopped (or, with drain, until the queue is empty)."""

    def __init__(
        self, settings: Settings, session_factory: sessionmaker[Session], *, device: str
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.device = resolve_device(device)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_event = threading.Event()

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("signal %s: stopping after the current step", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, drain: bool = False) -> None:
        """The loop: recover expired leases, claim, train; sleep when idle."""
        logger.info("worker %s started on %s", self.worker_id, self.device)
        try:
            self._loop(drain)
        finally:
            logger.info("worker %s stopped", self.worker_id)

    def _loop(self, drain: bool) -> None:
        while not self.stop_event.is_set():
            try:
                queue.recover_expired_leases(
                    self.session_factory, lease_seconds=self.settings.lease_seconds
                )
                claim = queue.claim_next_experiment(
                    self.session_factory, worker_id=self.worker_id, worker_device=self.device
                )
            except OperationalError as error:
                logger.warning("database unavailable, retrying: %s", error.orig)
                self.stop_event.wait(self.settings.worker_poll_seconds)
                continue
            if claim is None:
                if drain:
                    return
                self.stop_event.wait(self.settings.worker_poll_seconds)
                continue
            try:
                self.process(claim)
            except OperationalError as error:
                # The lease expires and the experiment is retried once the database is back.
                logger.error("experiment %s: database lost: %s", claim.experiment_id, error.orig)

    def process(self, claim: queue.Claim) -> None:
        """Train one claimed experiment to its end: succeeded, failed, or back in the queue."""
        logger.info("experiment %s claimed", claim.experiment_id)
        spec = claim.spec
        lease_lost = threading.Event()
        try:
            dataset = load_fashion_mnist(self.settings.fashion_mnist_dir)
            images, _ = training_arrays(spec, dataset)
            progress = Progress(spec.epochs, steps_per_epoch(spec, len(images)))
            device = "gpu" if self.device == "gpu" and spec.device != "cpu" else "cpu"
            if not queue.start_training(
                self.session_factory, claim, device=describe_device(device), progress=progress
            ):
                return
            reporter = _HeartbeatThread(self, claim, progress, lease_lost)
            reporter.start()
            try:
                result = train(
                    spec,
                    dataset,
                    device=device,
                    progress=progress,
                    on_epoch=lambda epoch: self._record_epoch(claim, epoch, lease_lost),
                    should_stop=lambda: self.stop_event.is_set() or lease_lost.is_set(),
                )
            finally:
                reporter.stop()
            if queue.complete(self.session_factory, claim, result):
                logger.info("experiment %s succeeded", claim.experiment_id)
        except (TrainingInterrupted, LeaseLostError):
            if lease_lost.is_set():
                logger.warning("experiment %s: lease lost, stopped", claim.experiment_id)
            elif queue.release(self.session_factory, claim):
                logger.info("experiment %s returned to the queue", claim.experiment_id)
        except Exception as error:
            logger.exception("experiment %s failed", claim.experiment_id)
            queue.fail(self.session_factory, claim, error=f"{type(error).__name__}: {error}")

    def _record_epoch(
        self, claim: queue.Claim, epoch: EpochResult, lease_lost: threading.Event
    ) -> None:
        if not queue.record_epoch(self.session_factory, claim, epoch):
            lease_lost.set()
            raise LeaseLostError(f"experiment {claim.experiment_id} was taken over")


class _HeartbeatThread(threading.Thread):
    """Renews the lease and publishes progress from outside the training loop."""

    def __init__(
        self, worker: Worker, claim: queue.Claim, progress: Progress, lease_lost: threading.Event
    ) -> None:
        super().__init__(name=f"heartbeat-{claim.experiment_id}", daemon=True)
        self.worker = worker
        self.claim = claim
        self.progress = progress
        self.lease_lost = lease_lost
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.worker.settings.worker_heartbeat_seconds):
            try:
                if not queue.heartbeat(self.worker.session_factory, self.claim, self.progress):
                    self.lease_lost.set()
                    return
            except OperationalError as error:
                logger.warning("heartbeat failed, retrying: %s", error.orig)

    def stop(self) -> None:
        self._stopped.set()
        self.join()
