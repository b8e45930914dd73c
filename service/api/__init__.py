"""The FastAPI application: experiments, predictions, health."""

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from service.api import experiments, predict, workers
from service.api.predict import ModelResolver
from service.batching import batch_sizes
from service.db import create_db_engine, create_session_factory
from service.inference import ModelCache, freeze_heap
from service.settings import Settings, get_settings

DATABASE_RETRY_AFTER_SECONDS = 2


def create_app(settings: Settings | None = None) -> FastAPI:
    """An app whose lifespan owns the engine and the model cache."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(
            settings.database_url, sqlite_busy_timeout_ms=settings.sqlite_busy_timeout_ms
        )
        app.state.settings = settings
        app.state.session_factory = create_session_factory(engine)
        app.state.read_session_factory = create_session_factory(engine, read_only=True)
        app.state.model_cache = ModelCache(
            settings.model_cache_size,
            settings.model_cache_bytes,
            warm_up_sizes=batch_sizes(settings.batch_max_images),
        )
        app.state.model_resolver = ModelResolver(settings.model_check_seconds)
        # One thread runs the models, one batch at a time; the compute inside a call uses the
        # backend's own threads (INFERENCE_THREADS).
        app.state.inference_executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        freeze_heap()
        yield
        app.state.inference_executor.shutdown()
        engine.dispose()

    app = FastAPI(
        title="convlab",
        summary="Queue, train, compare and serve Keras CNN experiments on Fashion-MNIST.",
        lifespan=lifespan,
    )
    app.include_router(experiments.router)
    app.include_router(predict.router)
    app.include_router(workers.router)

    @app.exception_handler(OperationalError)
    async def database_unavailable(_request: Request, error: OperationalError) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"the database is unavailable, retry shortly ({error.orig})"},
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app
