"""Alembic environment of the warehouse migrations (run by marketflow.schema, which passes the connection).

One transaction: the advisory lock first (a second process preparing storage waits here, then finds
the database at head and does nothing), then the version table's schema, the adoption of a database
the previous release's checksum applier prepared, the refusal of a revision this release does not
know, and the revisions themselves. Everything commits together or not at all.
"""

from __future__ import annotations

from alembic import context
from alembic.script import ScriptDirectory

from marketflow.migrations import (
    BASELINE,
    LEGACY_TABLE,
    LOCK_KEY,
    VERSION_SCHEMA,
    VERSION_TABLE,
    MigrationError,
)

config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise MigrationError("run the warehouse migrations through marketflow.schema.upgrade / downgrade "
                         "(`marketflow db upgrade`), which pass the connection; offline --sql mode is not supported")


def _known_or_fail(script: ScriptDirectory, heads: tuple[str, ...]) -> None:
    newest = script.get_current_head()
    for rev in heads:
        if rev not in {s.revision for s in script.walk_revisions()}:
            raise MigrationError(
                f"the warehouse schema is at revision {rev!r}, which this marketflow release does not know "
                f"(its newest is {newest!r}): a newer release upgraded this database. Fix: deploy that release "
                f"again, or with it run `marketflow db downgrade {newest}` before deploying this one")


def _adopt_legacy(script: ScriptDirectory) -> None:
    """A database from the release before migrations: its checksum applier recorded every include/sql
    file it ran in ops.schema_migrations. When those are exactly the baseline's files, the database
    has the baseline's schema: stamp it at the baseline, and the later revisions upgrade it."""
    migration = context.get_context()
    if migration.get_current_heads():
        return
    exists = connection.exec_driver_sql(f"SELECT to_regclass('{LEGACY_TABLE}') IS NOT NULL").scalar()
    if not exists:
        return  # a new database: the baseline creates everything
    applied = dict(connection.exec_driver_sql(f"SELECT filename, checksum FROM {LEGACY_TABLE}").all())
    expected = script.get_revision(BASELINE).module.SQL_FILES
    if applied != expected:
        differ = sorted(name for name in applied.keys() | expected.keys() if applied.get(name) != expected.get(name))
        raise MigrationError(
            f"this database was prepared by a marketflow release before migrations, but not by the last one: "
            f"{LEGACY_TABLE} differs from the baseline revision {BASELINE} in {', '.join(differ)}. Fix: run the "
            "last release with the checksum applier (commit 3741f8b) once (`python -m marketflow.cli apply-ddl`), "
            "then this release")
    migration.stamp(script, BASELINE)
    context.config.attributes["adopted_legacy"] = True


def run_migrations_online() -> None:
    script = ScriptDirectory.from_config(config)
    with connection.begin():
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")
        connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}")
        context.configure(
            connection=connection,
            version_table=VERSION_TABLE,
            version_table_schema=VERSION_SCHEMA,
            transactional_ddl=True,
            on_version_apply=config.attributes.get("on_version_apply", []),
        )
        _known_or_fail(script, context.get_context().get_current_heads())
        _adopt_legacy(script)
        context.run_migrations()


run_migrations_online()
