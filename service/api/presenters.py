"""The one conversion from ORM rows to the API's response models."""

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Experiment, ExperimentStatus, TrainedModel, Worker
from service.queue import CLAIMABLE_DEVICES
from service.registry import alive_condition
from service.schemas import (
    AttemptRead,
    EpochRead,
    ExperimentListItem,
    ExperimentRead,
    ModelFileRead,
    ProgressRead,
    TestResultRead,
)

START_WORKER = "python -m service worker"


def _queue_position(session: Session, experiment: Experiment) -> int | None:
    if experiment.status != ExperimentStatus.QUEUED:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Experiment)
        .where(Experiment.status == ExperimentStatus.QUEUED, Experiment.id < experiment.id)
    )
    return (ahead or 0) + 1


def _waiting_reason(
    session: Session, experiment: Experiment, position: int | None, lease_seconds: float
) -> str | None:
    if position is None:
        return None
    able = [
        device
        for device, claimable in CLAIMABLE_DEVICES.items()
        if experiment.requested_device in claimable
    ]
    workers = session.scalar(
        select(func.count())
        .select_from(Worker)
        .where(alive_condition(session, lease_seconds=lease_seconds), Worker.device.in_(able))
    )
    if not workers:
        if able == ["gpu"]:
            return f"no worker with a GPU is alive: start one with `{START_WORKER} --device gpu`"
        return f"no worker is alive: start one with `{START_WORKER}`"
    if position == 1:
        return "next in line: the first free worker takes it"
    return f"{position - 1} queued experiment(s) ahead of it"


def _progress(experiment: Experiment) -> ProgressRead | None:
    if experiment.status != ExperimentStatus.RUNNING or experiment.steps_per_epoch is None:
        return None
    return ProgressRead(
        epoch=experiment.progress_epoch or 0,
        epochs=experiment.spec["epochs"],
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
    test = None
    if experiment.test_loss is not None and experiment.test_accuracy is not None:
        test = TestResultRead(loss=experiment.test_loss, accuracy=experiment.test_accuracy)
    position = _queue_position(session, experiment)
    return ExperimentRead(
        id=experiment.id,
        name=experiment.name,
        status=experiment.status.value,
        spec=experiment.spec,
        created_at=experiment.created_at,
        started_at=experiment.started_at,
        finished_at=experiment.finished_at,
        device=experiment.device,
        attempts=[AttemptRead.model_validate(a) for a in experiment.attempt_history],
        queue_position=position,
        waiting_reason=_waiting_reason(session, experiment, position, lease_seconds),
        cancel_requested=experiment.cancel_requested_at is not None,
        summary=experiment.summary,
        progress=_progress(experiment),
        epochs=[EpochRead.model_validate(epoch) for epoch in experiment.epochs],
        test=test,
        stopped_early=experiment.stopped_early,
        stop_reason=experiment.stop_reason,
        error=experiment.error,
        model=ModelFileRead(size_bytes=model_row.size_bytes, sha256=model_row.sha256)
        if model_row
        else None,
    )


def experiment_list_item(experiment: Experiment) -> ExperimentListItem:
    """The comparison columns of one experiment, as GET /experiments lists them."""
    epochs = experiment.epochs
    conv_layers = experiment.spec["conv_layers"]
    return ExperimentListItem(
        id=experiment.id,
        name=experiment.name,
        status=experiment.status.value,
        conv_layers=len(conv_layers),
        filters=[layer["filters"] for layer in conv_layers],
        dense_units=experiment.spec["dense_units"],
        total_params=experiment.summary["total_params"],
        flatten_size=experiment.summary["flatten_size"],
        device=experiment.device,
        epochs_run=len(epochs),
        seconds_per_epoch=sum(e.seconds for e in epochs) / len(epochs) if epochs else None,
        final_accuracy=epochs[-1].accuracy if epochs else None,
        test_accuracy=experiment.test_accuracy,
        created_at=experiment.created_at,
    )
