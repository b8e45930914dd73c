"""`study --follow`: a live table of a study's experiments that fills in as they run, fed by
the study's event stream, then the study's comparison."""

import sys
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from service.cli.client import ConvlabClient
from service.cli.events import Event, EventStream
from service.cli.follow import INTERRUPTED, reconnect_notice
from service.cli.render import MISSING, Output, number, status_text, variant_label

# GET /experiments pages at most this many.
PAGE_SIZE = 100


@dataclass
class Run:
    """One experiment of the study, as far as the stream has told."""

    experiment_id: int
    variant: str
    repeat: int | None
    status: str
    epoch: int = 0
    epochs: int | None = None
    step_share: float | None = None
    test_accuracy: float | None = None

    def epoch_text(self) -> str:
        if self.step_share is not None:
            return f"{self.epoch}/{self.epochs} {self.step_share:.0%}"
        if self.epochs:
            return f"{self.epoch}/{self.epochs}"
        return str(self.epoch) if self.epoch else MISSING


class StudyBoard:
    """The study's runs by experiment id, changed by each event."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.runs = {
            item["id"]: Run(
                experiment_id=item["id"],
                variant=variant_label(item.get("variant")),
                repeat=item.get("repeat"),
                status=item["status"],
                epoch=item["epochs_run"],
                test_accuracy=item.get("test_accuracy"),
            )
            for item in sorted(items, key=lambda item: item["id"])
        }

    def apply(self, event: Event) -> Run | None:
        """Changes the run the event is about; returns it when the event ended it."""
        data = event.data
        # `done` carries the experiment's view, whose id is `id`; the others name it.
        experiment_id = data.get("id") if event.kind == "done" else data.get("experiment_id")
        if experiment_id is None:
            return None
        run = self.runs.setdefault(experiment_id, Run(experiment_id, MISSING, None, "queued"))
        if event.kind == "status":
            run.status = data["status"]
            run.step_share = None
        elif event.kind == "progress":
            run.epoch, run.epochs = data["epoch"], data["epochs"]
            run.step_share = data["step"] / data["steps"] if data["steps"] else None
        elif event.kind == "epoch":
            run.epoch, run.step_share = data["epoch"], None
        elif event.kind == "done":
            return self._ended(run, data)
        return None

    @staticmethod
    def _ended(run: Run, view: dict[str, Any]) -> Run:
        run.status, run.step_share = view["status"], None
        run.epoch, run.epochs = len(view["epochs"]), view["spec"]["epochs"]
        run.test_accuracy = (view.get("test") or {}).get("accuracy")
        return run

    def table(self) -> Table:
        table = Table(header_style="bold")
        for heading in ("experiment", "variant", "repeat", "status", "epoch", "test accuracy"):
            table.add_column(
                heading, justify="left" if heading in ("variant", "status") else "right"
            )
        for run in self.runs.values():
            table.add_row(
                str(run.experiment_id),
                Text(run.variant),
                MISSING if run.repeat is None else str(run.repeat),
                status_text(run.status),
                run.epoch_text(),
                number(run.test_accuracy),
            )
        return table


def study_experiments(client: ConvlabClient, study_id: int) -> list[dict[str, Any]]:
    """Every experiment of the study, a page at a time."""
    items: list[dict[str, Any]] = []
    while True:
        page = client.get("/experiments", study_id=study_id, limit=PAGE_SIZE, offset=len(items))
        items.extend(page["items"])
        if not page["items"] or len(items) >= page["total"]:
            return items


def ended_line(run: Run) -> Text:
    line = Text(f"experiment {run.experiment_id}  {run.variant}  repeat {run.repeat}  ")
    line.append_text(status_text(run.status))
    if run.test_accuracy is not None:
        line.append(f"  test accuracy {run.test_accuracy:.4f}")
    return line


def estimate(value: dict[str, Any] | None, digits: int = 4) -> str:
    """A mean over repeats, ± half its 95% interval where there are enough of them."""
    if value is None:
        return MISSING
    if value.get("ci_low") is None:
        return number(value["mean"], digits)
    half = (value["ci_high"] - value["ci_low"]) / 2
    return f"{number(value['mean'], digits)} ± {number(half, digits)}"


def print_study_summary(console: Console, study: dict[str, Any]) -> None:
    """GET /studies/{id} in short: where it ended, each variant's numbers, what each varied
    field did."""
    counts = ", ".join(f"{count} {status}" for status, count in study["counts"].items() if count)
    heading = Text(f"study {study['id']}  ")
    heading.append(study["name"]).append("  ").append_text(status_text(study["status"]))
    heading.append(f"  ({counts})")
    table = Table(header_style="bold underline", box=None, pad_edge=False)
    for column in ("variant", "device", "runs", "pruned", "failed", "test accuracy", "s/epoch"):
        table.add_column(column, justify="left" if column in ("variant", "device") else "right")
    for variant in study["variants"]:
        table.add_row(
            Text(variant_label(variant["params"])),
            variant["device"],
            str(variant["runs"]),
            str(variant["pruned"]),
            str(variant["failed"]),
            estimate(variant["test_accuracy"]),
            estimate(variant["seconds_per_epoch"], 2),
        )
    console.print(heading, soft_wrap=True)
    console.print(table)
    for effect in study["effects"]:
        console.print(Text(effect["verdict"]), soft_wrap=True)


def _watch(stream: EventStream, board: StudyBoard, output: Output) -> dict[str, Any]:
    """The study's view from its `end` event, the board kept current until then."""
    final: dict[str, Any] = {}
    # Redrawn from the board four times a second; a log file gets the lines alone.
    with Live(
        get_renderable=board.table,
        console=output.console,
        refresh_per_second=4,
        transient=not output.console.is_terminal,
    ):
        for event in stream:
            ended = board.apply(event)
            if ended is not None:
                output.console.print(ended_line(ended), soft_wrap=True, highlight=False)
            if event.kind == "end":
                final = event.data
    return final


def _emit_all(stream: EventStream, output: Output) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for event in stream:
        output.emit(event.document())
        if event.kind == "end":
            final = event.data
    return final


def study_succeeded(study: dict[str, Any]) -> bool:
    """Finished, with every run succeeded or pruned (pruning is the study working)."""
    counts = study["counts"]
    return study["status"] == "finished" and counts["succeeded"] + counts["pruned"] == sum(
        counts.values()
    )


def follow_study(client: ConvlabClient, output: Output, study: dict[str, Any]) -> int:
    """Follow the study to its end: 0 if every run succeeded or was pruned, else 1; 130 on
    Ctrl-C."""
    stream = EventStream(
        client, f"/studies/{study['id']}/events", final="end", on_reconnect=reconnect_notice(output)
    )
    try:
        if output.json:
            final = _emit_all(stream, output)
        else:
            final = _watch(stream, StudyBoard(study_experiments(client, study["id"])), output)
    except KeyboardInterrupt:
        print(
            f"convlab: stopped following; study {study['id']} keeps running on the server "
            f"(`convlab cancel --study {study['id']}` stops it)",
            file=sys.stderr,
        )
        return INTERRUPTED
    if not output.json:
        print_study_summary(output.console, final)
    return 0 if study_succeeded(final) else 1
