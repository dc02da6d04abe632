"""What a running task reads from Airflow: its attempt, its run's window, its time budget."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow.sdk import get_current_context

if TYPE_CHECKING:
    from marketflow.config import MarketflowConfig
    from marketflow.pipeline import Attempt
    from marketflow.timeframes import Window

# A task stops starting new work this long before its execution_timeout, so it can finish what it
# started and report per market instead of being killed mid-write.
TIME_MARGIN = 0.15


def current_attempt() -> tuple[Attempt, dict[str, Any]]:
    """The running task instance as the pipeline records it (ops tables, raw log), and its context."""
    from marketflow.pipeline import Attempt

    ctx = get_current_context()
    ti = ctx["ti"]
    return Attempt(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1,
                   ti.try_number or 1), ctx


def run_window(ctx: dict[str, Any], config: MarketflowConfig, timeframe: str) -> tuple[Window, dict[str, Any]]:
    """The run's window: its data interval, or dag_run.conf start/end; and the conf itself."""
    from marketflow.pipeline import plan_window

    conf = ctx["dag_run"].conf or {}
    return plan_window(timeframe, ctx.get("data_interval_start"), ctx.get("data_interval_end"), conf,
                       config.overlap_minutes), conf


def time_budget(timeout_s: int) -> float:
    """time.monotonic() by which a task stops starting new work (see TIME_MARGIN)."""
    return time.monotonic() + timeout_s * (1 - TIME_MARGIN)
