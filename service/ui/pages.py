"""What each dashboard page shows, read from the database through the API's own views.

Every function takes a session and returns plain data for a template; nothing here knows HTML
beyond the charts it asks service/ui/charts.py for.
"""

import base64
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import Markup
from PIL import Image
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, defer, selectinload

from service.api.presenters import experiment_list_item, experiment_read
from service.api.studies import read_study
from service.api.workers import worker_rows
from service.datasets import CLASS_NAMES
from service.models import EpochMetric, Experiment, ExperimentStatus
from service.schemas import EpochRead, ExperimentListItem, ExperimentRead
from service.ui.charts import Point, Series, line_chart, scatter_chart

PAGE_SIZE = 25
# Lines one chart can tell apart (charts.COLOURS).
CURVES_SHOWN = 7
MISCLASSIFIED_SHOWN = 24


def _epochs_run() -> ColumnElement:
    return (
        select(func.count(EpochMetric.id))
        .where(EpochMetric.experiment_id == Experiment.id)
        .scalar_subquery()
    )


def _seconds_per_epoch() -> ColumnElement:
    return (
        select(func.avg(EpochMetric.seconds))
        .where(EpochMetric.experiment_id == Experiment.id)
        .scalar_subquery()
    )


# Sortable columns: the query's name, and the SQL expression the database sorts by, so that a
# page reads 25 rows however many experiments there are.
SORT_KEYS: dict[str, Callable[[], ColumnElement]] = {
    "name": lambda: func.lower(Experiment.name),
    "status": lambda: Experiment.status,
    "params": lambda: Experiment.summary["total_params"].as_integer(),
    "flatten": lambda: Experiment.summary["flatten_size"].as_integer(),
    "epochs": _epochs_run,
    "seconds": _seconds_per_epoch,
    "accuracy": lambda: Experiment.test_accuracy,
    "device": lambda: Experiment.device,
    "created": lambda: Experiment.id,
}
STATUSES = [status.value for status in ExperimentStatus]
# What a list row never shows: the test set's results, read for one experiment's page.
LIST_DEFERRED = (defer(Experiment.test_confusion), defer(Experiment.test_misclassified))


@dataclass(frozen=True)
class Row:
    item: ExperimentListItem
    progress: float | None  # Share of the run done, for a running experiment.


@dataclass(frozen=True)
class ListPage:
    rows: list[Row]
    total: int
    page: int
    pages: int
    sort: str
    order: str
    status: str | None
    study_id: int | None


def _progress(experiment: Experiment) -> float | None:
    if experiment.status != ExperimentStatus.RUNNING or not experiment.steps_per_epoch:
        return None
    epochs = experiment.spec.get("epochs") or 1
    done = max((experiment.progress_epoch or 1) - 1, 0) * experiment.steps_per_epoch
    done += experiment.progress_step or 0
    return min(done / (epochs * experiment.steps_per_epoch), 1.0)


def experiment_list(
    session: Session, *, sort: str, order: str, status: str | None, study_id: int | None, page: int
) -> ListPage:
    """One page of experiments, filtered, sorted by any column (missing values last, then
    newest first, so that pages never repeat or skip a row)."""
    conditions = []
    if status is not None:
        conditions.append(Experiment.status == ExperimentStatus(status))
    if study_id is not None:
        conditions.append(Experiment.study_id == study_id)
    total = session.scalar(select(func.count()).select_from(Experiment).where(*conditions)) or 0
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    key = SORT_KEYS[sort]()
    ordering = (key.desc() if order == "desc" else key.asc()).nulls_last()
    experiments = session.scalars(
        select(Experiment)
        .where(*conditions)
        .options(selectinload(Experiment.epochs), *LIST_DEFERRED)
        .order_by(ordering, Experiment.id.desc())
        .limit(PAGE_SIZE)
        .offset((page - 1) * PAGE_SIZE)
    )
    rows = [Row(experiment_list_item(e), _progress(e)) for e in experiments]
    return ListPage(rows, total, page, pages, sort, order, status, study_id)


def _training_and_validation(epochs: list[EpochRead], metric: str) -> list[Series]:
    """`metric` per epoch on the training data, and (`val_<metric>`) where it was measured."""
    validation = [(e.epoch, getattr(e, f"val_{metric}")) for e in epochs]
    return [
        Series("training", [(e.epoch, getattr(e, metric)) for e in epochs]),
        Series("validation", [(x, y) for x, y in validation if y is not None], dashed=True),
    ]


def learning_curves(epochs: list[EpochRead]) -> tuple[Markup, Markup]:
    """Accuracy and loss per epoch, training and validation."""
    return (
        line_chart("Accuracy", "epoch", "accuracy", _training_and_validation(epochs, "accuracy")),
        line_chart("Loss", "epoch", "loss", _training_and_validation(epochs, "loss")),
    )


@dataclass(frozen=True)
class Misclassified:
    index: int
    true_class: str
    predicted_class: str
    picture: str  # A 28×28 PNG as a data: URL, so the page needs no keyed image fetch.


@dataclass(frozen=True)
class ExperimentPage:
    experiment: ExperimentRead
    accuracy_chart: Markup
    loss_chart: Markup
    misclassified: list[Misclassified]


def _png_url(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def misclassified(rows: list[list[int]], test_images: np.ndarray) -> list[Misclassified]:
    """The first misclassified test images (`rows` of [index, true, predicted]) to show."""
    return [
        Misclassified(
            index, CLASS_NAMES[true], CLASS_NAMES[predicted], _png_url(test_images[index])
        )
        for index, true, predicted in rows[:MISCLASSIFIED_SHOWN]
    ]


def experiment_page(
    session: Session, experiment: Experiment, lease_seconds: float
) -> ExperimentPage:
    """The page without its misclassified pictures, which need the test set (`misclassified`)."""
    view = experiment_read(session, experiment, lease_seconds=lease_seconds)
    accuracy_chart, loss_chart = learning_curves(view.epochs)
    return ExperimentPage(view, accuracy_chart, loss_chart, [])


@dataclass(frozen=True)
class StudyPage:
    study: Any
    curves: Markup
    pareto_params: Markup
    pareto_seconds: Markup


def _pareto(study: Any, cost: str, label: str, front_name: str) -> Markup:
    on_front = {(entry["variant"], entry["device"]) for entry in study.pareto.get(front_name, [])}
    points = [
        Point(
            getattr(variant, cost) if cost == "total_params" else variant.training_seconds.mean,
            variant.test_accuracy.mean,
            f"{variant_words(variant.variant)} on {variant.device}",
            (variant.variant, variant.device) in on_front,
        )
        for variant in study.variants
        if variant.test_accuracy is not None
        and (cost == "total_params" or variant.training_seconds is not None)
    ]
    return scatter_chart(
        f"Test accuracy against {label}", label, "test accuracy", points, log_x=True
    )


def variant_words(variant: str | None) -> str:
    """`{"filters":4,"conv_layers":1}` as `filters 4, conv_layers 1`."""
    params = json.loads(variant or "{}")
    return ", ".join(f"{field} {value}" for field, value in params.items()) or "base"


def study_page(session: Session, study_id: int) -> StudyPage:
    study = read_study(session, study_id)
    runs = list(
        session.scalars(
            select(Experiment)
            .where(Experiment.study_id == study_id, Experiment.status == ExperimentStatus.SUCCEEDED)
            .options(selectinload(Experiment.epochs))
            .order_by(Experiment.id)
        )
    )
    series = [
        Series(
            f"#{run.id}: {variant_words(run.variant)}",
            [
                (e.epoch, e.val_accuracy if e.val_accuracy is not None else e.accuracy)
                for e in run.epochs
            ],
        )
        for run in runs[:CURVES_SHOWN]
    ]
    shown = f" (first {CURVES_SHOWN} of {len(runs)})" if len(runs) > CURVES_SHOWN else ""
    curves = line_chart(f"Accuracy per run{shown}", "epoch", "accuracy", series)
    return StudyPage(
        study,
        curves,
        _pareto(study, "total_params", "parameters", "accuracy_vs_params"),
        _pareto(study, "training_seconds", "training seconds", "accuracy_vs_training_seconds"),
    )


def workers_page(session: Session, lease_seconds: float) -> list[tuple[Any, list[int]]]:
    """Each worker, with the experiments it is running."""
    running: dict[str, list[int]] = {}
    for experiment_id, worker_id in session.execute(
        select(Experiment.id, Experiment.worker_id).where(
            Experiment.status == ExperimentStatus.RUNNING
        )
    ):
        running.setdefault(worker_id or "", []).append(experiment_id)
    return [(worker, running.get(worker.id, [])) for worker in worker_rows(session, lease_seconds)]
