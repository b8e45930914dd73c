"""GET /metrics in Prometheus's text format, and the middleware that times every request."""

import asyncio
import time
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import DatabaseDep, SettingsDep
from service.api.errors import error_responses
from service.api.security import authenticate
from service.database_metrics import database_metrics
from service.metrics import HTTP_REQUESTS, HTTP_SECONDS, process_metrics

# Prometheus scrapes every 15 s or so; many scrapers (or a refreshing page) share one read.
DATABASE_READ_SECONDS = 1.0
# Requests that matched no route share one label: a scan of random paths must not create
# a time series per path.
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

router = APIRouter(
    tags=["metrics"], dependencies=[Depends(authenticate)], responses=error_responses(401, 503)
)


@dataclass
class DatabaseMetricsCache:
    """The last read of the database's metrics, reused for DATABASE_READ_SECONDS."""

    metrics: list[Metric] = field(default_factory=list)
    read_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Families:
    """A collector that hands over metric families read earlier."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request, database: DatabaseDep, settings: SettingsDep) -> Response:
    """HTTP, model and cache metrics of the API processes, and the queue, workers, epochs and
    attempts as the database holds them (read at most once a second)."""
    cache: DatabaseMetricsCache = request.app.state.database_metrics
    if cache.lock.locked() and cache.metrics:
        # A read is under way (or waiting for a slot): the last one answers meanwhile, so
        # scrapes do not queue up behind a slow or absent database.
        return _exposition(cache.metrics)
    async with cache.lock:
        if time.monotonic() - cache.read_at >= DATABASE_READ_SECONDS:
            cache.metrics = await database.read(
                lambda session: database_metrics(session, lease_seconds=settings.lease_seconds)
            )
            cache.read_at = time.monotonic()
        families = cache.metrics
    return _exposition(families)


def _exposition(database_families: list[Metric]) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(database_families))
    body = process_metrics() + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


class HttpMetrics:
    """Counts and times each request by method, route template and status (pure ASGI, so it
    adds microseconds, not a task, to /predict)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # What the client gets when the app raises before answering.

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_SECONDS.labels(method, template).observe(time.perf_counter() - started)
