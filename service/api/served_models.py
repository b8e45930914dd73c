"""A serving protocol's model name and version, resolved to the experiment whose model answers.

Shared by the Open Inference Protocol (service/api/oip.py) and TensorFlow Serving
(service/api/tfserving.py) routes; the errors become their {"error": ...} bodies.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ChosenModel:
    """A request's model name, and the experiment whose model serves it now."""

    name: ModelName
    experiment_id: int


@contextmanager
def _model_errors() -> Iterator[None]:
    try:
        yield
    except (UnknownModelError, ExperimentNotFoundError, StudyNotFoundError) as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from None
    except ModelNotReadyError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, str(error)) from None


def _parsed(name: str, version: str | None) -> ModelName:
    with _model_errors():
        model_name = parse_model_name(name)
        check_version(model_name, version)
    return model_name


async def chosen_model(model_server: ModelServer, name: str, version: str | None) -> ChosenModel:
    """The experiment that serves `name` (at `version`), without loading its model."""
    model_name = _parsed(name, version)
    with _model_errors():
        experiment_id, _ = await model_server.chosen(model_name.target)
    return ChosenModel(model_name, experiment_id)


async def served_model(
    model_server: ModelServer, name: str, version: str | None
) -> tuple[ModelName, ServedModel]:
    """The model that serves `name` (at `version`), loaded, with its micro-batcher."""
    model_name = _parsed(name, version)
    with _model_errors():
        return model_name, await model_server.model_for(model_name.target)


def add_model_reads(
    router: APIRouter,
    path: str,
    describe: Describe,
    *,
    operation: str,
    summary: str,
    segment: Any = str,
) -> None:
    """GET `path` and its versioned form (`{name}` followed by `/versions/{version}`): 404 or
    409 unless the model can serve, else what `describe` says of it.

    `operation` names the two operations (`<operation>` and `<operation>_version`); `segment`
    is the type that documents a name or version in the path.
    """
    unversioned_path = path.replace("{versions}", "")
    versioned_path = path.replace("{versions}", "/versions/{version" + _convertor(path) + "}")

    async def unversioned(
        name: segment, model_server: ModelServerDep, settings: SettingsDep
    ) -> dict[str, Any]:
        await chosen_model(model_server, name, None)
        return describe(name, settings)

    async def versioned(
        name: segment, version: segment, model_server: ModelServerDep, settings: SettingsDep
    ) -> dict[str, Any]:
        await chosen_model(model_server, name, version)
        return describe(name, settings)

    router.add_api_route(
        unversioned_path, unversioned, methods=["GET"], name=operation, summary=summary
    )
    router.add_api_route(
        versioned_path,
        versioned,
        methods=["GET"],
        name=f"{operation}_version",
        summary=f"{summary}, for one version",
    )


def _convertor(path: str) -> str:
    """The path convertor the name has (`{name:segment}`), for the version to have too."""
    start = path.index("{name") + len("{name")
    return path[start : path.index("}", start)]
