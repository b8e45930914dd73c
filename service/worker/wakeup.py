"""How an idle worker waits for work: woken at once by PostgreSQL, by polling elsewhere."""

from threading import Event

from sqlalchemy.engine import make_url

from service.queue import NOTIFY_CHANNEL


class Wakeup:
    """Idle waiting: PostgreSQL's LISTEN/NOTIFY wakes the worker at once; polling is the
    fallback on every database."""

    def __init__(self, database_url: str, stop: Event) -> None:
        url = make_url(database_url)
        self.stop = stop
        self.conninfo = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url.get_backend_name() == "postgresql"
            else None
        )
        self.connection = None

    def wait(self, timeout: float) -> None:
        """Until an experiment is queued, `timeout` passes, or the worker is stopping."""
        if self.conninfo is None or self.stop.is_set():
            self.stop.wait(timeout)
            return
        import psycopg

        try:
            if self.connection is None:
                self.connection = psycopg.connect(self.conninfo, autocommit=True)
                self.connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
            for _ in self.connection.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            self.close()
            self.stop.wait(timeout)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
