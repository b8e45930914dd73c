"""The median stopping rule (Optuna's MedianPruner, Ray Tune's MedianStoppingRule), read from
the study's committed epoch rows: the worker asks after each epoch whether to stop."""

import statistics

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from service.models import EpochMetric, Experiment, ExperimentStatus, Study
from service.results import EpochResult


def prune_reason(session: Session, experiment_id: int, result: EpochResult) -> str | None:
    """Why the experiment should stop after this epoch, or None to let it train on.

    It stops when its study prunes, the epoch is at or past `after_epoch`, and its metric is
    below the median, at the same epoch, of the study's succeeded experiments of other
    variants (at least `min_finished` of them). Its own variant's repeats differ only by seed:
    comparing with them would prune half of even the best variant's runs. Never pruned: a
    variant's first repeat (every variant gets one whole run to be judged by), and the
    repeats of the variant leading the study so far (the best mean test accuracy).
    """
    experiment = session.get(Experiment, experiment_id)
    rule = _rule(session, experiment)
    if experiment is None or rule is None or result.epoch < rule["after_epoch"]:
        return None
    value = getattr(result, rule["metric"])
    if value is None:
        return None
    others = _others_at_epoch(session, experiment, rule["metric"], result.epoch)
    if len(others) < rule["min_finished"]:
        return None
    median = statistics.median(others)
    if value >= median or _leads(session, experiment):
        return None
    return (
        f"pruned after epoch {result.epoch}: {rule['metric']} {value:.4f} is below "
        f"{median:.4f}, the median at that epoch of the {len(others)} succeeded experiments "
        "of other variants in its study (median stopping rule)"
    )


def judged_from_epoch(session: Session, experiment_id: int) -> int | None:
    """The first epoch the rule judges the experiment after, or None when it never does."""
    rule = _rule(session, session.get(Experiment, experiment_id))
    return None if rule is None else rule["after_epoch"]


def _rule(session: Session, experiment: Experiment | None) -> dict | None:
    """Its study's pruning rule, when it has one and the experiment is not a first repeat."""
    if experiment is None or experiment.study_id is None or not experiment.repeat:
        return None
    study = session.get(Study, experiment.study_id)
    return (study.prune or None) if study is not None else None


def _leads(session: Session, experiment: Experiment) -> bool:
    """Whether its variant has the best mean test accuracy of the study's succeeded runs."""
    means = dict(
        session.execute(
            select(Experiment.variant, func.avg(Experiment.test_accuracy))
            .where(
                Experiment.study_id == experiment.study_id,
                Experiment.status == ExperimentStatus.SUCCEEDED,
            )
            .group_by(Experiment.variant)
        ).all()
    )
    own = means.get(experiment.variant)
    return own is not None and own >= max(means.values())


def _others_at_epoch(
    session: Session, experiment: Experiment, metric: str, epoch: int
) -> list[float]:
    other = aliased(Experiment)
    column = getattr(EpochMetric, metric)
    return [
        value
        for value in session.scalars(
            select(column)
            .join(other, other.id == EpochMetric.experiment_id)
            .where(
                other.study_id == experiment.study_id,
                other.status == ExperimentStatus.SUCCEEDED,
                other.variant != experiment.variant,
                EpochMetric.epoch == epoch,
            )
        )
        if value is not None
    ]
