"""The body limit middleware on its own: a body must arrive whole, and in time."""

import asyncio

import pytest
from fastapi import HTTPException

from service.api import limits


def test_a_body_that_trickles_in_past_the_deadline_is_a_408(monkeypatch):
    monkeypatch.setattr(limits, "BODY_READ_SECONDS", 0.2)
    seen: list = []

    async def trickle() -> dict:
        await asyncio.sleep(0.15)
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def app(scope, receive, send) -> None:
        while True:
            seen.append(await receive())

    async def scenario() -> None:
        limited = limits.BodyLimit(app, default=1000, upload=1000)
        scope = {"type": "http", "path": "/experiments", "headers": []}
        with pytest.raises(HTTPException) as refused:
            await limited(scope, trickle, None)
        assert refused.value.status_code == 408

    asyncio.run(scenario())
    assert len(seen) == 1  # One chunk came in time; the second did not.
