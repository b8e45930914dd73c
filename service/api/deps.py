"""Request dependencies: settings, the database gate, the model server."""

from typing import Annotated

from fastapi import Depends, Request

from service.api.database import Database
from service.serving.model_server import ModelServer
from service.settings import Settings


# Plain lookups are `async def` so FastAPI calls them inline rather than in a worker thread.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_model_server(request: Request) -> ModelServer:
    return request.app.state.model_server


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ModelServerDep = Annotated[ModelServer, Depends(get_model_server)]
