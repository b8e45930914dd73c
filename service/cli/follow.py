"""`submit --follow`: one experiment's event stream as a progress bar for the epoch in
training, a line per finished epoch, and a summary at the end."""

import sys
from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)

from service.cli.client import ConvlabClient
from service.cli.events import Event, EventStream, Reconnecting
from service.cli.render import ENDED, Output, epoch_line, summary_table

# What a shell reports for a command ended by Ctrl-C (128 + SIGINT).
INTERRUPTED = 130


class EpochBars:
    """A bar for the epoch in training (steps, the latest metrics, ETA), replaced by the
    epoch's line once it is committed. Only on a terminal: a log file gets the lines."""

    def __init__(self, console: Console, epochs: int) -> None:
        self._epochs = epochs
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  {task.fields[metrics]}  ETA {task.fields[eta]}"),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None
        self._epoch = 0
        self._finished = 0
        # The bar shows the last finished epoch's numbers until an event carries its own.
        self._metrics = ""
        self._seconds_per_step: float | None = None

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def begin(self, epoch: int) -> TaskID:
        """The bar of `epoch` (1-based), new ones without a total until a progress event."""
        if self._task is not None and self._epoch == epoch:
            return self._task
        self.clear()
        self._epoch = epoch
        self._task = self._progress.add_task(
            f"epoch {epoch}/{self._epochs}", total=None, metrics=self._metrics, eta="?"
        )
        return self._task

    def advance(self, progress: dict[str, Any]) -> None:
        epoch = progress["epoch"]  # The epoch in training, counted from 1.
        # A heartbeat read before an epoch's commit can arrive after its line: no bar again.
        if epoch <= self._finished or epoch > self._epochs:
            return
        task = self.begin(epoch)
        if "loss" in progress and "accuracy" in progress:
            self._metrics = f"loss {progress['loss']:.4f}  accuracy {progress['accuracy']:.4f}"
        self._progress.update(
            task,
            completed=progress["step"],
            total=progress["steps"],
            metrics=self._metrics,
            eta=self._eta(progress),
        )

    def _eta(self, progress: dict[str, Any]) -> str:
        """The epoch's remaining steps at the last epoch's pace. Heartbeats come too seldom
        for rich's own estimate, which needs several within an epoch; in the first epoch the
        run's pace so far (start-up included) stands in."""
        done = (progress["epoch"] - 1) * progress["steps"] + progress["step"]
        pace = self._seconds_per_step or (progress["seconds"] / done if done else None)
        if pace is None:
            return "?"
        return str(timedelta(seconds=round((progress["steps"] - progress["step"]) * pace)))

    def finish(self, epoch: dict[str, Any]) -> None:
        """The epoch's bar gives way to its line; the next epoch's bar starts at once (unless
        its progress came first)."""
        self._finished = epoch["epoch"]
        self._metrics = f"loss {epoch['loss']:.4f}  accuracy {epoch['accuracy']:.4f}"
        self._seconds_per_step = epoch["ms_per_step"] / 1000
        if self._epoch <= self._finished:
            self.clear()
        self._progress.console.print(epoch_line(epoch, self._epochs), soft_wrap=True)
        if self._finished < self._epochs:
            self._progress.update(self.begin(self._finished + 1), metrics=self._metrics)

    def clear(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None


class ExperimentFollower:
    """Shows each event of one experiment's stream as it comes."""

    def __init__(self, output: Output, view: dict[str, Any]) -> None:
        self.output = output
        self.experiment_id = view["id"]
        self.status = view["status"]
        self._epochs = view["spec"]["epochs"]
        self._bars = EpochBars(output.console, self._epochs)

    def run(self, stream: EventStream) -> dict[str, Any]:
        """The experiment's final view, once the stream has delivered it."""
        final: dict[str, Any] = {}
        with self._bars:
            for event in stream:
                if self.output.json:
                    self.output.emit(event.document())
                else:
                    self._show(event)
                if event.kind == "status":
                    self.status = event.data["status"]
                elif event.kind == "done":
                    final = event.data
        return final

    def _show(self, event: Event) -> None:
        data = event.data
        if event.kind == "status":
            self._bars.clear()
            attempt = f" (attempt {data['attempt']})" if data["attempt"] else ""
            self.output.console.print(f"{data['status']}{attempt}", soft_wrap=True)
            if data["status"] == "running":
                self._bars.begin(1)
        elif event.kind == "progress":
            self._bars.advance(data)
        elif event.kind == "epoch":
            self._bars.finish(data)
        elif event.kind == "done":
            self._bars.clear()


def notice(output: Output, message: str) -> None:
    """A remark beside the output: on stderr for JSON, above the bars for people."""
    if output.json:
        print(f"convlab: {message}", file=sys.stderr, flush=True)
    else:
        output.console.print(message, style="dim", soft_wrap=True, highlight=False, markup=False)


def reconnect_notice(output: Output) -> Callable[[Reconnecting], None]:
    def say(reconnecting: Reconnecting) -> None:
        notice(
            output,
            f"{reconnecting.reason}; reconnecting in {reconnecting.delay:g} s "
            f"({reconnecting.attempt}/{reconnecting.attempts})",
        )

    return say


def follow_experiment(client: ConvlabClient, output: Output, view: dict[str, Any]) -> int:
    """Follow the experiment to its end: 0 if it succeeded, 1 if not, 130 on Ctrl-C."""
    follower = ExperimentFollower(output, view)
    stream = EventStream(
        client,
        f"/experiments/{follower.experiment_id}/events",
        final="done",
        on_reconnect=reconnect_notice(output),
    )
    try:
        final = follower.run(stream)
    except KeyboardInterrupt:
        experiment = follower.experiment_id
        if follower.status in ENDED:
            message = f"experiment {experiment} has ended: {follower.status}"
        else:
            message = (
                f"experiment {experiment} is still {follower.status} on the server "
                f"(`convlab cancel {experiment}` stops it)"
            )
        print(f"convlab: stopped following; {message}", file=sys.stderr)
        return INTERRUPTED
    if not output.json:
        output.console.print(summary_table(final))
    return 0 if final["status"] == "succeeded" else 1
