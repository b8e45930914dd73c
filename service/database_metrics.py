"""Prometheus metrics read from committed rows: every API process reports the same values,
whichever process or machine wrote them (workers included), and a restart loses nothing.

Counters here are counts of rows that are never deleted, so they only grow, as Prometheus
expects of a counter.
"""

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from datetime import datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from service.models import (
    Attempt,
    EpochMetric,
    Experiment,
    ExperimentStatus,
    Worker,
    utcnow,
)
from service.registry import alive_condition

EPOCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
UNKNOWN_DEVICE = "unknown"


def database_metrics(session: Session, *, lease_seconds: float) -> list[Metric]:
    return [
        _experiments(session),
        _workers_alive(session, lease_seconds),
        *_queue_wait(session),
        _epoch_seconds(session),
        *_attempts(session),
    ]


def _experiments(session: Session) -> Metric:
    counted = dict(
        session.execute(select(Experiment.status, func.count()).group_by(Experiment.status)).all()
    )
    family = GaugeMetricFamily(
        "convlab_experiments", "Experiments in each status, now", labels=["status"]
    )
    for status in ExperimentStatus:
        family.add_metric([status.value], counted.get(status, 0))
    return family


def _workers_alive(session: Session, lease_seconds: float) -> Metric:
    rows = session.execute(
        select(Worker.device, func.count())
        .where(alive_condition(session, lease_seconds=lease_seconds))
        .group_by(Worker.device)
    ).all()
    counted = {"cpu": 0, "gpu": 0} | dict(rows)
    family = GaugeMetricFamily(
        "convlab_workers_alive",
        "Workers heartbeating within a lease, by the device they train on",
        labels=["device"],
    )
    for device, count in sorted(counted.items()):
        family.add_metric([device], count)
    return family


def _queue_wait(session: Session) -> list[Metric]:
    """How long experiments waited from their POST to their first start, and how long the
    oldest one still queued has waited."""
    started = session.execute(
        select(Experiment.created_at, Attempt.started_at).join(
            Attempt, (Attempt.experiment_id == Experiment.id) & (Attempt.number == 1)
        )
    ).all()
    waits = [_seconds(created, first_start) for created, first_start in started]
    histogram = HistogramMetricFamily(
        "convlab_queue_wait_seconds", "Time from an experiment's POST to its first start"
    )
    histogram.add_metric([], *_buckets(waits, WAIT_BUCKETS))
    oldest = session.scalar(
        select(func.min(Experiment.created_at)).where(Experiment.status == ExperimentStatus.QUEUED)
    )
    gauge = GaugeMetricFamily(
        "convlab_queue_oldest_wait_seconds",
        "How long the oldest queued experiment has waited (0 when none waits)",
    )
    # min() keeps the column's type, so SQLite's value comes back in UTC too.
    gauge.add_metric([], _seconds(oldest, utcnow()) if oldest else 0.0)
    return [histogram, gauge]


def _epoch_seconds(session: Session) -> Metric:
    """Every recorded epoch's duration, by the device the worker reported for the run."""
    device = func.coalesce(Experiment.device, UNKNOWN_DEVICE)
    rows = session.execute(
        select(
            device,
            func.count(),
            func.coalesce(func.sum(EpochMetric.seconds), 0.0),
            *(
                func.sum(case((EpochMetric.seconds <= bound, 1), else_=0))
                for bound in EPOCH_BUCKETS
            ),
        )
        .join(Experiment, Experiment.id == EpochMetric.experiment_id)
        .group_by(device)
        .order_by(device)
    ).all()
    family = HistogramMetricFamily(
        "convlab_epoch_duration_seconds",
        "Training time of each finished epoch, by the device it ran on",
        labels=["device"],
    )
    for label, count, total, *cumulative in rows:
        buckets = [
            (_bound(bound), int(within or 0))
            for bound, within in zip(EPOCH_BUCKETS, cumulative, strict=True)
        ]
        family.add_metric([label], [*buckets, ("+Inf", count)], float(total))
    return family


def _attempts(session: Session) -> list[Metric]:
    outcomes = dict(
        session.execute(
            select(Attempt.outcome, func.count())
            .where(Attempt.outcome.is_not(None))
            .group_by(Attempt.outcome)
        ).all()
    )
    finished = CounterMetricFamily(
        "convlab_attempts",
        "Finished training attempts by outcome; `lost` counts expired leases and crashed "
        "training processes",
        labels=["outcome"],
    )
    for outcome in sorted(outcomes):
        finished.add_metric([outcome], outcomes[outcome])
    retries = CounterMetricFamily(
        "convlab_retries",
        "Attempts after an experiment's first: after a lost lease, a crashed training process "
        "or a worker's shutdown",
    )
    later = select(func.count()).select_from(Attempt).where(Attempt.number > 1)
    retries.add_metric([], session.scalar(later) or 0)
    return [finished, retries]


def _buckets(
    values: Sequence[float], bounds: Iterable[float]
) -> tuple[list[tuple[str, int]], float]:
    ordered = sorted(values)
    buckets = [(_bound(bound), bisect_right(ordered, bound)) for bound in bounds]
    return [*buckets, ("+Inf", len(ordered))], float(sum(ordered))


def _bound(bound: float) -> str:
    return repr(float(bound))


def _seconds(start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), 0.0)
