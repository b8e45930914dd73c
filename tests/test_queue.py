"""The experiment row as a job: claims are exclusive, later writes are fenced by the claim."""

import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from service import queue
from service.models import EpochMetric, Experiment, ExperimentStatus, utcnow
from service.schemas import ExperimentCreate
from service.training import EpochResult, Progress
from tests.conftest import BOTH_DATABASES

pytestmark = BOTH_DATABASES

EPOCH = EpochResult(1, 0.5, 0.8, None, None, 1.0, 10.0)


def enqueue(session_factory, count: int = 1, **spec) -> list[int]:
    with session_factory() as session, session.begin():
        experiments = [
            queue.enqueue(session, name=None, spec=ExperimentCreate(**spec).to_spec())
            for _ in range(count)
        ]
        return [e.id for e in experiments]


def test_claims_take_the_oldest_first_and_each_experiment_once(session_factory):
    ids = enqueue(session_factory, 3)
    claims = [
        queue.claim_next_experiment(session_factory, worker_id="w", worker_device="cpu")
        for _ in range(4)
    ]
    assert [c.experiment_id for c in claims[:3]] == ids
    assert claims[3] is None


def test_racing_threads_never_claim_the_same_experiment(session_factory):
    ids = enqueue(session_factory, 40)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        while claim := queue.claim_next_experiment(
            session_factory, worker_id=name, worker_device="cpu"
        ):
            with lock:
                claimed.append(claim.experiment_id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == ids


def test_cpu_worker_leaves_gpu_experiments_and_gpu_worker_takes_them(session_factory):
    [gpu_id] = enqueue(session_factory, device="gpu")
    assert queue.claim_next_experiment(session_factory, worker_id="c", worker_device="cpu") is None
    claim = queue.claim_next_experiment(session_factory, worker_id="g", worker_device="gpu")
    assert claim.experiment_id == gpu_id


def test_writes_under_a_lost_claim_change_nothing(session_factory):
    enqueue(session_factory)
    claim = queue.claim_next_experiment(session_factory, worker_id="w", worker_device="cpu")
    assert queue.record_epoch(session_factory, claim, EPOCH)
    assert queue.release(session_factory, claim)

    # The experiment is queued again; the old claim may not touch it.
    assert not queue.heartbeat(session_factory, claim, Progress(2, 10))
    assert not queue.record_epoch(session_factory, claim, EPOCH)
    assert not queue.fail(session_factory, claim, error="late")
    with session_factory() as session:
        experiment = session.get(Experiment, claim.experiment_id)
        assert experiment.status == ExperimentStatus.QUEUED and experiment.error is None
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 0

    second = queue.claim_next_experiment(session_factory, worker_id="w2", worker_device="cpu")
    assert second.token != claim.token
    with session_factory() as session:
        assert session.get(Experiment, claim.experiment_id).attempts == 2


def test_expired_lease_is_requeued_and_a_live_one_is_not(session_factory):
    stale_id, live_id = enqueue(session_factory, 2)
    stale = queue.claim_next_experiment(session_factory, worker_id="a", worker_device="cpu")
    queue.claim_next_experiment(session_factory, worker_id="b", worker_device="cpu")
    queue.record_epoch(session_factory, stale, EPOCH)
    with session_factory() as session, session.begin():
        session.execute(
            update(Experiment)
            .where(Experiment.id == stale_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=120))
        )

    assert queue.recover_expired_leases(session_factory, lease_seconds=60) == [stale_id]
    with session_factory() as session:
        assert session.get(Experiment, stale_id).status == ExperimentStatus.QUEUED
        assert session.get(Experiment, live_id).status == ExperimentStatus.RUNNING
        assert session.scalar(select(func.count()).select_from(EpochMetric)) == 0
    assert not queue.record_epoch(session_factory, stale, EPOCH)
