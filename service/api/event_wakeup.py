"""Waking event streams when something they follow changes.

On PostgreSQL the triggers that write events (migration 0007) NOTIFY a channel; one LISTEN
connection per API process hears it and wakes just the streams of that experiment or study.
Everywhere, SQLite included, a stream also reads again after its poll interval, which covers
a notification lost while the listening connection was down.
"""

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "convlab_events"
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_LONGEST_SECONDS = 10.0


def experiment_key(experiment_id: int) -> str:
    return f"experiment:{experiment_id}"


def study_key(study_id: int) -> str:
    return f"study:{study_id}"


class EventWakeup:
    """Streams subscribe to keys; a notification sets the events of its experiment's and
    study's subscribers."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Event]] = defaultdict(set)

    @contextlib.contextmanager
    def subscription(self, keys: tuple[str, ...]) -> Iterator[asyncio.Event]:
        """An event set whenever one of `keys` may have changed; the caller clears it before
        reading."""
        woken = asyncio.Event()
        for key in keys:
            self._subscribers[key].add(woken)
        try:
            yield woken
        finally:
            for key in keys:
                self._subscribers[key].discard(woken)
                if not self._subscribers[key]:
                    del self._subscribers[key]

    def notify(self, payload: str) -> None:
        """Wake the subscribers of a "<experiment id>:<study id or empty>" payload."""
        experiment, _, study = payload.partition(":")
        keys = [experiment_key(int(experiment))] if experiment.isdigit() else []
        if study.isdigit():
            keys.append(study_key(int(study)))
        for key in keys:
            for woken in self._subscribers.get(key, ()):
                woken.set()

    def wake_all(self) -> None:
        for subscribers in self._subscribers.values():
            for woken in subscribers:
                woken.set()

    async def listen(self, database_url: str) -> None:
        """Hear PostgreSQL's notifications until cancelled (at once on other databases).

        A lost connection is opened again after a pause that doubles; meanwhile streams poll.
        """
        url = make_url(database_url)
        if url.get_backend_name() != "postgresql":
            return
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        delay = RECONNECT_FIRST_SECONDS
        while True:
            connected = time.monotonic()
            try:
                await self._listen_once(conninfo)
            except Exception as error:  # The listener must outlive any database trouble.
                logger.warning("event notifications lost (%s); reconnecting in %g s", error, delay)
            if time.monotonic() - connected >= RECONNECT_LONGEST_SECONDS:
                delay = RECONNECT_FIRST_SECONDS  # It held: this is a new outage.
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_LONGEST_SECONDS)

    async def _listen_once(self, conninfo: str) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as connection:
            await connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # What was notified while nobody listened is read now.
            self.wake_all()
            async for notification in connection.notifies():
                self.notify(notification.payload)
