"""The worker's decisions, with a fake training child that replays scripted messages.

No Keras and no process: each test scripts what the child reports, and checks what the
worker wrote to a real database.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from service import queue
from service.db import transaction
from service.ml.messages import (
    Done,
    EpochFinished,
    Failed,
    Interrupted,
    Started,
    TrainerMessage,
)
from service.models import (
    Attempt,
    Checkpoint,
    EpochMetric,
    Experiment,
    ExperimentStatus,
    Study,
    TrainedModel,
)
from service.results import EpochResult, Reproducibility, TrainingResult
from service.spec import ExperimentCreate
from service.worker import TrainerCrashedError, TrainingWorker, training_run
from tests.conftest import SQLITE_ONLY, TINY_SPEC

pytestmark = SQLITE_ONLY

# A script that has not ended by then is waiting for something that will not happen.
SCRIPT_TIMEOUT_SECONDS = 5.0
RECORD = Reproducibility(
    seed=7,
    keras_version="3.0.0",
    backend="tensorflow",
    backend_version="2.16.0",
    numpy_version="2.0.0",
    python_version="3.11.0",
    device_name="Some CPU",
    data_sha256={"t10k-labels-idx1-ubyte.gz": "0" * 64},
    deterministic=True,
)
STARTED = Started(device="CPU", backend="tensorflow", steps_per_epoch=10, reproducibility=RECORD)
MODEL = TrainingResult(2, False, None, 0.4, 0.9, b"PK model", [[1] * 10] * 10, [[3, 1, 2]])


def epoch(number: int) -> EpochFinished:
    return EpochFinished(
        EpochResult(number, 1 / number, 0.5, None, None, 1.0, 100.0), f"PK {number}".encode()
    )


@dataclass(frozen=True)
class Until:
    """Report `message` once `condition(trainer)` holds; until then, nothing."""

    condition: Callable[["FakeTrainer"], bool]
    message: TrainerMessage


@dataclass(frozen=True)
class Do:
    """Do something (what another process would, say), then report `then` if given."""

    action: Callable[[], object]
    then: TrainerMessage | None = None


def stopped(trainer: "FakeTrainer") -> bool:
    return trainer.stop_now.is_set()


class FakeTrainer:
    """TrainerProcess's interface over a list of messages, actions and a crash to replay."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.stop_now = threading.Event()
        self.stop_after_epoch = threading.Event()
        self.epoch = SimpleNamespace(value=0)
        self.step = SimpleNamespace(value=0)
        self.gpus: list[str] = []
        self.experiments = 0
        self.pid = 4242
        self.dead = self.killed = self.closed = False
        self.deadline = 0.0
        self.judged_from: int | None = None
        self.verdicts: list[bool] = []

    def start(self, spec, device, resume, verdict_from_epoch=None) -> None:
        self.experiments += 1
        self.judged_from = verdict_from_epoch
        self.stop_now.clear()
        self.stop_after_epoch.clear()
        self.deadline = time.monotonic() + SCRIPT_TIMEOUT_SECONDS

    def poll(self, timeout: float) -> TrainerMessage | None:
        assert time.monotonic() < self.deadline, f"the script stalled at {self.script[:1]}"
        step = self.script[0] if self.script else None
        if step is None or (isinstance(step, Until) and not step.condition(self)):
            time.sleep(min(timeout, 0.01))
            return None
        self.script.pop(0)
        match step:
            case Until():
                return step.message
            case Do():
                step.action()
                return step.then
            case TrainerCrashedError():
                self.dead = True
                raise step
        return step

    def send_verdict(self, *, stop: bool) -> None:
        self.verdicts.append(stop)

    def alive(self) -> bool:
        return not (self.dead or self.killed)

    def memory_bytes(self) -> int:
        return 0

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def experiment_id(session_factory) -> int:
    with transaction(session_factory) as session:
        spec = ExperimentCreate(**TINY_SPEC).to_spec()
        return queue.enqueue(session, name=None, spec=spec).id


@pytest.fixture(autouse=True)
def quick_overdue_kill(monkeypatch) -> None:
    monkeypatch.setattr(training_run, "OVERDUE_KILL_SECONDS", 0.05)


class Scripted:
    """A worker whose every training child replays the next of `scripts`."""

    def __init__(self, settings, session_factory, *scripts: list, **overrides) -> None:
        self.trainers = [FakeTrainer(script) for script in scripts]
        self.started: list[FakeTrainer] = []
        self.worker = TrainingWorker(
            settings.model_copy(update=overrides),
            session_factory,
            device="cpu",
            trainer_factory=self._next_trainer,
        )

    def _next_trainer(self) -> FakeTrainer:
        self.started.append(self.trainers[len(self.started)])
        return self.started[-1]

    def drain(self) -> None:
        self.worker.run(drain=True)


@pytest.fixture
def scripted(settings, session_factory) -> Callable[..., Scripted]:
    return lambda *scripts, **overrides: Scripted(settings, session_factory, *scripts, **overrides)


def row(session_factory, experiment_id: int) -> Experiment:
    with session_factory() as session:
        return session.get(Experiment, experiment_id)


def attempts(session_factory) -> list[tuple[str | None, str | None]]:
    with session_factory() as session:
        return [
            (attempt.outcome, attempt.error)
            for attempt in session.scalars(select(Attempt).order_by(Attempt.number))
        ]


def cancel(session_factory, experiment_id: int) -> Callable[[], None]:
    def request() -> None:
        with transaction(session_factory) as session:
            assert queue.request_cancel(session, experiment_id)

    return request


def take_over(session_factory, experiment_id: int) -> Callable[[], None]:
    """Another worker's claim replaces this one's, as after an expired lease."""

    def steal() -> None:
        with transaction(session_factory) as session:
            session.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id)
                .values(claim_token="another-worker", worker_id="another")
            )

    return steal


def test_a_lease_lost_by_started_stops_the_training_and_writes_nothing(
    scripted, session_factory, experiment_id, caplog
):
    # Taken over just before the first message, so the fenced write of Started finds it out.
    run = scripted(
        [Do(take_over(session_factory, experiment_id), then=STARTED), Until(stopped, Interrupted())]
    )
    with caplog.at_level(logging.INFO, logger="service.worker"):
        run.drain()
    assert run.started[0].stop_now.is_set()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "running" and experiment.claim_token == "another-worker"
    assert experiment.device is None and experiment.backend is None
    assert attempts(session_factory) == [(None, None)]
    assert f"experiment {experiment_id}: lease lost, stopping" in caplog.text
    assert f"experiment {experiment_id}: taken over by another worker" in caplog.text


def test_started_records_the_device_the_backend_and_the_steps(
    scripted, session_factory, experiment_id
):
    seen = []
    run = scripted(
        [STARTED, Do(lambda: seen.append(row(session_factory, experiment_id))), Failed("x")]
    )
    run.drain()
    [experiment] = seen
    assert (experiment.device, experiment.backend, experiment.steps_per_epoch) == (
        "CPU",
        "tensorflow",
        10,
    )


def test_an_epoch_is_recorded_with_its_checkpoint(scripted, session_factory, experiment_id):
    run = scripted([STARTED, epoch(1), Failed("ValueError: later")])
    run.drain()
    with session_factory() as session:
        [metric] = session.scalars(select(EpochMetric)).all()
        assert (metric.epoch, metric.loss, metric.ms_per_step) == (1, 1.0, 100.0)
        assert session.get(Checkpoint, experiment_id).keras_file == b"PK 1"


def judged(session_factory, experiment_id: int, *, rival_accuracy: float) -> None:
    """Make the experiment a second repeat in a study that prunes from epoch 1, beside a
    succeeded run of another variant whose first epoch reached `rival_accuracy`."""
    rule = {"rule": "median", "metric": "accuracy", "after_epoch": 1, "min_finished": 1}
    with transaction(session_factory) as session:
        study = Study(name="s", request={}, varied=["filters"], prune=rule)
        session.add(study)
        session.flush()
        spec = ExperimentCreate(**{**TINY_SPEC, "filters": 4}).to_spec()
        cell = queue.StudyCell(study.id, '{"filters": 4}', 0)
        rival = queue.enqueue(session, name=None, spec=spec, cell=cell)
        rival.status, rival.test_accuracy = ExperimentStatus.SUCCEEDED, rival_accuracy
        session.add(
            EpochMetric(
                experiment_id=rival.id,
                epoch=1,
                loss=0.5,
                accuracy=rival_accuracy,
                seconds=1.0,
                ms_per_step=100.0,
            )
        )
        own = session.get(Experiment, experiment_id)
        own.study_id, own.variant, own.repeat = study.id, '{"filters": 8}', 1


def verdict_given(trainer: "FakeTrainer") -> bool:
    return bool(trainer.verdicts)


def test_a_pruned_run_is_told_to_stop_after_the_epoch_it_is_judged_on(
    scripted, session_factory, experiment_id
):
    judged(session_factory, experiment_id, rival_accuracy=0.9)  # Above its 0.5.
    run = scripted([STARTED, epoch(1), Until(verdict_given, Interrupted())])
    run.drain()
    trainer = run.started[0]
    assert trainer.judged_from == 1 and trainer.verdicts == [True]
    assert not trainer.stop_now.is_set()  # The verdict stops it, at the epoch's end.
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "pruned" and "median stopping rule" in experiment.stop_reason
    assert attempts(session_factory) == [("pruned", None)]


def test_a_run_not_pruned_is_told_to_train_on_and_is_not_asked_after_its_last_epoch(
    scripted, session_factory, experiment_id
):
    judged(session_factory, experiment_id, rival_accuracy=0.1)  # Below its 0.5.
    run = scripted([STARTED, epoch(1), Until(verdict_given, epoch(2)), Done(MODEL)])
    run.drain()
    assert run.started[0].verdicts == [False]
    assert row(session_factory, experiment_id).status == "succeeded"


def test_a_judged_run_whose_lease_is_lost_is_told_to_stop(scripted, session_factory, experiment_id):
    judged(session_factory, experiment_id, rival_accuracy=0.1)
    take = Do(take_over(session_factory, experiment_id), then=epoch(1))
    run = scripted([STARTED, take, Until(verdict_given, Interrupted())])
    run.drain()
    assert run.started[0].verdicts == [True]
    assert row(session_factory, experiment_id).claim_token == "another-worker"
    with session_factory() as session:
        own = select(EpochMetric).where(EpochMetric.experiment_id == experiment_id)
        assert session.scalars(own).all() == []  # A fenced write: the epoch was not its own.


def test_success_stores_the_model_and_the_test_results(
    scripted, session_factory, experiment_id, caplog
):
    run = scripted([STARTED, epoch(1), epoch(2), Done(MODEL)])
    with caplog.at_level(logging.INFO, logger="service.worker"):
        run.drain()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "succeeded" and experiment.claim_token is None
    assert (experiment.test_loss, experiment.test_accuracy) == (0.4, 0.9)
    assert experiment.test_misclassified == [[3, 1, 2]]
    assert experiment.reproducibility == asdict(RECORD)
    assert experiment.stopped_early is False
    with session_factory() as session:
        assert session.get(TrainedModel, experiment_id).keras_file == b"PK model"
        assert session.get(Checkpoint, experiment_id) is None
        assert [m.epoch for m in session.scalars(select(EpochMetric))] == [1, 2]
    assert attempts(session_factory) == [("succeeded", None)]
    assert f"experiment {experiment_id} succeeded" in caplog.text
    # Outside a pruning study the child never waits for a verdict.
    assert run.started[0].judged_from is None and run.started[0].verdicts == []


def test_a_failure_records_its_error_and_is_not_retried(scripted, session_factory, experiment_id):
    run = scripted([STARTED, Failed("FloatingPointError: the loss became nan in epoch 1")])
    run.drain()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "failed"
    assert experiment.error == "FloatingPointError: the loss became nan in epoch 1"
    assert attempts(session_factory) == [
        ("failed", "FloatingPointError: the loss became nan in epoch 1")
    ]
    assert len(run.started) == 1


def test_a_cancel_arriving_during_the_evaluation_ends_cancelled_without_a_model(
    scripted, session_factory, experiment_id
):
    # Asked after the last epoch, in the same moment the child reports the test results.
    run = scripted(
        [STARTED, epoch(1), epoch(2), Do(cancel(session_factory, experiment_id), then=Done(MODEL))]
    )
    run.drain()
    assert row(session_factory, experiment_id).status == "cancelled"
    with session_factory() as session:
        assert session.get(TrainedModel, experiment_id) is None
    assert attempts(session_factory) == [("cancelled", None)]


def test_a_cancel_request_stops_the_training_between_batches_and_keeps_finished_epochs(
    scripted, session_factory, experiment_id
):
    run = scripted(
        [
            STARTED,
            epoch(1),
            Do(cancel(session_factory, experiment_id)),
            Until(stopped, Interrupted()),
        ]
    )
    run.drain()
    trainer = run.started[0]
    assert trainer.stop_now.is_set() and not trainer.stop_after_epoch.is_set()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "cancelled" and experiment.finished_at is not None
    with session_factory() as session:
        assert [m.epoch for m in session.scalars(select(EpochMetric))] == [1]
    assert attempts(session_factory) == [("cancelled", None)]


def test_a_crashed_trainer_requeues_the_experiment_and_is_replaced(
    scripted, session_factory, experiment_id
):
    crash = TrainerCrashedError("the training process died (exit code -9)")
    run = scripted([STARTED, epoch(1), crash], [STARTED, epoch(2), Done(MODEL)])
    run.drain()
    assert len(run.started) == 2 and not run.started[0].killed
    assert attempts(session_factory) == [
        ("lost", "the training process died (exit code -9)"),
        ("succeeded", None),
    ]
    assert row(session_factory, experiment_id).attempts == 2


def test_shutdown_lets_the_epoch_finish_then_releases_without_spending_the_attempt(
    scripted, session_factory, experiment_id
):
    run = scripted([])
    shut_down = Do(run.worker.shutdown.set)
    run.trainers[0].script = [
        STARTED,
        shut_down,
        Until(lambda t: t.stop_after_epoch.is_set(), epoch(1)),
        Interrupted(),
    ]
    run.drain()
    trainer = run.started[0]
    assert trainer.stop_after_epoch.is_set() and not trainer.stop_now.is_set()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "queued" and experiment.attempts == 0
    with session_factory() as session:
        assert [m.epoch for m in session.scalars(select(EpochMetric))] == [1]
    assert attempts(session_factory) == [("requeued", None)]
    assert trainer.closed


def test_a_second_signal_kills_the_training_and_releases_the_experiment(
    scripted, session_factory, experiment_id
):
    run = scripted([])
    run.trainers[0].script = [STARTED, Do(run.worker.shutdown.set), Do(run.worker.force_stop.set)]
    run.drain()
    assert run.started[0].killed
    assert row(session_factory, experiment_id).status == "queued"
    assert attempts(session_factory) == [
        ("requeued", "the worker shut down before the epoch ended")
    ]


def test_an_overdue_run_is_stopped_and_fails_with_its_reason(
    scripted, session_factory, experiment_id
):
    run = scripted([STARTED, Until(stopped, Interrupted())], max_run_seconds=0.05)
    run.drain()
    experiment = row(session_factory, experiment_id)
    assert experiment.status == "failed"
    assert experiment.error == "ran past MAX_RUN_SECONDS (0.05 s)"
    assert attempts(session_factory) == [("failed", "ran past MAX_RUN_SECONDS (0.05 s)")]
    assert not run.started[0].killed


def test_an_overdue_run_that_does_not_stop_is_killed_and_its_trainer_replaced(
    scripted, session_factory, experiment_id, caplog
):
    run = scripted([STARTED], [], max_run_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="service.worker"):
        run.drain()
    assert run.started[0].killed and len(run.started) == 2
    assert row(session_factory, experiment_id).error == "ran past MAX_RUN_SECONDS (0.05 s)"
    assert "the training did not stop, killing it" in caplog.text
