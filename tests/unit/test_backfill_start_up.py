"""What market_backfill's tasks cost before their work: the plan without ccxt, the ingest at a lower CPU priority."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_planning_a_backfill_does_not_import_ccxt() -> None:
    """The plan task imports marketflow.planning; ccxt (0.4 s quiet, 4-10 s at load 20) stays out of it."""
    code = ("import sys, marketflow.planning as p; assert p.plan_backfill and p.plan_window; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ccxt'))")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_the_ingest_task_lowers_its_cpu_priority_and_never_raises_it() -> None:
    """In a child process (niceness cannot be lowered again): 0 -> 10, then a request for 5 keeps 10;
    /proc (not the helper's return value) is the oracle."""
    code = ("import os; from marketflow.tasks.backfill import lower_cpu_priority as low; "
            "a = low(10); b = low(5); print(a, b, open('/proc/self/stat').read().rsplit(')', 1)[1].split()[16])")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120, check=True)
    base = os.nice(0)
    expected = max(base, 10)
    assert out.stdout.split() == [str(expected), str(expected), str(expected)]


def test_only_the_processes_that_fork_task_processes_preload_ccxt() -> None:
    """plugins/airflow_local_settings.py, which Airflow imports at every process start: the scheduler and a
    Celery worker import ccxt (their forked task processes then start with it), nothing else does.
    sys.modules of a fresh interpreter with each command line is the oracle."""
    code = ("import sys; sys.argv = {argv!r}; import airflow_local_settings; "
            "print('ccxt' in sys.modules, 'pymongo' in sys.modules)")
    for argv, preloaded in ((["airflow", "scheduler"], True), (["airflow", "celery", "worker", "-q", "x"], True),
                            (["airflow", "--verbose", "scheduler"], True), (["airflow", "api-server"], False),
                            (["airflow", "dag-processor"], False), (["airflow", "dags", "trigger", "x"], False),
                            (["airflow", "standalone"], False)):
        out = subprocess.run([sys.executable, "-c", code.format(argv=argv)], env=ENV, capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout.split() == [str(preloaded)] * 2, argv
