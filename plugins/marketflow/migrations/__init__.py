"""Alembic migrations of the schemas the pipeline owns (staging, ops, the analyst role; dbt owns marts).

The SQL stays in include/sql/. A revision names the files it applies with their sha256
(``SQL_FILES``) and runs them with ``run_sql_files``; a released file is never edited again, the next
change is a new file in a new revision (README "Upgrades"). ``sql_file_problems`` is the CI check
that holds every file to exactly one revision and its recorded checksum.

Entry points: ``marketflow.schema.upgrade`` / ``downgrade`` / ``current`` (and ``marketflow db
upgrade``). This module only needs the standard library at import time: task processes read the
head revision from here on every run, and importing Alembic costs about half a second.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from marketflow import PROJECT_ROOT

MIGRATIONS_DIR = Path(__file__).resolve().parent
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
SQL_DIR = Path(os.environ.get("MARKETFLOW_SQL_DIR", PROJECT_ROOT / "include" / "sql"))

# Alembic's version table lives in a schema of its own: never the same table as Airflow's
# public.alembic_version when the warehouse shares a database with Airflow's metadata, and it
# survives a downgrade to base (which drops staging and ops).
VERSION_SCHEMA = "marketflow_meta"
VERSION_TABLE = "alembic_version"

# The same key the checksum applier of the previous release locked, so an old and a new release
# preparing storage at the same time during a deploy serialise too.
LOCK_KEY = 0x6D6B7466  # "mktf"

BASELINE = "0001"
# The checksum applier's bookkeeping table: a database that has it and no Alembic version was
# prepared by the release before migrations (see adopt_legacy_database).
LEGACY_TABLE = "ops.schema_migrations"

# Idempotent files that reconcile state outside the schema's objects, re-run by every storage
# preparation (the hourly prepare_storage) as the checksum applier did: the UTC time zone of analyst
# members added since, the pipeline role's jit default, SELECT on mart tables dbt re-created. They
# are released files like any other (applied once by their revision; never edited). When a later
# revision supersedes one, list the revision's file here instead.
REAPPLIED_EACH_PREPARE = ("040_roles.sql", "080_session_defaults.sql")


class MigrationError(RuntimeError):
    """The warehouse schema cannot be migrated as asked; the message says why and what to do."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_released_sql(name: str, checksum: str, sql_dir: Path | None = None) -> str:
    """The text of include/sql/<name>, refusing a file that is not the released one."""
    path = (sql_dir or SQL_DIR) / name
    if not path.exists():
        raise MigrationError(f"{path} is missing; a revision applies it. Fix: restore it from the release "
                             f"(git checkout -- include/sql/{name}) or set MARKETFLOW_SQL_DIR to include/sql")
    actual = sha256_of(path)
    if actual != checksum:
        raise MigrationError(
            f"{path} is not the released file (sha256 {actual[:12]}..., its revision recorded {checksum[:12]}...). "
            "Released SQL files are immutable: restore it (git checkout -- include/sql/" + name + ") and put "
            "the change in a new revision with a new file (README, 'Upgrades')")
    return path.read_text()


def run_sql_files(files: Mapping[str, str]) -> None:
    """Apply released include/sql files in order, inside the running migration (revision scripts).

    The text goes to the driver's cursor as it is, without parameters, so nothing parses ':' or '%'
    in it (psql would run it the same way); it runs in the migration's transaction."""
    from alembic import op

    driver_conn = op.get_bind().connection.driver_connection
    with driver_conn.cursor() as cur:
        for name, checksum in files.items():
            cur.execute(read_released_sql(name, checksum))


# -- the revision graph without Alembic (the per-run fast path) ----------------------------------


@dataclass(frozen=True)
class RevisionFile:
    path: Path
    revision: str
    down_revision: str | None
    sql_files: dict[str, str]


def _literal_assignments(path: Path) -> dict[str, object]:
    names = {"revision", "down_revision", "SQL_FILES"}
    found: dict[str, object] = {}
    for node in ast.parse(path.read_text(), str(path)).body:
        target = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in names:
            found[target.id] = ast.literal_eval(value)
    return found


def revision_files(versions_dir: Path = VERSIONS_DIR) -> list[RevisionFile]:
    """Every revision script's ids and SQL files, read as literals (nothing imported), oldest first."""
    scripts: list[RevisionFile] = []
    for path in sorted(versions_dir.glob("*.py")):
        if path.name == "__init__.py":
            continue
        values = _literal_assignments(path)
        if "revision" not in values:
            raise MigrationError(f"{path} has no literal `revision = \"...\"`; every revision script needs one")
        scripts.append(RevisionFile(path, str(values["revision"]), values.get("down_revision"),  # type: ignore[arg-type]
                                    dict(values.get("SQL_FILES", {}))))  # type: ignore[call-overload]
    return scripts


@cache
def head_revision(versions_dir: Path = VERSIONS_DIR) -> str:
    """The newest revision: the one no other revision builds on. One line of history is allowed."""
    scripts = revision_files(versions_dir)
    parents = {s.down_revision for s in scripts}
    heads = [s.revision for s in scripts if s.revision not in parents]
    if len(heads) != 1:
        raise MigrationError(f"the migrations in {versions_dir} have {len(heads)} heads "
                             f"({', '.join(heads) or 'none'}); each revision must build on the previous one "
                             "(set its down_revision)")
    return heads[0]


def sql_file_problems(sql_dir: Path = SQL_DIR, versions_dir: Path = VERSIONS_DIR) -> list[str]:
    """Every way include/sql and the revisions disagree, each with its fix (empty = consistent).

    Each .sql file is applied by exactly one revision, with the content that revision recorded: a
    DDL change without a revision, or an edit of a released file, is caught here (tests/migrations)."""
    problems: list[str] = []
    users: dict[str, list[str]] = {}
    for script in revision_files(versions_dir):
        for name, checksum in script.sql_files.items():
            users.setdefault(name, []).append(script.revision)
            path = sql_dir / name
            if not path.exists():
                problems.append(f"revision {script.revision} applies {name}, which is not in {sql_dir}: restore it")
            elif sha256_of(path) != checksum:
                problems.append(
                    f"{name} changed after its release (revision {script.revision} recorded sha256 {checksum[:12]}..., "
                    f"the file is now {sha256_of(path)[:12]}...). Released SQL files are immutable: restore the "
                    "file and make the change in a new revision with a new SQL file (README, 'Upgrades')")
    for name, revisions in sorted(users.items()):
        if len(revisions) > 1:
            problems.append(f"{name} is applied by {len(revisions)} revisions ({', '.join(revisions)}); "
                            "each file belongs to exactly one")
    for path in sorted(sql_dir.glob("*.sql")):
        if path.name not in users:
            problems.append(
                f"{path.name} is applied by no revision: a DDL change needs a revision. Add one (README, 'Upgrades') "
                f"with SQL_FILES = {{\"{path.name}\": \"{sha256_of(path)}\"}} and a downgrade")
    for name in REAPPLIED_EACH_PREPARE:
        if name not in users:
            problems.append(f"REAPPLIED_EACH_PREPARE names {name}, which no revision applies")
    return problems
