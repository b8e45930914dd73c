"""Engine and session set-up, with the SQLite settings that let an API and workers share a file."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy import DateTime, Engine, create_engine, event, func
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

READ_ONLY_OPTION = "convlab_read_only"


def create_db_engine(
    database_url: str,
    *,
    sqlite_busy_timeout_seconds: float = 30.0,
    pool_size: int = 5,
    pool_timeout: float = 30.0,
) -> Engine:
    """Create an engine; for SQLite, turn on WAL, a busy timeout and BEGIN IMMEDIATE."""
    url = make_url(database_url)
    pool = {"pool_size": pool_size, "max_overflow": pool_size, "pool_timeout": pool_timeout}
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **pool)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        pool = {}  # SQLAlchemy keeps in-memory databases in a pool that takes no sizes.
    engine = create_engine(url, connect_args={"timeout": sqlite_busy_timeout_seconds}, **pool)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection, _record) -> None:
        # pysqlite's own transaction handling issues a deferred BEGIN late; turning it off
        # lets the "begin" hook below start every writing transaction as BEGIN IMMEDIATE, so
        # two writers queue on the busy timeout instead of failing with "database is locked".
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_seconds * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        # Readers take no lock in WAL mode; only writers need the write lock up front.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN DEFERRED" if read_only else "BEGIN IMMEDIATE")

    return engine


def create_session_factory(engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit.

    Read-only sessions on SQLite start a deferred transaction, so they never wait for, or
    hold up, a writer.
    """
    bind = engine.execution_options(**{READ_ONLY_OPTION: True}) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)


@contextmanager
def transaction(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short unit of work: commit on success, roll back on error."""
    with session_factory() as session, session.begin():
        yield session


def dialect_of(session: Session) -> str:
    """The name of the database behind a session: 'sqlite' or 'postgresql'."""
    return session.get_bind().dialect.name


def db_now(dialect_name: str, *, seconds: float = 0.0) -> ColumnElement:
    """The database's clock, shifted by `seconds`: leases never depend on a worker's clock."""
    if dialect_name == "sqlite":
        # Six fractional digits, as SQLAlchemy stores Python datetimes, so strings compare right.
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"{seconds:+.3f} seconds")
    now = func.clock_timestamp(type_=DateTime(timezone=True))
    return now + timedelta(seconds=seconds) if seconds else now
