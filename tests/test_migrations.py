"""Alembic owns the schema: the migrations build exactly what the ORM models describe."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from service.models import Base
from tests.conftest import ROOT


def test_migrations_produce_exactly_the_orm_schema(database_url):
    engine = create_engine(database_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_downgrade_to_base_removes_every_table(database_url):
    from alembic import command
    from alembic.config import Config

    config = Config(ROOT / "alembic.ini")
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    command.downgrade(config, "base")
    engine = create_engine(database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()


def test_status_check_admits_pruned_and_refuses_unknown_statuses(database_url):
    """0006 widened the status CHECK to `pruned`; it must still refuse what no status is."""
    engine = create_engine(database_url)
    insert = (
        "INSERT INTO experiments (status, spec, summary, requested_device, created_at, attempts,"
        " stopped_early) VALUES (:status, '{}', '{}', 'cpu', CURRENT_TIMESTAMP, 0, false)"
    )
    with engine.begin() as connection:
        connection.execute(text(insert), {"status": "pruned"})
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(text(insert), {"status": "exploded"})
    engine.dispose()
