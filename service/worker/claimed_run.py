"""Every database write the worker makes for one claimed experiment, through one object."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service import leases, registry
from service.db import transaction
from service.leases import HeartbeatReply
from service.models import ExperimentStatus
from service.queue import Claim
from service.results import EpochResult, Reproducibility, ResumePoint, TrainingResult
from service.studies.pruning import judged_from_epoch, prune_reason

logger = logging.getLogger(__name__)

DATABASE_RETRY_SECONDS = 0.5
Result = TypeVar("Result")


class DatabaseLostError(RuntimeError):
    """The database stayed unreachable for longer than a lease."""


class ClaimedRun:
    """A claim, the sessions its writes go through, and how long they ride out a database
    restart (a lease's worth: past that, the lease is gone anyway).

    Every write is fenced by the claim: a method that returns False (or None) changed nothing
    because the lease was lost. Raises DatabaseLostError once the database stays away.
    """

    def __init__(
        self,
        claim: Claim,
        session_factory: sessionmaker[Session],
        *,
        worker_id: str,
        retry_seconds: float,
    ) -> None:
        self.claim = claim
        self.session_factory = session_factory
        self.worker_id = worker_id
        self.retry_seconds = retry_seconds

    @property
    def experiment_id(self) -> int:
        return self.claim.experiment_id

    def load_checkpoint(self) -> ResumePoint | None:
        """An earlier attempt's last finished epoch and its model, to resume from."""
        return self._retry(leases.load_checkpoint, self.claim)

    def start_training(
        self, *, device: str, backend: str, steps_per_epoch: int, reproducibility: Reproducibility
    ) -> bool:
        return self._retry(
            leases.start_training,
            self.claim,
            device=device,
            backend=backend,
            steps_per_epoch=steps_per_epoch,
            reproducibility=reproducibility,
        )

    def heartbeat(self, *, epoch: int, step: int) -> HeartbeatReply:
        """Renew the lease and store the progress; the registry learns what this worker runs."""
        reply = self._retry(leases.heartbeat, self.claim, epoch=epoch, step=step)
        self._retry(registry.worker_heartbeat, self.worker_id, experiment_id=self.experiment_id)
        return reply

    def record_epoch(self, result: EpochResult, checkpoint: bytes) -> bool:
        return self._retry(leases.record_epoch, self.claim, result, checkpoint)

    def complete(self, result: TrainingResult) -> ExperimentStatus | None:
        """`succeeded` with the model, or `cancelled` when a cancel came in meanwhile."""
        return self._retry(leases.complete, self.claim, result)

    def fail(self, error: str) -> bool:
        return self._retry(leases.fail, self.claim, error=error)

    def finish_cancelled(self) -> bool:
        return self._retry(leases.finish_cancelled, self.claim)

    def judged_from_epoch(self) -> int | None:
        """From which epoch on its study's pruning rule judges it; None when never."""
        return self._retry(_in_transaction, judged_from_epoch, self.experiment_id)

    def prune_reason(self, result: EpochResult) -> str | None:
        """Why its study's pruning rule stops it after this epoch; None to train on."""
        return self._retry(_in_transaction, prune_reason, self.experiment_id, result)

    def finish_pruned(self, reason: str) -> bool:
        return self._retry(leases.finish_pruned, self.claim, reason=reason)

    def release(self, error: str | None = None) -> bool:
        """Back to the queue without spending the attempt."""
        return self._retry(leases.release, self.claim, error=error)

    def requeue_lost(self, error: str, *, max_attempts: int) -> bool:
        """The training process died: spend the attempt."""
        return self._retry(leases.requeue_lost, self.claim, error=error, max_attempts=max_attempts)

    def _retry(self, operation: Callable[..., Result], *args, **kwargs) -> Result:
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                return operation(self.session_factory, *args, **kwargs)
            except DBAPIError as error:
                if time.monotonic() > deadline:
                    raise DatabaseLostError(f"database unreachable: {error.orig}") from error
                logger.warning("database unavailable, retrying: %s", error.orig)
                time.sleep(DATABASE_RETRY_SECONDS)


def _in_transaction(
    session_factory: sessionmaker[Session], read: Callable[..., Result], *args
) -> Result:
    """`read(session, *args)` for the study reads that take a session, not a factory."""
    with transaction(session_factory) as session:
        return read(session, *args)
