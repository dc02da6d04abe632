"""Two processes preparing storage at once: one migrates, the other waits on the advisory lock and
finds the database at head. One clean head, the same schema as a single upgrade."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from migration_support import query

from marketflow import PROJECT_ROOT, schema
from marketflow.migrations import revision_files

# Each worker imports everything, says so, and calls upgrade when told: both reach the database together.
WORKER = """
import json, sys
from marketflow import schema
import alembic.command, sqlalchemy
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(schema.upgrade(sys.argv[1])), flush=True)
"""


def _upgrade_at_once(dsn: str, processes: int = 2) -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "plugins"),
                                                        os.environ.get("PYTHONPATH", "")])}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, dsn], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    for worker in workers:
        assert worker.stdout.readline().strip() == "ready", worker.communicate(timeout=60)[1][-3000:]
    for worker in workers:
        worker.stdin.write("go\n")
        worker.stdin.flush()
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_upgrading_an_empty_database_leave_one_clean_head(new_database, schema_dump) -> None:
    dsn = new_database()
    results = _upgrade_at_once(dsn)

    every = [r.revision for r in revision_files()]
    assert every[:2] == ["0001", "0002"]
    assert sorted(results) == [[], every]  # exactly one migrated
    assert query(dsn, "SELECT version_num FROM marketflow_meta.alembic_version") == [(schema.head(),)]
    single = new_database()
    schema.upgrade(single)
    assert schema_dump(dsn) == schema_dump(single)
