"""A serving protocol's model name and version, resolved to the experiment whose model answers.

Shared by the Open Inference Protocol (service/api/oip.py) and TensorFlow Serving
(service/api/tfserving.py) routes; the errors become their {"error": ...} bodies.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, HTTPException, status

from service.api.deps import ModelServerDep, SettingsDep
from service.serving.model_server import ModelServer, ServedModel
from service.serving.names import ModelName, UnknownModelError, check_version, parse_model_name
from service.serving.resolver import (
    ExperimentNotFoundError,
    ModelNotReadyError,
    StudyNotFoundError,
)
from service.settings import Settings

# What a model's read-only route answers, given the name it was asked by.
Describe = Callable[[str, Settings], dict[str, Any]]


@contextmanager
def _model_errors() -> Iterator[None]:
    try:
        yield
    except (UnknownModelError, ExperimentNotFoundError, StudyNotFoundError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except ModelNotReadyError as error:
        # KServe's answer for a model that is not ready, which its clients read as "not
        # ready" (/predict, which has no such clients, says 409).
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(error)) from None


def _parsed(name: str, version: str | None) -> ModelName:
    with _model_errors():
        model_name = parse_model_name(name)
        check_version(model_name, version)
    return model_name


async def check_model(model_server: ModelServer, name: str, version: str | None) -> None:
    """Refuse a name (at `version`) that no model can serve now; nothing is loaded."""
    model_name = _parsed(name, version)
    with _model_errors():
        await model_server.chosen(model_name.target)


async def served_model(model_server: ModelServer, name: str, version: str | None) -> ServedModel:
    """The model that serves `name` (at `version`), loaded, with its micro-batcher."""
    model_name = _parsed(name, version)
    with _model_errors():
        return await model_server.model_for(model_name.target)


def add_model_reads(
    router: APIRouter,
    path: str,
    describe: Describe,
    *,
    operation: str,
    summary: str,
    convertor: str = "",
    segment: Any = str,
) -> None:
    """GET `path` and its versioned form: 404 or 503 unless the model can serve, else what
    `describe` says of it.

    `path` holds `{name}` and `{versions}`, which the versioned form fills with
    `/versions/{version}`; both take `convertor` (":segment") and are documented as `segment`.
    The operations' ids are `operation` and `<operation>_version`.
    """
    name = "{name" + convertor + "}"
    version = "/versions/{version" + convertor + "}"

    async def unversioned(
        name: segment, model_server: ModelServerDep, settings: SettingsDep
    ) -> dict[str, Any]:
        await check_model(model_server, name, None)
        return describe(name, settings)

    async def versioned(
        name: segment, version: segment, model_server: ModelServerDep, settings: SettingsDep
    ) -> dict[str, Any]:
        await check_model(model_server, name, version)
        return describe(name, settings)

    router.add_api_route(
        path.format(name=name, versions=""),
        unversioned,
        methods=["GET"],
        operation_id=operation,
        summary=summary,
    )
    router.add_api_route(
        path.format(name=name, versions=version),
        versioned,
        methods=["GET"],
        operation_id=f"{operation}_version",
        summary=f"{summary}, for one version",
    )
