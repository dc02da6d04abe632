"""The benchmark report keeps the fields the issue asks every figure to have, in JSON and markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.context import _cpu_seconds, _trees
from bench.report import Figure, write_report


def test_report_has_every_field_and_flags_missed_targets(tmp_path: Path) -> None:
    figures = [
        Figure(figure="1a load | path", value=134_747, unit="rows/s", reference="plain COPY\n190,780 rows/s",
               reference_value=190_780, ratio=0.706, target=">= 50 %", met=True, detail={"rows": 1_000_000}),
        Figure(figure="3a peer", value=19.46, unit="s", reference="marketflow 68.8 s", ratio=0.283,
               target="ratio >= 1", met=False),
    ]
    json_path, md_path = write_report(figures, tmp_path, {"quick": True, "seconds": 60, "cpus": 2, "memory_gib": 24})

    rows = json.loads(json_path.read_text())
    assert [r["figure"] for r in rows] == ["1a load | path", "3a peer"]
    for row in rows:
        assert {"figure", "value", "unit", "reference", "ratio", "target", "met"} <= row.keys()
    assert rows[1]["met"] is False
    table = [line for line in md_path.read_text().splitlines() if line.startswith("| 1a") or line.startswith("| 3a")]
    assert len(table) == 2  # a newline or a pipe inside a cell must not break the table
    assert table[0].count(" | ") == 6 and "\\|" in table[0]
    assert table[1].endswith("| **no** |")


def test_memory_trees_count_a_shared_process_once() -> None:
    import os

    trees = _trees({"first": os.getpid(), "again": os.getpid()})
    assert trees["first"][0] == os.getpid()
    assert trees["again"] == []


def test_cpu_seconds_count_a_child_after_it_exits() -> None:
    """A phase's CPU includes processes that ended within it (forked workers, dbt, backends)."""
    import os
    import subprocess

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    child = subprocess.Popen([sys.executable, "-c", burn])
    before = _cpu_seconds(os.getpid())
    child.wait()  # reaped: its CPU time moves into ours
    after = _cpu_seconds(os.getpid())
    assert after - before >= 0.25
    assert _cpu_seconds(child.pid) == 0.0  # gone: nothing counted twice
