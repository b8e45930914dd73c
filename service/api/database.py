"""Database work from request handlers: on worker threads, in bounded slots, short transactions.

Handlers are `async` and hand each unit of work to a thread here. The slots bound how many
threads wait on the database at once, so a burst queues on the event loop, where waiting is
cheap. SQLite takes
one writer at a time anyway: the API's writers queue here, in order, instead of convoying on
the file lock and its busy timeout.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction

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
    _threads: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._reads = asyncio.Semaphore(READ_SLOTS)
        self._writes = asyncio.Semaphore(self.write_slots)
        # Threads of its own: decoding and plotting on AnyIO's threads cannot hold it up.
        self._threads = ThreadPoolExecutor(READ_SLOTS + self.write_slots, "database")

    async def write(self, work: Callable[[Session], Result]) -> Result:
        """Run `work` in one transaction, committed before this returns."""
        return await self._run(self._writes, self.session_factory, work)

    async def read(self, work: Callable[[Session], Result]) -> Result:
        """Run `work` in a read-only transaction, which never takes SQLite's write lock."""
        return await self._run(self._reads, self.read_session_factory, work)

    async def _run(
        self,
        slots: asyncio.Semaphore,
        factory: sessionmaker[Session],
        work: Callable[[Session], Result],
    ) -> Result:
        try:
            await asyncio.wait_for(slots.acquire(), self.wait_seconds)
        except TimeoutError:
            raise DatabaseBusyError(
                f"no database connection came free within {self.wait_seconds:g} s"
            ) from None
        # The slot is given back when the transaction ends, not when the request does: a
        # request cancelled midway (the client left) must not let the next writer overlap it.
        future = asyncio.get_running_loop().run_in_executor(
            self._threads, _in_transaction, factory, work
        )
        future.add_done_callback(lambda _: slots.release())
        return await asyncio.shield(future)

    def close(self) -> None:
        """Wait for the transactions in flight, then stop the threads."""
        self._threads.shutdown()


def _in_transaction(factory: sessionmaker[Session], work: Callable[[Session], Result]) -> Result:
    with transaction(factory) as session:
        return work(session)
