"""The one conversion from ORM rows to the API's response models."""

import json
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.datasets import CLASS_NAMES
from service.evaluation import misclassified_count, per_class
from service.models import Experiment, ExperimentStatus, TrainedModel, Worker
from service.queue import CLAIMABLE_DEVICES
from service.registry import alive_condition
from service.schemas import (
    AttemptRead,
    ClassResultRead,
    EpochRead,
    ExperimentListItem,
    ExperimentRead,
    MisclassifiedImageRead,
    MisclassifiedRead,
    ModelFileRead,
    ProgressRead,
    ReproducibilityRead,
    StudyCellRead,
    TestResultRead,
)
from service.spec import ExperimentSpec

START_WORKER = "python -m service worker"


@dataclass(frozen=True)
class QueueState:
    """Where a queued experiment stands: its place in line, and why it waits."""

    position: int | None = None
    waiting_reason: str | None = None


def queue_state(
    session: Session, experiment_id: int, requested_device: str, *, lease_seconds: float
) -> QueueState:
    """The place in line and the workers able to take it, in one query."""
    able = [
        device for device, claimable in CLAIMABLE_DEVICES.items() if requested_device in claimable
    ]
    ahead = (
        select(func.count())
        .select_from(Experiment)
        .where(Experiment.status == ExperimentStatus.QUEUED, Experiment.id < experiment_id)
        .scalar_subquery()
    )
    workers = (
        select(func.count())
        .select_from(Worker)
        .where(alive_condition(session, lease_seconds=lease_seconds), Worker.device.in_(able))
        .scalar_subquery()
    )
    row = session.execute(select(ahead, workers)).one()
    position = row[0] + 1
    return QueueState(position, _waiting_reason(position, row[1], able))


def _waiting_reason(position: int, workers: int, able: list[str]) -> str:
    if not workers:
        if able == ["gpu"]:
            return f"no worker with a GPU is alive: start one with `{START_WORKER} --device gpu`"
        return f"no worker is alive: start one with `{START_WORKER}`"
    if position == 1:
        return "next in line: the first free worker takes it"
    return f"{position - 1} queued experiment(s) ahead of it"


def _progress(experiment: Experiment, spec: ExperimentSpec) -> ProgressRead | None:
    if experiment.status != ExperimentStatus.RUNNING or experiment.steps_per_epoch is None:
        return None
    return ProgressRead(
        epoch=experiment.progress_epoch or 0,
        epochs=spec.epochs,
        step=experiment.progress_step or 0,
        steps=experiment.steps_per_epoch,
    )


def experiment_read(
    session: Session, experiment: Experiment, *, lease_seconds: float
) -> ExperimentRead:
    """The full view of one experiment, as GET /experiments/{id} returns it."""
    model_row = session.execute(
        select(TrainedModel.size_bytes, TrainedModel.sha256).where(
            TrainedModel.experiment_id == experiment.id
        )
    ).first()
    state = QueueState()
    if experiment.status == ExperimentStatus.QUEUED:
        state = queue_state(
            session, experiment.id, experiment.requested_device, lease_seconds=lease_seconds
        )
    return _read(
        experiment,
        ExperimentSpec.model_validate(experiment.spec),
        state,
        attempts=[AttemptRead.model_validate(a) for a in experiment.attempt_history],
        epochs=[EpochRead.model_validate(epoch) for epoch in experiment.epochs],
        model=ModelFileRead(size_bytes=model_row.size_bytes, sha256=model_row.sha256)
        if model_row
        else None,
    )


def new_experiment_read(
    experiment: Experiment, spec: ExperimentSpec, state: QueueState
) -> ExperimentRead:
    """The view of an experiment just queued: nothing has run, so nothing more to read."""
    return _read(experiment, spec, state, attempts=[], epochs=[], model=None)


def _read(
    experiment: Experiment,
    spec: ExperimentSpec,
    state: QueueState,
    *,
    attempts: list[AttemptRead],
    epochs: list[EpochRead],
    model: ModelFileRead | None,
) -> ExperimentRead:
    test = None
    if experiment.test_loss is not None and experiment.test_accuracy is not None:
        test = _test_result(experiment)
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        status=experiment.status.value,
        spec=spec,
        created_at=experiment.created_at,
        started_at=experiment.started_at,
        finished_at=experiment.finished_at,
        device=experiment.device,
        backend=experiment.backend,
        study=_study_cell(experiment),
        reproducibility=ReproducibilityRead.model_validate(experiment.reproducibility)
        if experiment.reproducibility is not None
        else None,
        attempts=attempts,
        queue_position=state.position,
        waiting_reason=state.waiting_reason,
        cancel_requested=experiment.cancel_requested_at is not None,
        summary=experiment.summary,
        progress=_progress(experiment, spec),
        epochs=epochs,
        test=test,
        stopped_early=experiment.stopped_early,
        stop_reason=experiment.stop_reason,
        error=experiment.error,
        model=model,
    )


def _study_cell(experiment: Experiment) -> StudyCellRead | None:
    if experiment.study_id is None or experiment.variant is None or experiment.repeat is None:
        return None
    return StudyCellRead(
        study_id=experiment.study_id,
        variant=json.loads(experiment.variant),
        repeat=experiment.repeat,
    )


def _test_result(experiment: Experiment) -> TestResultRead:
    matrix = experiment.test_confusion
    return TestResultRead(
        loss=experiment.test_loss,
        accuracy=experiment.test_accuracy,
        confusion_matrix=matrix,
        per_class=[ClassResultRead(**asdict(row)) for row in per_class(matrix)] if matrix else None,
    )


def misclassified_read(
    experiment_id: int, confusion: list[list[int]], misclassified: list[list[int]], limit: int
) -> MisclassifiedRead:
    """The first `limit` test images a run got wrong, with their classes' names, and how many
    it got wrong in all."""
    return MisclassifiedRead(
        experiment_id=experiment_id,
        total_misclassified=misclassified_count(confusion),
        items=[
            MisclassifiedImageRead(
                index=index,
                true_label=true,
                true_class=CLASS_NAMES[true],
                predicted_label=predicted,
                predicted_class=CLASS_NAMES[predicted],
            )
            for index, true, predicted in misclassified[:limit]
        ],
    )


def experiment_list_item(experiment: Experiment) -> ExperimentListItem:
    """The comparison columns of one experiment, as GET /experiments lists them."""
    epochs = experiment.epochs
    spec = ExperimentSpec.model_validate(experiment.spec)
    return ExperimentListItem(
        id=experiment.id,
        name=experiment.name,
        status=experiment.status.value,
        conv_layers=len(spec.conv_layers),
        filters=[layer.filters for layer in spec.conv_layers],
        dense_units=spec.dense_units,
        total_params=experiment.summary["total_params"],
        flatten_size=experiment.summary["flatten_size"],
        device=experiment.device,
        backend=experiment.backend,
        study_id=experiment.study_id,
        variant=json.loads(experiment.variant) if experiment.variant is not None else None,
        repeat=experiment.repeat,
        epochs_run=len(epochs),
        seconds_per_epoch=sum(e.seconds for e in epochs) / len(epochs) if epochs else None,
        final_accuracy=epochs[-1].accuracy if epochs else None,
        test_accuracy=experiment.test_accuracy,
        created_at=experiment.created_at,
    )
