"""events: status changes and finished epochs, written by triggers, for the event streams

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 07:30:00

Triggers rather than application code write the events: every path that changes a status (a
bulk requeue of expired leases, a study's cancel, a claim) or records an epoch emits one in the
same transaction, including paths written later. On PostgreSQL they also NOTIFY the API
processes, which wake their streams at once.

SQLite drops a table's triggers when a batch migration rebuilds the table: a later migration
that rebuilds `experiments` or `epoch_metrics` must create them again (the event tests fail
on SQLite otherwise).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Read by service/api/event_wakeup.py; the payload is "<experiment id>:<study id or empty>".
NOTIFY_CHANNEL = "convlab_events"


def _status_json(function: str, row: str, now: str) -> str:
    return (
        f"{function}('experiment_id', {row}.id, 'status', {row}.status, "
        f"'attempt', {row}.attempts, 'at', {now})"
    )


def _epoch_json(function: str, row: str) -> str:
    # The epoch's numbers are read from its row when sent (service/events.py): SQLite's JSON
    # would keep 15 of a float's 17 digits, and the row is never changed once written.
    return f"{function}('experiment_id', {row}.experiment_id, 'epoch', {row}.epoch)"


SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


def _sqlite_upgrade() -> None:
    status_insert = (
        "INSERT INTO events (xid, experiment_id, kind, data, created_at) "
        f"VALUES (0, NEW.id, 'status', {_status_json('json_object', 'NEW', SQLITE_NOW)}, "
        f"{SQLITE_NOW});"
    )
    op.execute(
        "CREATE TRIGGER experiments_status_inserted AFTER INSERT ON experiments "
        f"BEGIN {status_insert} END"
    )
    op.execute(
        "CREATE TRIGGER experiments_status_changed AFTER UPDATE OF status ON experiments "
        f"WHEN OLD.status IS NOT NEW.status BEGIN {status_insert} END"
    )
    op.execute(
        "CREATE TRIGGER epoch_metrics_recorded AFTER INSERT ON epoch_metrics BEGIN "
        "INSERT INTO events (xid, experiment_id, kind, data, created_at) "
        f"VALUES (0, NEW.experiment_id, 'epoch', {_epoch_json('json_object', 'NEW')}, "
        f"{SQLITE_NOW}); END"
    )


# The transaction id orders events by commit on PostgreSQL; see service/events.py.
PG_XID = "pg_current_xact_id()::text::bigint"
PG_NOTIFY = f"pg_notify('{NOTIFY_CHANNEL}', NEW.id || ':' || coalesce(NEW.study_id::text, ''))"


def _postgresql_upgrade() -> None:
    op.execute(f"""
        CREATE FUNCTION convlab_status_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO events (xid, experiment_id, kind, data, created_at)
            VALUES ({PG_XID}, NEW.id, 'status',
                    {_status_json("json_build_object", "NEW", "clock_timestamp()")},
                    clock_timestamp());
            PERFORM {PG_NOTIFY};
            RETURN NULL;
        END $$""")
    op.execute(f"""
        CREATE FUNCTION convlab_epoch_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO events (xid, experiment_id, kind, data, created_at)
            VALUES ({PG_XID}, NEW.experiment_id, 'epoch', {_epoch_json("json_build_object", "NEW")},
                    clock_timestamp());
            PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.experiment_id || ':' || coalesce(
                (SELECT study_id::text FROM experiments WHERE id = NEW.experiment_id), ''));
            RETURN NULL;
        END $$""")
    # Progress is not stored as events (it changes every heartbeat), but streams show it:
    # they are woken to read it from the experiment row.
    op.execute(f"""
        CREATE FUNCTION convlab_progress_notice() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM {PG_NOTIFY};
            RETURN NULL;
        END $$""")
    op.execute(
        "CREATE TRIGGER experiments_status_inserted AFTER INSERT ON experiments "
        "FOR EACH ROW EXECUTE FUNCTION convlab_status_event()"
    )
    op.execute(
        "CREATE TRIGGER experiments_status_changed AFTER UPDATE OF status ON experiments "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION convlab_status_event()"
    )
    op.execute(
        "CREATE TRIGGER experiments_progressed AFTER UPDATE OF progress_epoch, progress_step "
        "ON experiments FOR EACH ROW WHEN (OLD.progress_epoch IS DISTINCT FROM "
        "NEW.progress_epoch OR OLD.progress_step IS DISTINCT FROM NEW.progress_step) "
        "EXECUTE FUNCTION convlab_progress_notice()"
    )
    op.execute(
        "CREATE TRIGGER epoch_metrics_recorded AFTER INSERT ON epoch_metrics "
        "FOR EACH ROW EXECUTE FUNCTION convlab_epoch_event()"
    )


def _backfill(json_object: str, now: str) -> None:
    """Experiments stored before this revision get their present status and their epochs as
    history, so a stream opened on one replays what is known and then `done`."""
    op.execute(
        "INSERT INTO events (xid, experiment_id, kind, data, created_at) "
        f"SELECT 0, e.id, 'status', {_status_json(json_object, 'e', now)}, {now} "
        "FROM experiments e ORDER BY e.id"
    )
    op.execute(
        "INSERT INTO events (xid, experiment_id, kind, data, created_at) "
        f"SELECT 0, m.experiment_id, 'epoch', {_epoch_json(json_object, 'm')}, m.finished_at "
        "FROM epoch_metrics m ORDER BY m.experiment_id, m.epoch"
    )


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("xid", sa.BigInteger(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_events_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(
        "ix_events_experiment_id_xid_id", "events", ["experiment_id", "xid", "id"], unique=False
    )
    if op.get_bind().dialect.name == "postgresql":
        _backfill("json_build_object", "clock_timestamp()")
        _postgresql_upgrade()
    else:
        _backfill("json_object", SQLITE_NOW)
        _sqlite_upgrade()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in (
            ("experiments_status_inserted", "experiments"),
            ("experiments_status_changed", "experiments"),
            ("experiments_progressed", "experiments"),
            ("epoch_metrics_recorded", "epoch_metrics"),
        ):
            op.execute(f"DROP TRIGGER {trigger} ON {table}")
        for function in ("convlab_status_event", "convlab_epoch_event", "convlab_progress_notice"):
            op.execute(f"DROP FUNCTION {function}()")
    else:
        for trigger in (
            "experiments_status_inserted",
            "experiments_status_changed",
            "epoch_metrics_recorded",
        ):
            op.execute(f"DROP TRIGGER {trigger}")
    op.drop_index("ix_events_experiment_id_xid_id", table_name="events")
    op.drop_table("events")
