"""The `convlab` client commands: each a thin function over one or two HTTP calls, with
`--json` for scripts, errors as one line on stderr and exit codes that mean something
(0 done or succeeded, 1 an error or a run that did not succeed, 130 Ctrl-C)."""

import argparse
import json
import mimetypes
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.cli.board import follow_study
from service.cli.client import ClientError, Connection, ConvlabClient
from service.cli.events import Event
from service.cli.follow import INTERRUPTED, follow_experiment
from service.cli.render import (
    ENDED,
    Output,
    add_result_rows,
    epochs_table,
    experiment_header,
    experiments_table,
    key_value_grid,
    queued_line,
)

CLIENT_COMMANDS = ("submit", "study", "ls", "show", "cancel", "predict", "curves")
STATUSES = ("queued", "running", *ENDED)
# What the service reports for an upload it cannot use; the file's name says which one.
IMAGE_ERRORS = (413, 415, 422)

Handler = Callable[[ConvlabClient, Output, argparse.Namespace], int]


def read_json(path: str) -> Any:
    """The JSON document in a file (`-`: standard input)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ClientError(f"cannot read {path}: {getattr(error, 'strerror', error)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ClientError(f"{path} is not JSON: {error}") from None


def submit(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    view = client.post("/experiments", read_json(args.spec))
    if output.json:
        # Following, the answer is the first of the JSON lines, in the events' envelope.
        output.emit(Event("submitted", view, None).document() if args.follow else view)
    else:
        output.console.print(queued_line(view), soft_wrap=True)
    return follow_experiment(client, output, view) if args.follow else 0


def study(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    created = client.post("/studies", read_json(args.study))
    if output.json:
        output.emit(Event("submitted", created, None).document() if args.follow else created)
    else:
        output.console.print(
            f"study {created['id']} {created['status']}: {created['experiments']} experiments, "
            f"varying {', '.join(created['varied']) or 'nothing'}",
            soft_wrap=True,
            highlight=False,
        )
    return follow_study(client, output, created) if args.follow else 0


def list_experiments(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    page = client.get("/experiments", status=args.status, study_id=args.study, limit=args.limit)
    if output.json:
        output.emit(page)
        return 0
    output.console.print(experiments_table(page["items"]))
    output.console.print(f"{len(page['items'])} of {page['total']}", style="dim")
    return 0


def show(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    view = client.get(f"/experiments/{args.id}")
    if output.json:
        output.emit(view)
        return 0
    output.console.print(experiment_header(view))
    if view["epochs"]:
        output.console.print(epochs_table(view["epochs"]))
    if view["status"] in ENDED:
        result = key_value_grid()
        add_result_rows(result, view)
        output.console.print(result)
    return 0


def cancel(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    if args.study is not None:
        study_view = client.post(f"/studies/{args.study}/cancel")
        if output.json:
            output.emit(study_view)
        else:
            output.console.print(
                f"study {args.study} {study_view['status']}: queued experiments cancelled, "
                "running ones stop within seconds",
                highlight=False,
            )
        return 0
    response = client.request("POST", f"/experiments/{args.id}/cancel")
    if output.json:
        output.emit(client.json(response))
    elif response.status_code == 202:
        output.console.print(
            f"experiment {args.id} is stopping: it ends cancelled after its current batch",
            highlight=False,
        )
    else:
        output.console.print(f"experiment {args.id} cancelled", highlight=False)
    return 0


def _classify(client: ConvlabClient, image: str, experiment: int | None) -> dict[str, Any]:
    """POST /predict's answer for one picture file."""
    try:
        content = Path(image).read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {image}: {error.strerror}") from None
    media_type = mimetypes.guess_type(image)[0] or "application/octet-stream"
    try:
        response = client.request(
            "POST",
            "/predict",
            params={"experiment_id": experiment} if experiment is not None else None,
            files={"image": (Path(image).name, content, media_type)},
        )
    except ClientError as error:
        if error.status in IMAGE_ERRORS:
            raise ClientError(f"{image}: {error}", status=error.status) from None
        raise
    return client.json(response)


def predict(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    answers = [(image, _classify(client, image, args.experiment)) for image in args.images]
    rows = [
        {"image": image, "experiment_id": answer["experiment_id"], **answer["predictions"][0]}
        for image, answer in answers
    ]
    if output.json:
        output.emit(rows)
        return 0
    table = Table(header_style="bold")
    for heading in ("image", "class", "probability", "experiment"):
        table.add_column(heading, justify="right" if heading == "probability" else "left")
    for row in rows:
        table.add_row(
            Text(row["image"]),
            row["class_name"],
            f"{row['confidence']:.4f}",
            str(row["experiment_id"]),
        )
    output.console.print(table)
    return 0


def curves(client: ConvlabClient, output: Output, args: argparse.Namespace) -> int:
    png = client.request("GET", f"/experiments/{args.id}/learning-curve.png").content
    path = Path(args.output or f"experiment-{args.id}-curve.png")
    try:
        path.write_bytes(png)
    except OSError as error:
        raise ClientError(f"cannot write {path}: {error.strerror}") from None
    if output.json:
        output.emit({"experiment_id": args.id, "path": str(path), "bytes": len(png)})
    else:
        output.console.print(f"wrote {path} ({len(png):,} bytes)", highlight=False)
    return 0


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """The client subcommands, beside the server's in `python -m service`'s parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    def command(name: str, handler: Handler, summary: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, parents=[common], help=summary, description=summary)
        parser.set_defaults(handler=handler)
        return parser

    parser = command("submit", submit, "queue an experiment from a JSON spec file")
    parser.add_argument("spec", help="the spec, as POST /experiments takes it (- for stdin)")
    parser.add_argument("--follow", action="store_true", help="watch it train until it ends")
    parser = command("study", study, "queue a study from a JSON file")
    parser.add_argument("study", help="the study, as POST /studies takes it (- for stdin)")
    parser.add_argument("--follow", action="store_true", help="watch its runs until all end")
    parser = command("ls", list_experiments, "list experiments, newest first")
    parser.add_argument("--status", choices=STATUSES)
    parser.add_argument("--study", type=int, metavar="ID", help="only this study's")
    parser.add_argument("--limit", type=int, default=20, help="at most this many (1-100)")
    parser = command("show", show, "an experiment's status, spec, epochs and test result")
    parser.add_argument("id", type=int)
    parser = command("cancel", cancel, "cancel a queued or running experiment, or a study")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("id", type=int, nargs="?")
    target.add_argument("--study", type=int, metavar="ID", help="every run of this study")
    parser = command("predict", predict, "classify pictures with a trained model")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--experiment", type=int, metavar="ID", help="default: latest succeeded")
    parser = command("curves", curves, "save an experiment's learning curve as a PNG")
    parser.add_argument("id", type=int)
    parser.add_argument("-o", "--output", metavar="PATH", help="default: experiment-ID-curve.png")


def run_client(args: argparse.Namespace) -> int:
    """Run a parsed client command; its exit code."""
    output = Output(console=Console(highlight=False), json=args.json)
    try:
        connection = Connection.from_environment()
        with ConvlabClient(connection) as client:
            return args.handler(client, output, args)
    except ClientError as error:
        print(f"convlab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("convlab: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) left: nothing more to say, and nothing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
