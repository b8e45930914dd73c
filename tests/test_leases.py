"""What a claim holder writes: fenced by its claim, recovered once its lease expires."""

from dataclasses import asdict

from sqlalchemy import func, select

from service import leases, queue
from service.db import transaction
from service.models import (
    Attempt,
    Checkpoint,
    EpochMetric,
    Experiment,
    ExperimentStatus,
    TrainedModel,
)
from service.results import EpochResult, TrainingResult
from tests.test_queue import claim, enqueue, expire_lease
from tests.test_training_run import RECORD

EPOCH = EpochResult(1, 0.5, 0.8, None, None, 1.0, 10.0)
CONFUSION = [[1] * 10] * 10
MISCLASSIFIED = [[0, 9, 5]]


def test_writes_under_a_lost_claim_change_nothing(session_factory):
    [experiment_id] = enqueue(session_factory)
    first = claim(session_factory, "a")
    assert leases.record_epoch(session_factory, first, EPOCH, b"checkpoint-1")
    expire_lease(session_factory, experiment_id)
    assert leases.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3) == [
        experiment_id
    ]
    second = claim(session_factory, "b")
    assert second.token != first.token and second.attempt == 2

    # The old claim may not touch the experiment any more.
    assert not leases.heartbeat(session_factory, first, epoch=2, step=5).holds_lease
    assert not leases.record_epoch(
        session_factory, first, EpochResult(2, 0.4, 0.9, None, None, 1.0, 10.0), b"late"
    )
    assert not leases.fail(session_factory, first, error="late")
    assert not leases.complete(
        session_factory,
        first,
        TrainingResult(2, False, None, 0.4, 0.9, b"late model", CONFUSION, MISCLASSIFIED),
    )
    with session_factory() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment.status == ExperimentStatus.RUNNING and experiment.error is None
        assert experiment.claim_token == second.token
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 1
        assert session.get(Checkpoint, experiment_id).keras_file == b"checkpoint-1"
        assert session.get(TrainedModel, experiment_id) is None
        outcomes = session.scalars(select(Attempt.outcome).order_by(Attempt.number)).all()
        assert outcomes == ["lost", None]
    assert leases.load_checkpoint(session_factory, second) == (1, b"checkpoint-1")


def test_expired_lease_is_requeued_and_a_live_one_is_not(session_factory):
    stale_id, live_id = enqueue(session_factory, 2)
    claim(session_factory, "a")
    claim(session_factory, "b")
    expire_lease(session_factory, stale_id)
    assert leases.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3) == [
        stale_id
    ]
    with session_factory() as session:
        assert session.get(Experiment, stale_id).status == ExperimentStatus.QUEUED
        assert session.get(Experiment, live_id).status == ExperimentStatus.RUNNING


def test_lease_expiring_on_the_last_attempt_fails_the_experiment(session_factory):
    [experiment_id] = enqueue(session_factory)
    for _ in range(2):
        claim(session_factory)
        expire_lease(session_factory, experiment_id)
        leases.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=2)
    with session_factory() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment.status == ExperimentStatus.FAILED
        assert "stopped sending heartbeats for 60 s (killed, stalled or lost) 2 times" in (
            experiment.error
        )
    assert claim(session_factory) is None


def test_shutdown_release_keeps_epochs_and_does_not_spend_the_attempt(session_factory):
    [experiment_id] = enqueue(session_factory)
    first = claim(session_factory)
    leases.record_epoch(session_factory, first, EPOCH, b"checkpoint-1")
    assert leases.release(session_factory, first)
    second = claim(session_factory)
    with session_factory() as session:
        assert session.get(Experiment, experiment_id).attempts == 1
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 1
    assert second.attempt == 2
    assert leases.load_checkpoint(session_factory, second) == (1, b"checkpoint-1")


def test_cancel_during_the_test_evaluation_ends_cancelled_without_a_model(session_factory):
    [experiment_id] = enqueue(session_factory)
    running = claim(session_factory)
    with transaction(session_factory) as session:
        assert queue.request_cancel(session, experiment_id)
    final = leases.complete(
        session_factory,
        running,
        TrainingResult(2, False, None, 0.4, 0.9, b"model", CONFUSION, MISCLASSIFIED),
    )
    assert final == ExperimentStatus.CANCELLED
    with session_factory() as session:
        assert session.get(Experiment, experiment_id).status == ExperimentStatus.CANCELLED
        assert session.get(TrainedModel, experiment_id) is None
        assert session.scalars(select(Attempt.outcome)).all() == ["cancelled"]


def test_cancel_then_a_trainer_crash_ends_cancelled_not_requeued(session_factory):
    [experiment_id] = enqueue(session_factory)
    running = claim(session_factory)
    with transaction(session_factory) as session:
        assert queue.request_cancel(session, experiment_id)
    assert leases.requeue_lost(session_factory, running, error="died", max_attempts=3)
    with session_factory() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment.status == ExperimentStatus.CANCELLED
        assert experiment.finished_at is not None and experiment.error is None
    assert claim(session_factory) is None


def test_an_attempt_lost_to_an_expired_lease_says_why(session_factory):
    [experiment_id] = enqueue(session_factory)
    claim(session_factory)
    expire_lease(session_factory, experiment_id)
    leases.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3)
    with session_factory() as session:
        [attempt] = session.scalars(select(Attempt)).all()
        assert attempt.outcome == "lost"
        assert "stopped sending heartbeats for 60 s" in attempt.error


def test_start_training_records_the_device_backend_steps_and_reproducibility(session_factory):
    [experiment_id] = enqueue(session_factory)
    running = claim(session_factory)
    assert leases.start_training(
        session_factory,
        running,
        device="CPU",
        backend="tensorflow",
        steps_per_epoch=10,
        reproducibility=RECORD,
    )
    with session_factory() as session:
        experiment = session.get(Experiment, experiment_id)
        assert (experiment.device, experiment.backend, experiment.steps_per_epoch) == (
            "CPU",
            "tensorflow",
            10,
        )
        assert experiment.reproducibility == asdict(RECORD)
