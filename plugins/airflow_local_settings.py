"""Airflow imports this module at the start of each of its processes (``airflow_local_settings``, found
on the import path: Airflow puts plugins/ there).

What it does: the processes that start task processes import ccxt and pymongo once, at their own
start-up. These are the scheduler with the LocalExecutor (its worker processes are forked from it at
start-up) and a Celery worker (its pool is forked from it). Each task process is then a fork that
already holds them, instead of importing them again.

Why: importing ccxt loads all of its ~110 exchange classes, 0.43 s of CPU on a quiet machine and
4-6 s at load 15. That was most of a market_backfill ingest task's start-up (bench figure 11b,
``setup_s``), and a minute ingest task paid it too. Every other process (API server, DAG processor,
triggerer, the CLI, and the tasks run in a fresh interpreter) skips this import.

If your deployment has its own airflow_local_settings.py, it shadows this one or is shadowed by it
(whichever comes first on the import path). Then copy the lines below into yours.
"""

from __future__ import annotations

import importlib
import sys

__all__: list[str] = []  # no cluster policies here: Airflow registers the names listed in __all__

PRELOADED = ("ccxt", "pymongo")


def launches_tasks(argv: list[str]) -> bool:
    """``airflow scheduler`` or ``airflow celery worker`` (options may come before the command)."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    return words[:1] == ["scheduler"] or words[:2] == ["celery", "worker"]


if launches_tasks(sys.argv):
    for _name in PRELOADED:
        importlib.import_module(_name)
