"""The worker's handle on its training child (`service.ml.child`): start it, give it a run,
read its messages, stop it. Nothing here imports Keras."""

import contextlib
import multiprocessing
import os
from pathlib import Path

import psutil

from service.ml.child import main
from service.ml.messages import Exit, Ready, Train, TrainerMessage, Verdict
from service.results import ResumePoint
from service.spec import ExperimentSpec

READY_TIMEOUT_SECONDS = 300.0


class TrainerCrashedError(RuntimeError):
    """The child process died or never became ready."""


class TrainerProcess:
    """A spawned training child, alive across experiments.

    `stop_now` stops a run between batches, `stop_after_epoch` at the end of the epoch under
    way; `epoch` and `step` say where the run is.
    """

    def __init__(self, fashion_mnist_dir: Path | None, *, nice: int = 0, threads: int = 0) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop_now = context.Event()
        self.stop_after_epoch = context.Event()
        self.epoch = context.Value("i", 0, lock=False)
        self.step = context.Value("i", 0, lock=False)
        self._connection, child_connection = context.Pipe()
        self.process = context.Process(
            target=main,
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
        ready: Ready = self._connection.recv()
        self.gpus: list[str] = ready.gpus
        self.experiments = 0

    def start(
        self,
        spec: ExperimentSpec,
        device: str,
        resume: ResumePoint | None,
        verdict_from_epoch: int | None = None,
    ) -> None:
        """Have the child train `spec` on `device` ('cpu' or 'gpu'), from `resume` if given;
        from `verdict_from_epoch` on, it waits for `send_verdict` after each epoch."""
        self.experiments += 1
        self.stop_now.clear()
        self.stop_after_epoch.clear()
        self.epoch.value = resume.epoch if resume else 0
        self.step.value = 0
        self._connection.send(Train(spec, device, resume, verdict_from_epoch))

    def send_verdict(self, *, stop: bool) -> None:
        """Answer the child waiting after an epoch: stop there, or train on. A child that has
        died meanwhile is not an error here: the next `poll` reports the crash."""
        with contextlib.suppress(OSError):
            self._connection.send(Verdict(stop))

    def poll(self, timeout: float) -> TrainerMessage | None:
        """The next message from the child, or None; raises when the child has died."""
        try:
            if self._connection.poll(timeout):
                return self._connection.recv()
        except (EOFError, OSError):
            pass
        else:
            if self.process.is_alive():
                return None
        self.process.join(1)
        raise TrainerCrashedError(f"the training process died (exit code {self.process.exitcode})")

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
                self._connection.send(Exit())
            self.process.join(10)
        if self.process.is_alive():
            self.kill()
