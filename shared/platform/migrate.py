"""Run Alembic migrations programmatically (used by `tally db upgrade`, /readyz and tests)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, ForeignKeyConstraint, text

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent
VERSION_TABLE_EXISTS = text("SELECT to_regclass('alembic_version') IS NOT NULL")
CURRENT_VERSION = text("SELECT version_num FROM alembic_version")


# The ledger's monthly partitions (migration 0011) are made by ledger_entries_partition(),
# not by migrations, and so are the foreign keys that PostgreSQL adds on each for a
# foreign key to the partitioned table: autogenerate leaves them out.
PARTITION = re.compile(r"ledger_entries_(initial|\d{4}_\d{2})$")


def include_object(
    item: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's filter: everything but the ledger's partitions and their foreign keys."""
    if type_ == "table":
        return not (name and PARTITION.match(name))
    if type_ == "foreign_key_constraint" and isinstance(item, ForeignKeyConstraint):
        return not PARTITION.match(item.referred_table.name)
    return True


def alembic_config(database_url: str) -> Config:
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@cache
def head_revision() -> str | None:
    """The newest revision of the code; read from the scripts once, since they do not change
    while the process runs (and /readyz asks on every probe)."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The database's revision, None before the first migration.

    Plain SQL rather than Alembic's MigrationContext, which logs two lines each time:
    /readyz asks on every probe.
    """
    with engine.connect() as connection:
        if not connection.scalar(VERSION_TABLE_EXISTS):
            return None
        revision: str | None = connection.execute(CURRENT_VERSION).scalar_one_or_none()
        return revision
