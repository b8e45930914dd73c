"""The training child process: Keras runs here, so a crash or a hang can be killed and
recorded without taking the worker down. It lives across experiments and keeps the data set
in memory; the worker process itself never imports Keras."""

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import psutil

from service.threads import limit_backend_threads

PARENT_CHECK_SECONDS = 1.0
# How often the child's watcher thread copies the stop requests into plain flags: reading a
# process-shared event or asking for the parent's pid on every batch slows training down.
FLAG_REFRESH_SECONDS = 0.1
READY_TIMEOUT_SECONDS = 300.0


class TrainerCrashedError(RuntimeError):
    """The child process died or never became ready."""


class TrainerProcess:
    """The worker's handle on its training child: start a run, read its messages, stop it."""

    def __init__(
        self, fashion_mnist_dir: Path | None, *, nice: int = 0, threads: int | None = None
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop_now = context.Event()
        self.stop_after_epoch = context.Event()
        self.epoch = context.Value("i", 0, lock=False)
        self.step = context.Value("i", 0, lock=False)
        self._connection, child_connection = context.Pipe()
        self.process = context.Process(
            target=_serve,
            args=(
                child_connection,
                self.stop_now,
                self.stop_after_epoch,
                self.epoch,
                self.step,
                fashion_mnist_dir,
                os.getpid(),
                nice,
                threads,
            ),
            name="convlab-trainer",
            daemon=True,
        )
        self.process.start()
        child_connection.close()
        if not self._connection.poll(READY_TIMEOUT_SECONDS):
            self.kill()
            raise TrainerCrashedError("the training process did not start")
        _kind, gpus = self.receive()
        self.gpus: list[str] = gpus
        self.experiments = 0

    def start(self, spec_json: dict, device: str, resume: tuple[int, bytes] | None) -> None:
        self.experiments += 1
        self.stop_now.clear()
        self.stop_after_epoch.clear()
        self.epoch.value = resume[0] if resume else 0
        self.step.value = 0
        self._connection.send(("train", spec_json, device, resume))

    def poll(self, timeout: float) -> tuple | None:
        """The next message from the child, or None; raises when the child has died."""
        try:
            if self._connection.poll(timeout):
                return self.receive()
        except (EOFError, OSError):
            pass
        else:
            if self.process.is_alive():
                return None
        self.process.join(1)
        raise TrainerCrashedError(f"the training process died (exit code {self.process.exitcode})")

    def receive(self) -> tuple:
        return self._connection.recv()

    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def memory_bytes(self) -> int:
        """The child's resident memory (RSS); 0 once it has exited."""
        try:
            return psutil.Process(self.process.pid).memory_info().rss
        except psutil.NoSuchProcess:
            return 0

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self._connection.close()

    def close(self) -> None:
        """Stop an idle child."""
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self._connection.send(("exit",))
            self.process.join(10)
        if self.process.is_alive():
            self.kill()


class _SharedProgress:
    """training.Progress backed by shared integers the worker process reads."""

    def __init__(self, epochs: int, steps_per_epoch: int, epoch: Synchronized, step: Synchronized):
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self._epoch = epoch
        self._step = step

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = value

    @property
    def step(self) -> int:
        return self._step.value

    @step.setter
    def step(self, value: int) -> None:
        self._step.value = value


class _StopFlags(threading.Thread):
    """Mirrors the shared stop events and the parent's liveness into plain booleans."""

    def __init__(self, stop_now: Event, stop_after_epoch: Event, parent_pid: int) -> None:
        super().__init__(name="stop-flags", daemon=True)
        self._events = (stop_now, stop_after_epoch)
        self._parent_pid = parent_pid
        self.now = self.after_epoch = self.orphaned = False

    def run(self) -> None:
        while True:
            self.refresh()
            time.sleep(FLAG_REFRESH_SECONDS)

    def refresh(self) -> None:
        self.now = self._events[0].is_set()
        self.after_epoch = self._events[1].is_set()
        self.orphaned = os.getppid() != self._parent_pid


def _serve(
    connection: Connection,
    stop_now: Event,
    stop_after_epoch: Event,
    epoch: Synchronized,
    step: Synchronized,
    fashion_mnist_dir: Path | None,
    parent_pid: int,
    nice: int,
    threads: int | None,
) -> None:
    # Ctrl-C reaches the whole process group; only the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Training yields the CPU to an API on the same machine; both knobs act before Keras loads.
    os.nice(nice)
    limit_backend_threads(threads)

    from service.datasets import load_fashion_mnist
    from service.ml.model import save_model_bytes
    from service.ml.training import (
        TrainingInterrupted,
        available_gpus,
        clear_backend_state,
        describe_device,
        steps_per_epoch,
        train,
        training_arrays,
    )
    from service.spec import ExperimentSpec

    flags = _StopFlags(stop_now, stop_after_epoch, parent_pid)
    flags.start()
    connection.send(("ready", available_gpus()))
    dataset = None
    while True:
        if not connection.poll(PARENT_CHECK_SECONDS):
            if flags.orphaned:
                return
            continue
        try:
            message: Any = connection.recv()
        except EOFError:  # The worker died: no one is left to train for.
            return
        if message[0] == "exit":
            return
        _, spec_json, device, resume = message
        flags.refresh()  # The worker cleared the events just before sending this run.
        try:
            if dataset is None:
                dataset = load_fashion_mnist(fashion_mnist_dir)
            spec = ExperimentSpec.model_validate(spec_json)
            images, _ = training_arrays(spec, dataset)
            progress = _SharedProgress(spec.epochs, steps_per_epoch(spec, len(images)), epoch, step)
            connection.send(("started", describe_device(device), progress.steps_per_epoch))
            result = train(
                spec,
                dataset,
                device=device,
                progress=progress,
                on_epoch=lambda result, model: connection.send(
                    ("epoch", result, save_model_bytes(model))
                ),
                should_stop=lambda: flags.now or flags.orphaned,
                stop_after_epoch=lambda: flags.after_epoch,
                resume=resume,
            )
            connection.send(("done", result))
        except TrainingInterrupted:
            if flags.orphaned:
                return
            connection.send(("interrupted",))
        except Exception as error:
            traceback.print_exc()
            connection.send(("error", f"{type(error).__name__}: {error}"))
        finally:
            # Past the except blocks no traceback holds the run's frames, so its model is
            # unreachable and the collection in here frees it.
            clear_backend_state()
