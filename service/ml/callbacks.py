"""One Keras callback per concern of a training run, composed in `fit(callbacks=[...])`.

An epoch interrupted between batches is not an epoch: the callbacks that act at an epoch's
end ask the `Interruption` callback, and leave such a partial epoch alone.
"""

import math
import time
from collections.abc import Callable
from typing import Protocol

import keras

from service.ml.messages import EpochFinished
from service.ml.model import save_model_bytes
from service.results import EpochResult
from service.spec import StopRule


class Counter(Protocol):
    """A shared integer: `multiprocessing.Value('i')` in the training child."""

    value: int


class Interruption(keras.callbacks.Callback):
    """Stops between batches once `stop_now` says so, or at the end of a whole epoch once
    `stop_after_epoch(epoch)` does (never after the last one: that run is complete).

    It runs after the callbacks that report the epoch, since `stop_after_epoch` may wait for
    the worker's verdict on it. An epoch that reached the stop threshold has ended the run
    whole: it is asked all the same, so that no verdict is left unread, and not interrupted.
    """

    # Its batch hook only reads a flag, so Keras may call it off the training loop's thread.
    async_safe = True

    def __init__(
        self, stop_now: Callable[[], bool], stop_after_epoch: Callable[[int], bool], epochs: int
    ) -> None:
        super().__init__()
        self.stop_now = stop_now
        self.stop_after_epoch = stop_after_epoch
        self.epochs = epochs
        self.mid_epoch = False
        self.after_epoch = False

    @property
    def interrupted(self) -> bool:
        return self.mid_epoch or self.after_epoch

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        if self.stop_now():
            self.mid_epoch = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.mid_epoch or epoch + 1 >= self.epochs:
            return
        if self.stop_after_epoch(epoch + 1) and not self.model.stop_training:
            self.after_epoch = True
            self.model.stop_training = True


class Progress(keras.callbacks.Callback):
    """Publishes the epoch and step under way in shared integers the worker reads."""

    async_safe = True  # It only stores integers.

    def __init__(
        self, epoch: Counter, step: Counter, steps_per_epoch: int, interruption: Interruption
    ) -> None:
        super().__init__()
        self.epoch = epoch
        self.step = step
        self.steps_per_epoch = steps_per_epoch
        self.interruption = interruption

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.epoch.value, self.step.value = epoch + 1, 0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.step.value = batch + 1

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if not self.interruption.mid_epoch:
            self.step.value = self.steps_per_epoch


class NaNGuard(keras.callbacks.Callback):
    """Fails the run once an epoch's loss is not finite: nothing after it can be trusted."""

    def __init__(self, interruption: Interruption) -> None:
        super().__init__()
        self.interruption = interruption

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.interruption.mid_epoch:
            return
        loss = float((logs or {})["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} in epoch {epoch + 1}: lower learning_rate"
            )


class Checkpoint(keras.callbacks.Callback):
    """Sends each whole epoch's metrics and the model saved after it, to store and resume from."""

    def __init__(
        self,
        send: Callable[[EpochFinished], None],
        steps_per_epoch: int,
        interruption: Interruption,
        *,
        initial_epoch: int,
    ) -> None:
        super().__init__()
        self.send = send
        self.steps_per_epoch = steps_per_epoch
        self.interruption = interruption
        self.last_epoch = initial_epoch
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self.interruption.mid_epoch:
            return
        seconds = time.perf_counter() - self._epoch_started
        logs = logs or {}
        result = EpochResult(
            epoch=epoch + 1,
            loss=float(logs["loss"]),
            accuracy=float(logs["accuracy"]),
            val_loss=_optional_float(logs.get("val_loss")),
            val_accuracy=_optional_float(logs.get("val_accuracy")),
            seconds=seconds,
            ms_per_step=seconds * 1000 / self.steps_per_epoch,
        )
        self.last_epoch = epoch + 1
        self.send(EpochFinished(result, save_model_bytes(self.model)))


class StopThreshold(keras.callbacks.Callback):
    """The spec's stop rule: ends training after the first epoch whose metric reaches it."""

    def __init__(self, rule: StopRule | None, epochs: int, interruption: Interruption) -> None:
        super().__init__()
        self.rule = rule
        self.epochs = epochs
        self.interruption = interruption
        self.reason: str | None = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        # A partial epoch reached nothing: its metrics cover the batches run so far.
        if self.rule is None or self.interruption.mid_epoch or epoch + 1 >= self.epochs:
            return
        value = float((logs or {})[self.rule.metric])
        if self.rule.reached(value):
            comparison = "<=" if self.rule.metric.endswith("loss") else ">="
            self.reason = (
                f"{self.rule.metric} {value:.4f} {comparison} {self.rule.threshold} "
                f"after epoch {epoch + 1}"
            )
            self.model.stop_training = True


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
