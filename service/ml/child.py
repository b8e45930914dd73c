"""The training child process's main loop: Keras runs here, so a crash or a hang can be
killed and recorded without taking the worker down. It lives across experiments and keeps
the data set in memory.

This module imports no Keras at the top: the worker imports it to name the child's entry
point, and the child loads Keras only once its thread and priority limits are set.
"""

import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from service.heap import freeze_heap
from service.import_guard import keep_unused_libraries_out
from service.ml.messages import Done, Exit, Failed, Interrupted, Ready, Started, Train, Verdict
from service.threads import limit_backend_threads

if TYPE_CHECKING:
    from service.ml.compiled import CompiledModels

PARENT_CHECK_SECONDS = 1.0
# How often the watcher thread copies the stop requests into plain flags: reading a
# process-shared event or asking for the parent's pid on every batch slows training down.
FLAG_REFRESH_SECONDS = 0.1


class StopFlags(threading.Thread):
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


class Verdicts:
    """Waits, after each epoch from `from_epoch` on, for the worker's Verdict on it.

    A stop request or a vanished worker ends the wait: the run stops there, and the serve
    loop drops the verdict that may still come.
    """

    def __init__(self, connection: Connection, flags: StopFlags, from_epoch: int | None) -> None:
        self.connection = connection
        self.flags = flags
        self.from_epoch = from_epoch

    def stop_after(self, epoch: int) -> bool:
        if self.from_epoch is None or epoch < self.from_epoch:
            return False
        while not self.connection.poll(FLAG_REFRESH_SECONDS):
            self.flags.refresh()
            if self.flags.now or self.flags.orphaned:
                return True
        try:
            verdict = self.connection.recv()
        except EOFError:  # The worker is gone: nobody will judge, or want, the next epoch.
            return True
        return not isinstance(verdict, Verdict) or verdict.stop


def main(*args: Any) -> NoReturn:
    """The child's entry point: `serve`, then leave without finalizing the interpreter.

    Tearing down a process with Keras and its backend loaded took 0.6 s of CPU
    (bench/trainer_child.py) and frees nothing the kernel would not: the worker waited for it
    at every stop and every replacement of its child. Everything the worker needs was sent
    before `serve` returned.
    """
    serve(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(
    connection: Connection,
    stop_now: Event,
    stop_after_epoch: Event,
    epoch: Synchronized,
    step: Synchronized,
    fashion_mnist_dir: Path | None,
    parent_pid: int,
    nice: int,
    threads: int,
) -> None:
    """Answer Train requests one at a time until told to exit or orphaned."""
    # Ctrl-C reaches the whole process group; only the worker decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Training yields the CPU to an API on the same machine; both knobs act before Keras loads.
    os.nice(nice)
    limit_backend_threads(threads)
    keep_unused_libraries_out()

    from service.ml.backend import available_gpus

    gpus = available_gpus()
    # The backend, imported now, lives as long as the process: frozen, its objects are left
    # out of the collections in each run's tracing and the full one after it, which made a
    # small run 9% faster (bench/trainer_child.py).
    freeze_heap()
    flags = StopFlags(stop_now, stop_after_epoch, parent_pid)
    flags.start()
    connection.send(Ready(gpus))
    trainer = _Trainer(connection, flags, (epoch, step), fashion_mnist_dir)
    while True:
        if not connection.poll(PARENT_CHECK_SECONDS):
            if flags.orphaned:
                return
            continue
        try:
            message: Any = connection.recv()
        except EOFError:  # The worker died: no one is left to train for.
            return
        match message:
            case Exit():
                return
            case Train() if not trainer.run(message):
                return
            case Verdict():
                pass  # On a run that a stop request ended first: nobody waits for it.


class _Trainer:
    """Runs one Train request after another, sending what happens back to the worker."""

    def __init__(
        self,
        connection: Connection,
        flags: StopFlags,
        progress: tuple[Synchronized, Synchronized],
        fashion_mnist_dir: Path | None,
    ) -> None:
        self.connection = connection
        self.flags = flags
        self.progress = progress
        self.fashion_mnist_dir = fashion_mnist_dir
        # Made at the first run, once the backend is imported.
        self.models: CompiledModels | None = None

    def run(self, request: Train) -> bool:
        """Train one experiment; False once the worker is gone and the child should exit."""
        from service.datasets import load_fashion_mnist
        from service.ml.backend import backend_name, clear_backend_state, describe_device
        from service.ml.compiled import CompiledModels
        from service.ml.fit import TrainingInterrupted, train, training_count
        from service.ml.reproducibility import prepare_run

        spec, flags = request.spec, self.flags
        verdicts = Verdicts(self.connection, flags, request.verdict_from_epoch)
        flags.refresh()  # The worker cleared the events just before sending this run.
        try:
            # Cached per process: loaded by the first run only.
            dataset = load_fashion_mnist(self.fashion_mnist_dir)
            if self.models is None:
                self.models = CompiledModels()
            steps = spec.steps_per_epoch(training_count(spec, dataset))
            record = prepare_run(spec, dataset, request.device)
            device = describe_device(request.device)
            self.connection.send(Started(device, backend_name(), steps, record))
            result = train(
                spec,
                dataset,
                seed=record.seed,
                device=request.device,
                send_epoch=self.connection.send,
                progress=self.progress,
                stop_now=lambda: flags.now or flags.orphaned,
                # The verdict is read first: each one the worker sends is waited for.
                stop_after_epoch=lambda epoch: verdicts.stop_after(epoch) or flags.after_epoch,
                resume=request.resume,
                models=self.models,
            )
            self.connection.send(Done(result))
        except TrainingInterrupted:
            if flags.orphaned:
                return False
            self.connection.send(Interrupted())
        except Exception as error:
            traceback.print_exc()
            self.connection.send(Failed(f"{type(error).__name__}: {error}"))
        finally:
            # Past the except blocks no traceback holds the run's frames, so its model is
            # unreachable and the collection in here frees it.
            clear_backend_state()
        return True
