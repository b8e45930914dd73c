"""Which experiment's model serves a request, looked up in the database and remembered."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.models import Experiment, ExperimentStatus, Study, TrainedModel

Result = TypeVar("Result")


class ReadOnlyDatabase(Protocol):
    """What serving needs of the API's database gate (service/api/database.py)."""

    read_session_factory: sessionmaker[Session]

    async def read(self, work: Callable[[Session], Result]) -> Result:
        """Run `work` in a read-only transaction, in one of the gate's slots."""
        ...


class ExperimentNotFoundError(LookupError):
    """The requested experiment does not exist; the message says where to find those that do."""

    def __init__(self, experiment_id: int) -> None:
        super().__init__(f"experiment {experiment_id} does not exist: GET /experiments lists them")


class StudyNotFoundError(LookupError):
    def __init__(self, study_id: int) -> None:
        super().__init__(f"study {study_id} does not exist: GET /studies lists them")


class ModelNotReadyError(RuntimeError):
    """No model can serve yet: the experiment, or every experiment, has not finished training."""


@dataclass(frozen=True)
class StudyBest:
    """The best run of a study's best variant (highest mean test accuracy, then its best run)."""

    study_id: int


# What a request asks to be served by: an experiment, a study's best run, or (None) the latest.
Target = int | StudyBest | None


class ModelResolver:
    """Which experiment's model serves a request, remembered for `ttl` seconds.

    Saves a database round trip per prediction; a model that changes is picked up within `ttl`.
    """

    def __init__(self, database: ReadOnlyDatabase, ttl: float) -> None:
        self.database = database
        self.ttl = ttl
        self._answers: dict[Target, tuple[int, str, float]] = {}

    def cached(self, target: Target) -> tuple[int, str] | None:
        """The remembered answer for `target`, if fresh."""
        answer = self._answers.get(target)
        if answer is not None and time.monotonic() - answer[2] < self.ttl:
            return answer[0], answer[1]
        return None

    async def resolve(self, target: Target) -> tuple[int, str]:
        """The serving experiment's id and its model's checksum, read from the database."""
        now = time.monotonic()
        if isinstance(target, StudyBest):
            chosen_id, sha256 = await self.database.read(
                lambda session: choose_study_best(session, target.study_id)
            )
        else:
            chosen_id, sha256 = await self.database.read(
                lambda session: choose_experiment(session, target)
            )
        self._answers[target] = (chosen_id, sha256, now)
        return chosen_id, sha256


def choose_experiment(session: Session, experiment_id: int | None) -> tuple[int, str]:
    """The experiment whose model serves this request, and its model's checksum."""
    if experiment_id is None:
        latest = session.execute(
            select(Experiment.id, TrainedModel.sha256)
            .join(TrainedModel, TrainedModel.experiment_id == Experiment.id)
            .where(Experiment.status == ExperimentStatus.SUCCEEDED)
            .order_by(Experiment.finished_at.desc(), Experiment.id.desc())
            .limit(1)
        ).first()
        if latest is None:
            raise ModelNotReadyError(
                "no experiment has finished training yet: POST /experiments and wait for it"
            )
        return latest.id, latest.sha256
    requested = session.execute(
        select(Experiment.status, TrainedModel.sha256)
        .outerjoin(TrainedModel, TrainedModel.experiment_id == Experiment.id)
        .where(Experiment.id == experiment_id)
    ).first()
    if requested is None:
        raise ExperimentNotFoundError(experiment_id)
    if requested.status != ExperimentStatus.SUCCEEDED or requested.sha256 is None:
        raise ModelNotReadyError(
            f"experiment {experiment_id} is {requested.status}, not succeeded: "
            "its model can serve once training has finished"
        )
    return experiment_id, requested.sha256


def choose_study_best(session: Session, study_id: int) -> tuple[int, str]:
    """The best succeeded run of the study's best variant, and its model's checksum.

    A variant is its varied values on one device, as the study's comparison groups them; the
    best has the highest mean test accuracy, and ties go to the earliest run.
    """
    runs = session.execute(
        select(
            Experiment.id,
            Experiment.variant,
            Experiment.requested_device,
            Experiment.test_accuracy,
            TrainedModel.sha256,
        )
        .join(TrainedModel, TrainedModel.experiment_id == Experiment.id)
        .where(
            Experiment.study_id == study_id,
            Experiment.status == ExperimentStatus.SUCCEEDED,
            # As the comparison's statistics do, a run without a test result does not count.
            Experiment.test_accuracy.is_not(None),
        )
        .order_by(Experiment.id)
    ).all()
    if not runs:
        if session.get(Study, study_id) is None:
            raise StudyNotFoundError(study_id)
        raise ModelNotReadyError(f"no run of study {study_id} has finished training yet")
    cells: dict[tuple, list] = {}
    for run in runs:
        cells.setdefault((run.variant, run.requested_device), []).append(run)

    def mean_accuracy(cell: list) -> float:
        return sum(run.test_accuracy for run in cell) / len(cell)

    best_cell = max(cells.values(), key=mean_accuracy)  # max keeps the first of equals.
    best = max(best_cell, key=lambda run: run.test_accuracy)
    return best.id, best.sha256


def stored_model(session: Session, experiment_id: int) -> bytes:
    """The experiment's saved `.keras` file."""
    return session.scalar(
        select(TrainedModel.keras_file).where(TrainedModel.experiment_id == experiment_id)
    )
