"""The experiment row as a job: enqueued, claimed exactly once, cancelled."""

import threading

from sqlalchemy import func, select, update

from service import leases, queue
from service.db import db_now
from service.models import Attempt, Experiment, ExperimentStatus
from service.spec import ExperimentCreate


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


def test_cancel_queued_is_immediate_and_running_is_a_request(session_factory):
    running_id, queued_id = enqueue(session_factory, 2)
    running = claim(session_factory)  # Takes the older one.
    assert running.experiment_id == running_id
    with session_factory() as session, session.begin():
        assert queue.request_cancel(session, queued_id)  # Still queued: cancelled now.
        assert queue.request_cancel(session, running_id)  # Running: a request.
    with session_factory() as session:
        assert session.get(Experiment, queued_id).status == ExperimentStatus.CANCELLED
        assert session.get(Experiment, running_id).status == ExperimentStatus.RUNNING
    assert leases.heartbeat(session_factory, running, epoch=1, step=1).cancel_requested
    assert leases.finish_cancelled(session_factory, running)
    with session_factory() as session, session.begin():
        assert not queue.request_cancel(session, running_id)
