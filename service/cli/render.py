"""How `convlab` shows what the service answers: lines and rich tables, never requests."""

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

ENDED = ("succeeded", "failed", "cancelled", "pruned")
STATUS_STYLES = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "pruned": "blue",
    "finished": "green",
}
MISSING = "—"


@dataclass(frozen=True)
class Output:
    """Where a command writes: a rich console for people, or JSON on stdout for scripts."""

    console: Console
    json: bool

    def emit(self, document: Any) -> None:
        """One JSON document on a line of its own, flushed at once so a pipe sees it live."""
        sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def number(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def epoch_line(epoch: dict[str, Any], epochs: int | None) -> Text:
    """A finished epoch in one line: `epoch 2/5  loss 0.4120  accuracy 0.8530 ...  3.1 s`."""
    of = f"/{epochs}" if epochs else ""
    parts = [
        f"epoch {epoch['epoch']}{of}",
        f"loss {number(epoch['loss'])}",
        f"accuracy {number(epoch['accuracy'])}",
    ]
    # Only a run with a validation split has them; dashes on every line would be noise.
    if epoch.get("val_loss") is not None:
        parts.append(f"val_loss {number(epoch['val_loss'])}")
    if epoch.get("val_accuracy") is not None:
        parts.append(f"val_accuracy {number(epoch['val_accuracy'])}")
    parts.append(f"{epoch['seconds']:.1f} s")
    return Text("  ".join(parts))


def key_value_grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    return grid


def add_result_rows(grid: Table, view: dict[str, Any]) -> None:
    """How a run ended: its test result, why it stopped, its error, its stored model."""
    test = view.get("test") or {}
    grid.add_row("test accuracy", number(test.get("accuracy")))
    grid.add_row("test loss", number(test.get("loss")))
    grid.add_row("stop reason", Text(view.get("stop_reason") or MISSING))
    if view.get("error"):
        grid.add_row("error", Text(view["error"]))
    if view.get("model"):
        model = view["model"]
        grid.add_row("model", f"{model['size_bytes']:,} bytes, sha256 {model['sha256'][:16]}…")


def summary_table(view: dict[str, Any]) -> Table:
    """The end of a followed run: status, epochs, test result, why it stopped."""
    grid = key_value_grid()
    grid.add_row("experiment", Text(f"{view['id']}  {view.get('name') or ''}".rstrip()))
    grid.add_row("status", status_text(view["status"]))
    grid.add_row("epochs", f"{len(view['epochs'])} of {view['spec']['epochs']}")
    add_result_rows(grid, view)
    return grid


def queued_line(view: dict[str, Any]) -> Text:
    """What POST answered: the id, and where it stands in the queue."""
    return Text(f"experiment {view['id']} ").append_text(standing(view))


def standing(view: dict[str, Any]) -> Text:
    """Its status, with its place in the queue and why it waits while queued."""
    line = status_text(view["status"])
    if view.get("queue_position") is not None:
        line.append(f", position {view['queue_position']} in the queue")
    if view.get("waiting_reason"):
        line.append(f" ({view['waiting_reason']})")
    return line


def experiments_table(items: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """GET /experiments as people compare runs: shape, size, speed and accuracy."""
    # No borders and short headings: eleven columns fit an 80-column terminal. `train` is the
    # last epoch's training accuracy, `test` the test accuracy.
    table = Table(title=title, header_style="bold underline", box=None, pad_edge=False)
    table.add_column("id", justify="right")
    table.add_column("name", max_width=24, no_wrap=True, overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    for heading in ("conv", "filters", "dense"):
        table.add_column(heading)
    for heading in ("params", "epochs", "s/ep", "train", "test"):
        table.add_column(heading, justify="right")
    for item in items:
        table.add_row(
            str(item["id"]),
            Text(item.get("name") or ""),
            status_text(item["status"]),
            str(item["conv_layers"]),
            ",".join(map(str, item["filters"])),
            ",".join(map(str, item["dense_units"])),
            f"{item['total_params']:,}",
            str(item["epochs_run"]),
            number(item.get("seconds_per_epoch"), 2),
            number(item.get("final_accuracy")),
            number(item.get("test_accuracy")),
        )
    return table


def epochs_table(epochs: Sequence[dict[str, Any]]) -> Table:
    table = Table(header_style="bold")
    headings = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "ms/step")
    for heading in headings:
        table.add_column(heading, justify="right")
    for epoch in epochs:
        table.add_row(
            str(epoch["epoch"]),
            number(epoch["loss"]),
            number(epoch["accuracy"]),
            number(epoch.get("val_loss")),
            number(epoch.get("val_accuracy")),
            f"{epoch['seconds']:.1f}",
            f"{epoch['ms_per_step']:.1f}",
        )
    return table


def spec_text(spec: dict[str, Any]) -> Text:
    """The stored spec in one wrapped paragraph of `field=value`."""
    conv = " ".join(
        f"{layer['filters']}×{layer['kernel_size']}²"
        + (f"/pool {layer['pool_size']}" if layer["pool_size"] else "")
        for layer in spec["conv_layers"]
    )
    fields = [f"conv_layers=[{conv}]"] + [
        f"{name}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
        for name, value in spec.items()
        if name != "conv_layers"
    ]
    return Text("  ".join(fields))


def experiment_header(view: dict[str, Any]) -> Table:
    """GET /experiments/{id} above its epochs: who, where, what it is doing."""
    grid = key_value_grid()
    grid.add_row("experiment", Text(f"{view['id']}  {view.get('name') or ''}".rstrip()))
    grid.add_row("status", standing(view))
    grid.add_row("spec", spec_text(view["spec"]))
    grid.add_row("parameters", f"{view['summary']['total_params']:,}")
    if view.get("device"):
        grid.add_row("device", f"{view['device']} ({view.get('backend') or MISSING})")
    if view.get("progress"):
        progress = view["progress"]
        grid.add_row(
            "progress",
            f"epoch {progress['epoch'] + 1}/{progress['epochs']}, "
            f"step {progress['step']}/{progress['steps']}",
        )
    if view.get("study"):
        study = view["study"]
        grid.add_row(
            "study",
            f"{study['study_id']}  {variant_label(study['variant'])}  repeat {study['repeat']}",
        )
    grid.add_row("attempts", str(len(view["attempts"])))
    return grid


def variant_label(variant: dict[str, Any] | None) -> str:
    """A study cell's varied fields: `filters=32 conv_layers=2`."""
    if not variant:
        return MISSING
    return " ".join(f"{name}={json.dumps(value)}" for name, value in variant.items())
