"""Each revision's downgrade undoes exactly its upgrade: stepping down from head, the database equals,
object for object, a fresh database upgraded only as far; then up again to head."""

from __future__ import annotations

from migration_support import query

from marketflow import schema
from marketflow.migrations import revision_files


def test_down_to_base_one_revision_at_a_time_and_up_again(new_database, schema_dump) -> None:
    revisions = [s.revision for s in revision_files()]
    assert revisions[0] == "0001" and revisions[-1] == schema.head()
    # The oracle: each revision's schema as a fresh database upgraded only as far as it has it.
    expected = {}
    fresh = new_database()
    for target in ["base", *revisions]:
        schema.upgrade(fresh, target)
        expected[target] = schema_dump(fresh)
    assert len({tuple(dump) for dump in expected.values()}) == len(expected)  # every revision changes something

    dsn = new_database()
    assert schema.upgrade(dsn) == revisions
    assert schema_dump(dsn) == expected[schema.head()]
    below = ["base", *revisions[:-1]]
    for undone, target in zip(reversed(revisions), reversed(below), strict=True):
        assert schema.downgrade(dsn, "-1") == [f"-{undone}"]
        assert schema.current(dsn) == (None if target == "base" else target)
        assert schema_dump(dsn) == expected[target], f"downgrade of {undone} does not give back {target}"

    # base: none of the pipeline's schemas left; only the (empty) version table
    assert query(dsn, "SELECT nspname FROM pg_namespace WHERE nspname IN ('staging', 'ops', 'marts', "
                      "'marketflow_meta')") == [("marketflow_meta",)]
    assert schema.upgrade(dsn) == revisions
    assert schema_dump(dsn) == expected[schema.head()]
    assert query(dsn, "SELECT version_num FROM marketflow_meta.alembic_version") == [(schema.head(),)]
