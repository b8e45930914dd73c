"""Database work from request handlers: on worker threads, in bounded slots, short transactions.

Handlers are `async` and hand each unit of work to a thread here. The slots bound how many
threads wait on the database at once, so a burst queues on the event loop, where waiting is
cheap, and not on AnyIO's 40 threads, which also answer every other request. SQLite takes
one writer at a time anyway: the API's writers queue here, in order, instead of convoying on
the file lock and its busy timeout.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

Result = TypeVar("Result")

READ_SLOTS = 4
# PostgreSQL serves concurrent writers; SQLite serializes them.
WRITE_SLOTS = {"sqlite": 1, "postgresql": 2}
POOL_SIZE = READ_SLOTS + max(WRITE_SLOTS.values())


class DatabaseBusyError(RuntimeError):
    """No database slot came free within DATABASE_WAIT_SECONDS."""


@dataclass
class Database:
    """The API's access to the database: `await database.write(work)` runs `work(session)`."""

    session_factory: sessionmaker[Session]
    read_session_factory: sessionmaker[Session]
    wait_seconds: float
    write_slots: int
    _reads: asyncio.Semaphore = field(init=False)
    _writes: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._reads = asyncio.Semaphore(READ_SLOTS)
        self._writes = asyncio.Semaphore(self.write_slots)

    async def write(self, work: Callable[[Session], Result]) -> Result:
        """Run `work` in one transaction, committed before this returns."""
        async with self._slot(self._writes):
            return await run_in_threadpool(_in_transaction, self.session_factory, work)

    async def read(self, work: Callable[[Session], Result]) -> Result:
        """Run `work` in a read-only transaction, which never takes SQLite's write lock."""
        async with self._slot(self._reads):
            return await run_in_threadpool(_in_transaction, self.read_session_factory, work)

    @asynccontextmanager
    async def _slot(self, slots: asyncio.Semaphore) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(slots.acquire(), self.wait_seconds)
        except TimeoutError:
            raise DatabaseBusyError(
                f"no database connection came free within {self.wait_seconds:g} s"
            ) from None
        try:
            yield
        finally:
            slots.release()


def _in_transaction(factory: sessionmaker[Session], work: Callable[[Session], Result]) -> Result:
    with factory() as session, session.begin():
        return work(session)
