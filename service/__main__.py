"""Command line: `python -m service api|worker|up|migrate`."""

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's C++ start-up chatter out.

from service.settings import UnsafeExposureError, get_settings
from service.threads import limit_backend_threads

ROOT = Path(__file__).resolve().parent.parent
# Beyond the worker's own grace period, before `up` kills a worker that will not stop.
WORKER_STOP_MARGIN_SECONDS = 15


def migrate() -> None:
    """Upgrade the database to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    settings = get_settings()
    config = Config(ROOT / "alembic.ini")
    config.attributes["database_url"] = settings.database_url
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
        # Several processes need the app by name: each builds its own from the environment.
        uvicorn.run("service.api:create_app", factory=True, workers=settings.api_workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


def run_worker(device: str | None, drain: bool) -> None:
    from service.db import create_db_engine, create_session_factory
    from service.queue import WorkerRefusedError
    from service.worker import Worker

    settings = get_settings()
    engine = create_db_engine(
        settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
    )
    worker = Worker(
        settings, create_session_factory(engine), device=device or settings.worker_device
    )
    worker.install_signal_handlers()
    try:
        worker.run(drain=drain)
    except WorkerRefusedError as error:
        raise SystemExit(f"worker refused: {error}") from None


def run_all() -> None:
    """Migrations, then one worker in a child process and the API in this one."""
    migrate()
    # A session of its own, so Ctrl-C reaches the worker once, as the SIGTERM sent below.
    worker = subprocess.Popen([sys.executable, "-m", "service", "worker"], start_new_session=True)
    try:
        run_api()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(get_settings().shutdown_grace_seconds + WORKER_STOP_MARGIN_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("api", help="serve the REST API on HOST:PORT")
    worker = commands.add_parser("worker", help="train queued experiments")
    worker.add_argument("--device", choices=["auto", "cpu", "gpu"], help="default: WORKER_DEVICE")
    worker.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    commands.add_parser("up", help="migrate, then run the API and one worker until Ctrl-C")
    commands.add_parser("migrate", help="upgrade the database schema to the newest revision")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
