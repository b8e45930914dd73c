"""The `convlab` client commands against a real API process and a real worker: following a
run, its progress bar on a terminal, JSON for scripts, errors in one line, a dropped
connection resumed, Ctrl-C."""

import contextlib
import io
import json
import os
import pty
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image

from service.datasets import CLASS_NAMES
from service.settings import Settings
from tests.conftest import ROOT, TINY_SPEC, api_process, free_port
from tests.test_boundaries import BACKEND, imports_none_of
from tests.test_worker import start_worker

# Tens of steps an epoch, about half a second each here: long enough to see a bar move and
# to cut a connection between two epochs.
SLOWER_SPEC = {**TINY_SPEC, "train_samples": 6000}
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss ", re.MULTILINE)
RUN_TIMEOUT = 60
# What tells rich to treat a terminal as something else; a test of the terminal drops them.
RICH_OVERRIDES = ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


@dataclass(frozen=True)
class Service:
    url: str
    database_url: str


@pytest.fixture(scope="module")
def service(sqlite_template: Path, tmp_path_factory) -> Iterator[Service]:
    """One API and one worker for the whole module: starting them costs seconds, and each
    test follows experiments of its own."""
    folder = tmp_path_factory.mktemp("client_cli")
    database = folder / "test.db"
    shutil.copyfile(sqlite_template, database)
    database_url = f"sqlite:///{database}"
    # SQLite streams poll the event log; the default second would slow every test down.
    with api_process(database_url, folder / "api.log", EVENT_POLL_SECONDS="0.1") as url:
        worker = start_worker(Settings(database_url=database_url, _env_file=None))
        try:
            yield Service(url, database_url)
        finally:
            worker.terminate()
            worker.communicate(timeout=60)


def convlab_env(url: str, **extra: str) -> dict[str, str]:
    # A nonsense server setting: the client commands must not read the server's settings.
    return {**os.environ, "CONVLAB_URL": url, "LEASE_SECONDS": "1", **extra}


def convlab(url: str, *args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=convlab_env(url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_spec(folder: Path, **overrides) -> str:
    path = folder / "spec.json"
    path.write_text(json.dumps({**TINY_SPEC, **overrides}))
    return str(path)


def epoch_numbers(output: str, epochs: int) -> list[int]:
    return [int(n) for n, total in EPOCH_LINE.findall(output) if int(total) == epochs]


def experiment(service: Service, experiment_id: int) -> dict:
    return httpx.get(f"{service.url}/experiments/{experiment_id}", timeout=10).json()


@pytest.fixture(scope="module")
def followed(service: Service, tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """`submit --follow` of a tiny three-epoch run, and the run as the server has it."""
    spec = write_spec(tmp_path_factory.mktemp("followed"), name="followed", epochs=3)
    result = convlab(service.url, "submit", spec, "--follow")
    created = re.match(r"experiment (\d+) ", result.stdout)
    assert created, result.stdout + result.stderr
    return result, experiment(service, int(created[1]))


def test_submit_follow_shows_every_epoch_once_and_the_test_accuracy(followed):
    result, view = followed
    assert result.returncode == 0, result.stdout + result.stderr
    assert view["status"] == "succeeded"
    assert epoch_numbers(result.stdout, 3) == [1, 2, 3]
    for epoch in view["epochs"]:
        assert f"epoch {epoch['epoch']}/3  loss {epoch['loss']:.4f}" in result.stdout
    assert re.search(rf"test accuracy +{view['test']['accuracy']:.4f}", result.stdout)
    assert re.search(r"status +succeeded", result.stdout)
    assert result.stderr == ""


def test_json_output_parses_for_ls_show_and_submit(service, followed, tmp_path):
    _, view = followed
    shown = convlab(service.url, "show", str(view["id"]), "--json")
    assert json.loads(shown.stdout)["epochs"] == view["epochs"]
    listed = json.loads(convlab(service.url, "ls", "--status", "succeeded", "--json").stdout)
    assert view["id"] in [item["id"] for item in listed["items"]]
    submitted = convlab(service.url, "submit", write_spec(tmp_path, epochs=2), "--json")
    assert json.loads(submitted.stdout)["status"] == "queued"

    # Following, every line is one JSON event; the POST's answer comes first, `done` last.
    followed_run = convlab(
        service.url, "submit", write_spec(tmp_path, epochs=2), "--json", "--follow"
    )
    assert followed_run.returncode == 0, followed_run.stderr
    events = [json.loads(line) for line in followed_run.stdout.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "submitted" and kinds[-1] == "done"
    assert [e["data"]["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert "running" in [e["data"]["status"] for e in events if e["event"] == "status"]
    assert all(e["id"] for e in events if e["event"] in ("status", "epoch"))
    assert events[-1]["data"]["status"] == "succeeded"


def test_show_predict_and_curves_of_the_trained_run(service, followed, tmp_path):
    _, view = followed
    shown = convlab(service.url, "show", str(view["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and f"{view['test']['accuracy']:.4f}" in shown.stdout

    picture = tmp_path / "boot.png"
    Image.fromarray(np.full((28, 28), 200, dtype=np.uint8)).save(picture)
    predicted = convlab(service.url, "predict", str(picture), "--experiment", str(view["id"]))
    assert predicted.returncode == 0, predicted.stderr
    assert any(name in predicted.stdout for name in CLASS_NAMES)
    rows = json.loads(convlab(service.url, "predict", str(picture), "--json").stdout)
    assert rows[0]["image"] == str(picture) and rows[0]["class_name"] in CLASS_NAMES
    assert 0 < rows[0]["confidence"] <= 1

    curve = tmp_path / "curve.png"
    drawn = convlab(service.url, "curves", str(view["id"]), "-o", str(curve))
    assert drawn.returncode == 0, drawn.stderr
    assert curve.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args",
    [("show", "999999"), ("cancel", "999999"), ("curves", "999999"), ("show", "999999", "--json")],
)
def test_an_unknown_id_is_one_readable_line_and_exit_code_1(service, args):
    result = convlab(service.url, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("convlab: experiment 999999 does not exist")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_service_that_is_not_running_is_named_with_what_to_do():
    url = f"http://127.0.0.1:{free_port()}"
    result = convlab(url, "ls")
    assert result.returncode == 1
    assert result.stderr == f"convlab: cannot reach {url}: is the service running? (`make up`)\n"


def test_a_bad_spec_is_the_servers_message_in_one_line(service, tmp_path):
    result = convlab(service.url, "submit", write_spec(tmp_path, filters=0))
    assert result.returncode == 1
    assert result.stderr.startswith("convlab: invalid request: filters: ")
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_the_client_commands_import_no_keras():
    result = imports_none_of("service.__main__, service.cli.commands", BACKEND)
    assert result.returncode == 0, result.stderr[-2000:]


def run_in_pty(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """A command's exit code and raw terminal output, run with a pty as its terminal."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdin=terminal, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([controller], [], [], 0.2)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # Linux's answer once the other side has closed.
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(controller)
    return process.wait(timeout=10), output.decode(errors="replace")


def test_on_a_terminal_the_progress_bar_renders(service, tmp_path):
    spec = write_spec(tmp_path, **{**SLOWER_SPEC, "epochs": 2})
    env = convlab_env(service.url, TERM="xterm", COLUMNS="120", LINES="40")
    for variable in RICH_OVERRIDES:
        env.pop(variable, None)
    code, output = run_in_pty(
        [sys.executable, "-m", "service", "submit", spec, "--follow"], env, RUN_TIMEOUT
    )
    assert code == 0, output
    assert "\x1b[" in output  # Colours and cursor moves: rich saw a terminal.
    bar = re.search(r"epoch \d/2 .*━.*\d+%.*\d+/94.*steps.*ETA", output)
    assert bar, output[-3000:]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert re.search(r"epoch 2/2  loss \d\.\d{4}", plain)


class LineReader:
    """A process's output lines as they come, read on a thread so a test can wait for one."""

    def __init__(self, stream: io.TextIOBase) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matched {pattern!r} in:\n{''.join(self.lines)}")

    def rest(self) -> str:
        while (line := self._queue.get(timeout=RUN_TIMEOUT)) is not None:
            self.lines.append(line)
        return "".join(self.lines)


def start_convlab(url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=convlab_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_at_a_terminal,
    )


def as_at_a_terminal() -> None:
    """Ctrl-C as a person's shell leaves it. A suite started in the background (`make test &`,
    some CI runners) runs with SIGINT ignored, which every child inherits, and Python turns
    SIGINT into KeyboardInterrupt only where it was not ignored at start-up."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class CuttableProxy:
    """A TCP proxy in front of the API whose open connections a test can cut, as a failing
    network would; connections made afterwards go through."""

    def __init__(self, upstream: str) -> None:
        self._upstream = ("127.0.0.1", int(upstream.rsplit(":", 1)[1]))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.sent = bytearray()  # Everything the clients sent, to find their headers in.
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            with self._lock:
                self._open += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, record: bool) -> None:
        try:
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                target.sendall(data)
        except OSError:
            pass  # Cut.
        finally:
            for end in (source, target):
                _close(end)

    def cut(self) -> None:
        with self._lock:
            connections, self._open = self._open, []
        for connection in connections:
            _close(connection)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # Already closed.
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


def test_a_dropped_connection_during_follow_resumes_where_it_was(service, tmp_path):
    proxy = CuttableProxy(service.url)
    spec = write_spec(tmp_path, **{**SLOWER_SPEC, "epochs": 6})
    try:
        with start_convlab(proxy.url, "submit", spec, "--follow") as process:
            reader = LineReader(process.stdout)
            reader.wait_for(r"^epoch 1/6 ")
            proxy.cut()
            output = reader.rest()
            assert process.wait(timeout=RUN_TIMEOUT) == 0, output + process.stderr.read()
    finally:
        proxy.close()
    assert "reconnecting" in output
    assert epoch_numbers(output, 6) == [1, 2, 3, 4, 5, 6]
    assert b"last-event-id: " in proxy.sent.lower()
    assert re.search(r"status +succeeded", output)


def test_ctrl_c_stops_following_and_leaves_the_run_going(service, tmp_path):
    spec = write_spec(tmp_path, **{**SLOWER_SPEC, "epochs": 30})
    with start_convlab(service.url, "submit", spec, "--follow") as process:
        reader = LineReader(process.stdout)
        experiment_id = int(re.match(r"experiment (\d+) ", reader.wait_for(r"^experiment \d+ "))[1])
        reader.wait_for(r"^epoch 1/30 ")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        stderr = process.stderr.read()
    assert stderr == (
        f"convlab: stopped following; experiment {experiment_id} is still running on the "
        f"server (`convlab cancel {experiment_id}` stops it)\n"
    )
    assert experiment(service, experiment_id)["status"] == "running"

    cancelled = convlab(service.url, "cancel", str(experiment_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"experiment {experiment_id} is stopping" in cancelled.stdout
    deadline = time.monotonic() + 30
    while experiment(service, experiment_id)["status"] != "cancelled":
        assert time.monotonic() < deadline, "the run was never cancelled"
        time.sleep(0.2)


def test_study_follow_fills_in_every_run_and_ends_with_the_comparison(service, tmp_path):
    study = tmp_path / "study.json"
    base = {key: TINY_SPEC[key] for key in ("dense_units", "train_samples", "batch_size")}
    study.write_text(
        json.dumps({"name": "cli", "base": {**base, "epochs": 1}, "grid": {"filters": [4, 8]}})
    )
    result = convlab(service.url, "study", str(study), "--follow")
    assert result.returncode == 0, result.stdout + result.stderr
    ended = re.findall(
        r"^experiment \d+  filters=(\d)  repeat 0  succeeded  test accuracy",
        result.stdout,
        re.MULTILINE,
    )
    assert sorted(ended) == ["4", "8"]
    assert re.search(r"^study \d+  cli  finished  \(2 succeeded\)", result.stdout, re.MULTILINE)
    assert "8 vs 4 filters" in result.stdout
