"""The FastAPI application: experiments, predictions, workers, health."""

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.api import (
    events,
    experiments,
    metrics,
    oip,
    predict,
    studies,
    tfserving,
    ui,
    workers,
)
from service.api.database import POOL_SIZE, WRITE_SLOTS, Database
from service.api.event_stream import StreamSlots
from service.api.event_wakeup import EventWakeup
from service.api.handlers import install_exception_handlers
from service.api.limits import BodyLimit
from service.api.security import CrossSiteRefusal, HostCheck, KeyRing
from service.api.shutdown import ShutdownWatch
from service.db import create_db_engine, create_session_factory
from service.heap import freeze_heap, refreeze_heap
from service.models import Worker
from service.registry import alive_condition
from service.schemas import HealthRead
from service.serving.model_server import ModelServer
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# The event loop shares the GIL with the threads doing database work; Python's default 5 ms
# turn let a few of them hold up every answer on the loop, /health included.
GIL_SWITCH_SECONDS = 0.001
# /health never waits on the database: it reports the last count, refreshed this often.
HEALTH_REFRESH_SECONDS = 2.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app whose lifespan owns the engine, the model server and the health watcher."""
    settings = settings or get_settings()
    settings.check_exposure()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(
            settings.database_url,
            sqlite_busy_timeout_seconds=settings.sqlite_busy_timeout_seconds,
            pool_size=POOL_SIZE,
            pool_timeout=settings.database_wait_seconds,
        )
        app.state.settings = settings
        app.state.keys = KeyRing(settings.all_api_keys())
        app.state.database = Database(
            create_session_factory(engine),
            create_session_factory(engine, read_only=True),
            wait_seconds=settings.database_wait_seconds,
            write_slots=WRITE_SLOTS.get(engine.dialect.name, 1),
        )
        # Counted once before serving, so a readiness probe never sees the start-up gap.
        await _count_workers(app, settings.lease_seconds)
        app.state.database_metrics = metrics.DatabaseMetricsCache()
        app.state.model_server = ModelServer(app.state.database, settings, after_load=refreeze_heap)
        stopping = asyncio.Event()
        watcher = asyncio.create_task(_watch_workers(app, settings.lease_seconds, stopping))
        listener = _start_event_streams(app, settings, engine.dialect.name)
        freeze_heap()
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        yield
        sys.setswitchinterval(switch_interval)
        # Not cancelled: a count in flight finishes and returns its connection first.
        stopping.set()
        await watcher
        app.state.shutdown.uninstall()
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        app.state.model_server.close()
        app.state.database.close()
        engine.dispose()

    app = FastAPIOffline(
        title="convlab",
        summary="Queue, train, compare and serve Keras CNN experiments on Fashion-MNIST.",
        lifespan=lifespan,
    )
    app.include_router(experiments.router)
    app.include_router(events.router)
    app.include_router(predict.router)
    app.include_router(oip.public)
    app.include_router(oip.router)
    app.include_router(tfserving.router)
    app.include_router(studies.router)
    app.include_router(workers.router)
    app.include_router(metrics.router)
    app.include_router(ui.router)
    install_exception_handlers(app)
    _add_middleware(app, settings)

    @app.get("/health", tags=["health"], response_model=HealthRead)
    async def health() -> HealthRead:
        """Liveness, without a key and without touching the database; `workers_alive` is the
        number of live workers a moment ago (null until first counted or while the database
        is unreachable)."""
        return HealthRead(status="ok", workers_alive=app.state.workers_alive)

    return app


def _start_event_streams(app: FastAPI, settings: Settings, dialect: str) -> asyncio.Task:
    """The state event streams share: their slots, their wake-up and its PostgreSQL listener
    (the returned task), and the news that the server is shutting down."""
    app.state.event_slots = StreamSlots(
        settings.max_event_streams, settings.max_event_streams_per_key
    )
    app.state.event_wakeup = EventWakeup()
    app.state.event_listener_active = dialect == "postgresql"
    app.state.shutdown = ShutdownWatch()
    app.state.shutdown.install()
    return asyncio.create_task(app.state.event_wakeup.listen(settings.database_url))


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # The last added runs first: metrics (so refused requests count too), hosts, then CORS,
    # then cross-site refusal, then body size.
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        upload=settings.max_upload_bytes,
    )
    app.add_middleware(CrossSiteRefusal, allowed_origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After", "Server-Timing"],
        )
    if "*" not in settings.allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(metrics.HttpMetrics)


async def _count_workers(app: FastAPI, lease_seconds: float) -> None:
    """Set `app.state.workers_alive`: the live workers, or None when the database fails."""

    def count(session: Session) -> int:
        condition = alive_condition(session, lease_seconds=lease_seconds)
        return session.scalar(select(func.count()).select_from(Worker).where(condition)) or 0

    try:
        app.state.workers_alive = await app.state.database.read(count)
    except Exception as error:  # Whatever the database says, /health must keep answering.
        logger.warning("cannot count live workers: %s", error)
        app.state.workers_alive = None


async def _watch_workers(app: FastAPI, lease_seconds: float, stopping: asyncio.Event) -> None:
    """Keep `app.state.workers_alive` fresh for the probes until `stopping` is set."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HEALTH_REFRESH_SECONDS)
        if stopping.is_set():
            return
        await _count_workers(app, lease_seconds)
