"""The experiment row as a job: claims are exclusive, later writes are fenced by the claim."""

import threading

from sqlalchemy import func, select, update

from service import queue, registry
from service.db import db_now, transaction
from service.models import (
    Attempt,
    Checkpoint,
    EpochMetric,
    Experiment,
    ExperimentStatus,
    TrainedModel,
)
from service.results import EpochResult, TrainingResult
from service.spec import ExperimentCreate

EPOCH = EpochResult(1, 0.5, 0.8, None, None, 1.0, 10.0)


def enqueue(session_factory, count: int = 1, **spec) -> list[int]:
    with session_factory() as session, session.begin():
        experiments = [
            queue.enqueue(session, name=None, spec=ExperimentCreate(**spec).to_spec())
            for _ in range(count)
        ]
        return [e.id for e in experiments]


def claim(session_factory, worker: str = "w", device: str = "cpu"):
    return queue.claim_next_experiment(session_factory, worker_id=worker, worker_device=device)


def expire_lease(session_factory, experiment_id: int) -> None:
    with session_factory() as session, session.begin():
        dialect = session.get_bind().dialect.name
        session.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id)
            .values(heartbeat_at=db_now(dialect, seconds=-120))
        )


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_claims_take_the_oldest_first_and_each_experiment_once(session_factory):
    ids = enqueue(session_factory, 3)
    claims = [claim(session_factory) for _ in range(4)]
    assert [c.experiment_id for c in claims[:3]] == ids
    assert claims[3] is None
    assert [c.attempt for c in claims[:3]] == [1, 1, 1]


def test_racing_threads_never_claim_the_same_experiment(session_factory):
    ids = enqueue(session_factory, 40)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        while taken := claim(session_factory, name):
            with lock:
                claimed.append(taken.experiment_id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids
    assert count(session_factory, Attempt) == 40


def test_cpu_worker_leaves_gpu_experiments_and_gpu_worker_takes_them(session_factory):
    [gpu_id] = enqueue(session_factory, device="gpu")
    assert claim(session_factory, "c", "cpu") is None
    assert claim(session_factory, "g", "gpu").experiment_id == gpu_id


def test_writes_under_a_lost_claim_change_nothing(session_factory):
    [experiment_id] = enqueue(session_factory)
    first = claim(session_factory, "a")
    assert queue.record_epoch(session_factory, first, EPOCH, b"checkpoint-1")
    expire_lease(session_factory, experiment_id)
    assert queue.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3) == [
        experiment_id
    ]
    second = claim(session_factory, "b")
    assert second.token != first.token and second.attempt == 2

    # The old claim may not touch the experiment any more.
    assert not queue.heartbeat(session_factory, first, epoch=2, step=5).holds_lease
    assert not queue.record_epoch(
        session_factory, first, EpochResult(2, 0.4, 0.9, None, None, 1.0, 10.0), b"late"
    )
    assert not queue.fail(session_factory, first, error="late")
    assert not queue.complete(
        session_factory, first, TrainingResult(2, False, None, 0.4, 0.9, b"late model")
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
    assert queue.load_checkpoint(session_factory, second) == (1, b"checkpoint-1")


def test_expired_lease_is_requeued_and_a_live_one_is_not(session_factory):
    stale_id, live_id = enqueue(session_factory, 2)
    claim(session_factory, "a")
    claim(session_factory, "b")
    expire_lease(session_factory, stale_id)
    assert queue.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3) == [
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
        queue.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=2)
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
    queue.record_epoch(session_factory, first, EPOCH, b"checkpoint-1")
    assert queue.release(session_factory, first)
    second = claim(session_factory)
    with session_factory() as session:
        assert session.get(Experiment, experiment_id).attempts == 1
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 1
    assert second.attempt == 2
    assert queue.load_checkpoint(session_factory, second) == (1, b"checkpoint-1")


def test_cancel_queued_is_immediate_and_running_is_a_request(session_factory):
    queued_id, running_id = enqueue(session_factory, 2)
    running = claim(session_factory)  # Takes the older one.
    assert running.experiment_id == queued_id
    with session_factory() as session, session.begin():
        assert queue.request_cancel(session, running_id)  # Still queued: cancelled now.
        assert queue.request_cancel(session, queued_id)  # Running: a request.
    with session_factory() as session:
        assert session.get(Experiment, running_id).status == ExperimentStatus.CANCELLED
        assert session.get(Experiment, queued_id).status == ExperimentStatus.RUNNING
    assert queue.heartbeat(session_factory, running, epoch=1, step=1).cancel_requested
    assert queue.finish_cancelled(session_factory, running)
    with session_factory() as session, session.begin():
        assert not queue.request_cancel(session, queued_id)


def test_sqlite_refuses_a_second_host_but_postgresql_does_not(session_factory, backend):
    registry.register_worker(
        session_factory, worker_id="a", host="one", pid=1, device="cpu", lease_seconds=30
    )
    register_elsewhere = lambda: registry.register_worker(  # noqa: E731
        session_factory, worker_id="b", host="two", pid=2, device="cpu", lease_seconds=30
    )
    if backend == "sqlite":
        try:
            register_elsewhere()
        except registry.WorkerRefusedError as error:
            assert "SQLite serves one machine only: use PostgreSQL" in str(error)
        else:
            raise AssertionError("a second host was let in")
    else:
        register_elsewhere()


def test_cancel_during_the_test_evaluation_ends_cancelled_without_a_model(session_factory):
    [experiment_id] = enqueue(session_factory)
    running = claim(session_factory)
    with transaction(session_factory) as session:
        assert queue.request_cancel(session, experiment_id)
    final = queue.complete(
        session_factory, running, TrainingResult(2, False, None, 0.4, 0.9, b"model")
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
    assert queue.requeue_lost(session_factory, running, error="died", max_attempts=3)
    with session_factory() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment.status == ExperimentStatus.CANCELLED
        assert experiment.finished_at is not None and experiment.error is None
    assert claim(session_factory) is None


def test_an_attempt_lost_to_an_expired_lease_says_why(session_factory):
    [experiment_id] = enqueue(session_factory)
    claim(session_factory)
    expire_lease(session_factory, experiment_id)
    queue.recover_expired_leases(session_factory, lease_seconds=60, max_attempts=3)
    with session_factory() as session:
        [attempt] = session.scalars(select(Attempt)).all()
        assert attempt.outcome == "lost"
        assert "stopped sending heartbeats for 60 s" in attempt.error
