"""The training callbacks, each on a tiny real fit: what a whole and a partial epoch send."""

from types import SimpleNamespace

import numpy as np

from service.ml.callbacks import Checkpoint, Interruption, NaNGuard, Progress, StopThreshold
from service.ml.messages import EpochFinished
from service.ml.model import build_model
from service.spec import ExperimentCreate, StopRule

SAMPLES, BATCH = 32, 8
STEPS = SAMPLES // BATCH


def fit(epochs: int, *callbacks) -> None:
    spec = ExperimentCreate(conv_layers=0, dense_units=[4], epochs=epochs, seed=1).to_spec()
    model = build_model(spec)
    images = np.random.default_rng(0).random((SAMPLES, 28, 28, 1), dtype=np.float32)
    labels = np.arange(SAMPLES) % 10
    model.fit(images, labels, epochs=epochs, batch_size=BATCH, callbacks=list(callbacks), verbose=0)


def run(epochs: int, *, stop_now=lambda: False, stop_after_epoch=lambda epoch: False, rule=None):
    interruption = Interruption(stop_now, stop_after_epoch, epochs)
    sent: list[EpochFinished] = []
    checkpoint = Checkpoint(sent.append, STEPS, interruption, initial_epoch=0)
    progress = SimpleNamespace(value=0), SimpleNamespace(value=0)
    stop = StopThreshold(rule, epochs, interruption)
    fit(
        epochs,
        Progress(*progress, STEPS, interruption),
        NaNGuard(interruption),
        checkpoint,
        stop,
        interruption,
    )
    return SimpleNamespace(
        sent=sent, checkpoint=checkpoint, interruption=interruption, progress=progress, stop=stop
    )


def test_every_whole_epoch_is_sent_with_its_checkpoint_and_progress():
    result = run(2)
    assert [message.result.epoch for message in result.sent] == [1, 2]
    assert all(message.checkpoint[:2] == b"PK" for message in result.sent)
    assert result.sent[0].result.ms_per_step > 0
    assert result.checkpoint.last_epoch == 2
    assert [counter.value for counter in result.progress] == [2, STEPS]
    assert not result.interruption.interrupted and result.stop.reason is None


def test_stopping_between_batches_sends_no_partial_epoch():
    result = run(3, stop_now=lambda: True)
    assert result.sent == [] and result.checkpoint.last_epoch == 0
    assert result.interruption.mid_epoch
    assert [counter.value for counter in result.progress] == [1, 1]


def test_a_partial_epoch_reaches_no_stop_threshold():
    """Its logs cover the batches run so far: a threshold any loss meets stays unreached."""
    result = run(3, stop_now=lambda: True, rule=StopRule(metric="loss", threshold=1e9))
    assert result.interruption.mid_epoch and result.stop.reason is None


def test_stopping_after_the_epoch_sends_it_first():
    result = run(3, stop_after_epoch=lambda epoch: True)
    assert [message.result.epoch for message in result.sent] == [1]
    assert result.interruption.after_epoch and not result.interruption.mid_epoch


def test_each_epoch_but_the_last_is_asked_about_after_it_was_sent():
    """A pruning verdict is given on the committed epoch: the worker must have it first."""
    asked: list[tuple[int, int]] = []
    sent: list[EpochFinished] = []

    def stop_after_epoch(epoch: int) -> bool:
        asked.append((epoch, len(sent)))
        return epoch == 2

    interruption = Interruption(lambda: False, stop_after_epoch, 4)
    fit(4, Checkpoint(sent.append, STEPS, interruption, initial_epoch=0), interruption)
    assert asked == [(1, 1), (2, 2)]
    assert [message.result.epoch for message in sent] == [1, 2]
    assert interruption.after_epoch


def test_an_epoch_that_reached_the_stop_threshold_is_asked_about_but_ends_whole():
    asked: list[int] = []
    result = run(
        3,
        stop_after_epoch=lambda epoch: asked.append(epoch) or True,
        rule=StopRule(metric="loss", threshold=100.0),
    )
    assert asked == [1] and result.stop.reason is not None
    assert not result.interruption.interrupted


def test_the_stop_rule_ends_training_and_says_why():
    result = run(3, rule=StopRule(metric="loss", threshold=100.0))
    assert [message.result.epoch for message in result.sent] == [1]
    assert result.stop.reason.startswith("loss ") and result.stop.reason.endswith(
        "<= 100.0 after epoch 1"
    )
    assert not result.interruption.interrupted
