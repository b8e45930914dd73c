"""Command line: `python -m service api|worker|up|migrate` runs the service;
`convlab submit|study|ls|show|cancel|predict|curves` (or `python -m service ...`) uses it."""

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import NoReturn

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out.

from pydantic import ValidationError

from service.cli.commands import CLIENT_COMMANDS, add_client_commands, run_client
from service.settings import UnsafeExposureError, get_settings
from service.threads import limit_backend_threads

ROOT = Path(__file__).resolve().parent.parent
# Beyond the worker's own grace period, before `up` kills a worker that will not stop.
WORKER_STOP_MARGIN_SECONDS = 15
# `up` restarts a worker that exits on its own after a pause that doubles from the first to
# the longest, and is back to the first once a worker has run for WORKER_STABLE_SECONDS.
RESTART_FIRST_DELAY_SECONDS = 1.0
RESTART_LONGEST_DELAY_SECONDS = 30.0
WORKER_STABLE_SECONDS = 60.0

# Not __name__, which is "__main__" when this runs as `python -m service`.
logger = logging.getLogger("service.up")


def migrate() -> None:
    """Upgrade the database to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    settings = get_settings()
    config = Config(ROOT / "alembic.ini")
    config.attributes["database_url"] = settings.database_url
    # main() has set up logging; alembic.ini's would raise the root level to WARNING and hide
    # what `up` logs after migrating (its worker supervision).
    config.attributes["configure_logger"] = False
    command.upgrade(config, "head")


def run_api() -> None:
    import uvicorn

    from service.api import create_app

    settings = get_settings()
    try:
        settings.check_exposure()
    except UnsafeExposureError as error:
        raise SystemExit(f"refusing to start: {error}") from None
    # Before any model runs, in this process and in the API processes it starts.
    limit_backend_threads(settings.inference_threads)
    options = {"host": settings.host, "port": settings.port, "access_log": settings.access_log}
    if settings.api_workers > 1:
        # The processes add their metrics up through files in one folder, named before they
        # start (prometheus_client reads it at import) and fresh, so no old counts come back.
        with tempfile.TemporaryDirectory(prefix="convlab-metrics-") as folder:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
            # Several processes need the app by name: each builds its own from the environment.
            uvicorn.run(
                "service.api:create_app", factory=True, workers=settings.api_workers, **options
            )
    else:
        uvicorn.run(create_app(settings), **options)


def run_worker(device: str | None, drain: bool) -> None:
    from service.db import create_db_engine, create_session_factory
    from service.registry import WorkerRefusedError
    from service.worker import TrainingWorker

    settings = get_settings()
    engine = create_db_engine(
        settings.database_url, sqlite_busy_timeout_seconds=settings.sqlite_busy_timeout_seconds
    )
    worker = TrainingWorker(
        settings, create_session_factory(engine), device=device or settings.worker_device
    )
    worker.install_signal_handlers()
    try:
        worker.run(drain=drain)
    except WorkerRefusedError as error:
        raise SystemExit(f"worker refused: {error}") from None


class WorkerSupervisor(threading.Thread):
    """Runs `python -m service worker` beside the API, and starts it again when it exits
    without having been asked to (a crash, the kernel's OOM killer, a stray kill -9)."""

    def __init__(self) -> None:
        super().__init__(name="worker-supervisor", daemon=True)
        self._stopping = threading.Event()
        # Held while starting a worker, so stop() never misses one started just then.
        self._lock = threading.Lock()
        self._worker: subprocess.Popen | None = None

    def run(self) -> None:
        delay = RESTART_FIRST_DELAY_SECONDS
        while (worker := self._start_worker()) is not None:
            started = time.monotonic()
            exit_code = worker.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= WORKER_STABLE_SECONDS:
                delay = RESTART_FIRST_DELAY_SECONDS
            logger.error(
                "worker process %s exited with code %s; restarting it in %g s",
                worker.pid,
                exit_code,
                delay,
            )
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_LONGEST_DELAY_SECONDS)

    def _start_worker(self) -> subprocess.Popen | None:
        """A new worker process; None once stopping."""
        with self._lock:
            if self._stopping.is_set():
                return None
            # A session of its own, so Ctrl-C reaches the worker once, as stop()'s SIGTERM.
            self._worker = subprocess.Popen(
                [sys.executable, "-m", "service", "worker"], start_new_session=True
            )
        logger.info("worker process %s started", self._worker.pid)
        return self._worker

    def stop(self, timeout: float) -> None:
        """Restart no more; SIGTERM the worker, and kill it if it has not exited in `timeout`."""
        with self._lock:
            self._stopping.set()
            worker = self._worker
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.join()


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def run_all() -> None:
    """Migrations, then the API in this process and one worker beside it, kept running."""
    # uvicorn handles SIGTERM, then raises it again once the API has shut down; by default
    # that would end this process at once and leave the worker running on its own.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    migrate()
    supervisor = WorkerSupervisor()
    supervisor.start()
    try:
        run_api()
    finally:
        supervisor.stop(get_settings().shutdown_grace_seconds + WORKER_STOP_MARGIN_SECONDS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the REST API on HOST:PORT")
    worker = commands.add_parser("worker", help="train queued experiments")
    worker.add_argument("--device", choices=["auto", "cpu", "gpu"], help="default: WORKER_DEVICE")
    worker.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    commands.add_parser("up", help="migrate, then run the API and one worker until Ctrl-C")
    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    add_client_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # A client machine has no server settings to check, and needs none.
    if args.command in CLIENT_COMMANDS:
        raise SystemExit(run_client(args))

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        get_settings()
    except ValidationError as error:
        messages = "; ".join(
            (f"{e['loc'][0]}: ".upper() if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise SystemExit(f"invalid settings: {messages}") from None
    if args.command == "api":
        run_api()
    elif args.command == "worker":
        run_worker(args.device, args.drain)
    elif args.command == "up":
        run_all()
    else:
        migrate()


if __name__ == "__main__":
    main()
