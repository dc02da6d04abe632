"""The CI check: a DDL change without a revision, or an edit of a released SQL file, fails here."""

from __future__ import annotations

import shutil

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from migration_support import RELEASE_SQL_DIR

from marketflow.migrations import (
    MIGRATIONS_DIR,
    SQL_DIR,
    VERSIONS_DIR,
    MigrationError,
    head_revision,
    read_released_sql,
    revision_files,
    sha256_of,
    sql_file_problems,
)


def test_every_sql_file_belongs_to_one_revision_with_its_released_checksum() -> None:
    assert sql_file_problems() == []


def test_the_check_fails_on_an_edited_released_file_and_on_a_file_without_revision(tmp_path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    with (sql_dir / "020_staging_ticker.sql").open("a") as f:
        f.write("ALTER TABLE staging.ticker ADD COLUMN mark numeric;\n")
    (sql_dir / "110_partition_ohlcv.sql").write_text("SELECT 1;\n")
    (sql_dir / "001_schemas.sql").unlink()

    problems = sql_file_problems(sql_dir)

    assert len(problems) == 3, problems
    assert problems[0] == f"revision 0001 applies 001_schemas.sql, which is not in {sql_dir}: restore it"
    assert problems[1].startswith("020_staging_ticker.sql changed after its release (revision 0001 recorded sha256 "
                                  "4dbe48de7e33...")
    assert "immutable: restore the file and make the change in a new revision with a new SQL file" in problems[1]
    assert problems[2].startswith("110_partition_ohlcv.sql is applied by no revision: a DDL change needs a revision")
    assert sha256_of(sql_dir / "110_partition_ohlcv.sql") in problems[2]


def test_a_released_file_that_changed_is_never_run(tmp_path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    checksum = revision_files()[0].sql_files["020_staging_ticker.sql"]
    assert read_released_sql("020_staging_ticker.sql", checksum, sql_dir).startswith("-- Ticker snapshots")
    (sql_dir / "020_staging_ticker.sql").write_text("DROP TABLE staging.ticker;\n")
    with pytest.raises(MigrationError, match=r"is not the released file .* new revision with a new file"):
        read_released_sql("020_staging_ticker.sql", checksum, sql_dir)


def test_the_baseline_applies_exactly_the_last_release() -> None:
    baseline = revision_files()[0]
    assert baseline.revision == "0001" and baseline.down_revision is None
    assert baseline.sql_files == {p.name: sha256_of(p) for p in sorted(RELEASE_SQL_DIR.glob("*.sql"))}
    assert list(baseline.sql_files) == sorted(baseline.sql_files)  # in the release applier's order


def test_the_fast_path_reads_the_same_history_as_alembic() -> None:
    """schema.upgrade's per-run check reads revision ids without importing Alembic; Alembic's own
    script directory is the oracle."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    history = [(s.revision, s.down_revision) for s in reversed(list(script.walk_revisions()))]
    assert [(s.revision, s.down_revision) for s in revision_files()] == history
    assert head_revision() == script.get_current_head()
    for ours in revision_files():
        assert ours.sql_files == script.get_revision(ours.revision).module.SQL_FILES
    # file names start with the revision id, so listing the folder lists the history in order
    assert all(s.path.name.startswith(f"{s.revision}_") for s in revision_files())
    assert len(revision_files()) == len(list(VERSIONS_DIR.glob("0*.py")))
