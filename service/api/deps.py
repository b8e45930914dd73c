"""Request dependencies: settings, a database session committed at the boundary, the cache."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.inference import ModelCache
from service.settings import Settings


# Plain lookups are `async def` so FastAPI calls them inline rather than in a worker thread.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed when the handler returns without error."""
    with request.app.state.session_factory() as session, session.begin():
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for requests that only read: it never takes the database's write lock."""
    with request.app.state.read_session_factory() as session, session.begin():
        yield session


async def get_model_cache(request: Request) -> ModelCache:
    return request.app.state.model_cache


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
# scope="function": commit before the response goes out, so a client that reads right after
# a 202 finds what it created.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
