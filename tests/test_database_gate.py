"""The API's database slots: writers take turns, and a cancelled request keeps its slot."""

import asyncio
import time

import pytest

from service.api.database import Database, DatabaseBusyError


def log_work(log: list, name: str, seconds: float = 0.0):
    def work(_session) -> str:
        log.append((f"{name} start", time.monotonic()))
        time.sleep(seconds)
        log.append((f"{name} end", time.monotonic()))
        return name

    return work


def test_a_cancelled_write_keeps_its_slot_until_its_transaction_ends(session_factory):
    log: list = []

    async def scenario() -> None:
        database = Database(session_factory, session_factory, wait_seconds=5, write_slots=1)
        first = asyncio.create_task(database.write(log_work(log, "slow", 0.5)))
        await asyncio.sleep(0.1)
        first.cancel()  # What a server does when the client leaves.
        assert await database.write(log_work(log, "next")) == "next"
        database.close()

    asyncio.run(scenario())
    names = [name for name, _ in log]
    assert names == ["slow start", "slow end", "next start", "next end"]


def test_a_request_that_finds_no_slot_in_time_is_told_the_database_is_busy(session_factory):
    async def scenario() -> None:
        database = Database(session_factory, session_factory, wait_seconds=0.2, write_slots=1)
        holder = asyncio.create_task(database.write(log_work([], "holder", 1.0)))
        await asyncio.sleep(0.05)
        with pytest.raises(DatabaseBusyError, match=r"within 0\.2 s"):
            await database.write(log_work([], "late"))
        await holder
        database.close()

    asyncio.run(scenario())
