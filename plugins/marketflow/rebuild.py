"""Rebuild one slice of the marts (``marketflow rebuild``): one market, one time range, or both,
without touching any other row.

Two steps:

1. In one transaction, every row of the incremental relations whose period lies wholly inside the
   slice is deleted (a 1m candle of the range, an hour or day of the data-quality tables, a rollup
   bucket the range holds whole). A bucket only partly inside (a week around a one-day range) is
   kept and recomputed in step 2 from all its parts.
2. ``dbt run`` of the incremental models with var ``rebuild`` = the slice (dbt/macros/rebuild_slice.sql):
   each model reads the slice from its source instead of the rows written since its watermark and
   writes only the slice's rows; indicator rows after the range are merged only where a value
   changed (their EMA / RSI state runs through the range). Views and the tables every hourly run
   rebuilds whole (int_markets, data_quality_gaps) are left to the next hourly run.

Idempotent: run it again after a failure; until step 2 succeeds the slice is missing from the marts.
Run it while the hourly DAG's dbt build is not running (both write the same tables).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from marketflow import PROJECT_ROOT
from marketflow.logs import get_logger

log = get_logger(__name__)

MINUTE = timedelta(minutes=1)
# Every incremental relation: (relation, time column, width of a row's period, row filter).
SLICED_RELATIONS: list[tuple[str, str, str, str]] = [
    # ohlcv_1m's storage, with the 1m indicators (ohlcv_1m and indicators_1m are views of it)
    ("marts.candles_1m", "open_time", "1 minute", "true"),
    # the rollups, each with its indicators (indicators_5m ... indicators_1w are views of them)
    *((f"marts.ohlcv_{tf}", "open_time", width, "true")
      for tf, width in (("5m", "5 minutes"), ("15m", "15 minutes"), ("1h", "1 hour"), ("1d", "1 day"),
                        ("1w", "7 days"))),
    ("dbt_intermediate.int_ohlcv_1m_days", "day", "1 day", "true"),
    ("dbt_intermediate.int_dq_candle_hours_1m", "period_start", "1 hour", "true"),
    ("dbt_intermediate.int_dq_hourly_1m", "period_start", "1 hour", "true"),
    ("marts.data_quality_summary", "period_start", "1 hour", "grain = 'hour'"),
    ("marts.data_quality_summary", "period_start", "1 day", "grain = 'day'"),
]
DBT_SELECT = "config.materialized:incremental"


@dataclass(frozen=True)
class Slice:
    exchange: str | None = None
    symbol: str | None = None
    start: datetime | None = None  # inclusive, whole minutes
    end: datetime | None = None  # exclusive, whole minutes

    @classmethod
    def parse(cls, exchange: str | None, symbol: str | None, start: str | None, end: str | None) -> Slice:
        """Validated; start floored and end raised to whole minutes (a candle is in or out whole)."""
        if not any((exchange, symbol, start, end)):
            raise ValueError("give a market (--exchange and/or --symbol) and/or a range (--start/--end); "
                             "a rebuild of everything is `dbt build --full-refresh`")
        lo, hi = _instant(start, "--start"), _instant(end, "--end")
        if lo is not None:
            lo = lo.replace(second=0, microsecond=0)
        if hi is not None and (hi.second or hi.microsecond):
            hi = hi.replace(second=0, microsecond=0) + MINUTE
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"--start {start} is not before --end {end}")
        return cls(exchange or None, symbol or None, lo, hi)

    def dbt_var(self) -> dict[str, str | None]:
        return {"exchange": self.exchange, "symbol": self.symbol,
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None}

    def describe(self) -> str:
        market = " ".join(p for p in (self.exchange, self.symbol) if p) or "every market"
        return (f"{market}, {self.start.isoformat() if self.start else 'the first candle'} to "
                f"{self.end.isoformat() if self.end else 'the last'}")


def _instant(text: str | None, flag: str) -> datetime | None:
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{flag} {text!r} is not an ISO-8601 time, e.g. 2025-11-24T00:00:00Z") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# Relations naming the market by staging's market_id instead of exchange and symbol.
BY_MARKET_ID = frozenset({"marts.candles_1m"})


def _market_filter(relation: str) -> str:
    """SQL: the row is of the slice's market (the parameters exchange, symbol; NULL = any)."""
    names = ("(%(exchange)s::text is null or {p}exchange = %(exchange)s)"
             " and (%(symbol)s::text is null or {p}symbol = %(symbol)s)")
    if relation in BY_MARKET_ID:
        # one lookup of the slice's 1m series; the (market_id, open_time) key then bounds the delete
        return ("market_id = any(array(select series.market_id from staging.market as series"
                " where series.timeframe = '1m' and " + names.format(p="series.") + "))")
    return names.format(p="")


def delete_slice(conn, part: Slice) -> dict[str, int]:
    """Step 1, in one transaction: rows per relation deleted. Relations not built yet are skipped."""
    deleted: dict[str, int] = {}
    params = {"exchange": part.exchange, "symbol": part.symbol, "start": part.start, "end": part.end}
    with conn.cursor() as cur:
        for relation, column, width, row_filter in SLICED_RELATIONS:
            cur.execute("select to_regclass(%s)", (relation,))
            if cur.fetchone()[0] is None:
                continue
            # whole periods inside [start, end); a NULL bound is open (casts keep the index usable)
            cur.execute(
                f"delete from {relation} where {row_filter}"
                f" and {_market_filter(relation)}"
                f" and (%(start)s::timestamptz is null or {column} >= %(start)s::timestamptz)"
                f" and (%(end)s::timestamptz is null or {column} + interval '{width}' <= %(end)s::timestamptz)",
                params)
            key = relation if row_filter == "true" else f"{relation} ({row_filter})"
            deleted[key] = cur.rowcount
    conn.commit()
    return deleted


def dbt_env() -> dict[str, str]:
    """dbt/profiles.yml's variables from the Airflow connection marketflow_postgres (as the DAGs'
    cosmos profile is built from it), the project dir, and dbt's files outside dbt/target."""
    from airflow.sdk import BaseHook

    from marketflow.connections import POSTGRES_CONN_ID

    conn = BaseHook.get_connection(POSTGRES_CONN_ID)
    project = Path(os.environ.get("MARKETFLOW_DBT_PROJECT_DIR", PROJECT_ROOT / "dbt"))
    work = Path(os.environ.get("MARKETFLOW_REBUILD_DIR", PROJECT_ROOT / ".local" / "rebuild"))
    return {
        "MARKETFLOW_PG_HOST": conn.host or "localhost", "MARKETFLOW_PG_PORT": str(conn.port or 5432),
        "MARKETFLOW_PG_USER": conn.login or "", "MARKETFLOW_PG_PASSWORD": conn.password or "",
        "MARKETFLOW_PG_DATABASE": conn.schema or "", "DBT_PROFILES_DIR": str(project),
        "DBT_PROJECT_DIR": str(project),
        # not dbt/target: cosmos reads the manifest there
        "DBT_TARGET_PATH": str(work / "target"), "DBT_LOG_PATH": str(work / "logs"),
    }


def run_dbt(part: Slice, env: dict[str, str]) -> float:
    """Step 2: the incremental models bounded to the slice; wall seconds. Raises with dbt's output."""
    executable = os.environ.get("MARKETFLOW_DBT_EXECUTABLE", str(PROJECT_ROOT / ".local" / "dbt-venv" / "bin" / "dbt"))
    argv = [executable, "run", "--select", DBT_SELECT, "--vars", json.dumps({"rebuild": part.dbt_var()})]
    started = time.monotonic()
    res = subprocess.run(argv, cwd=env["DBT_PROJECT_DIR"], env={**os.environ, **env}, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dbt run failed (exit {res.returncode}); the slice {part.describe()} is deleted but not "
                           f"rebuilt: fix the cause and run the same `marketflow rebuild` again.\n{res.stdout[-4000:]}"
                           f"\n{res.stderr[-2000:]}")
    return time.monotonic() - started


def rebuild(conn, part: Slice, env: dict[str, str]) -> tuple[dict[str, int], float]:
    """Both steps; returns the rows deleted per relation and dbt's seconds."""
    log.info("rebuilding %s", part.describe())
    deleted = delete_slice(conn, part)
    log.info("deleted the slice's rows: %s", ", ".join(f"{k} {v}" for k, v in deleted.items() if v) or "none held")
    seconds = run_dbt(part, env)
    log.info("dbt rebuilt the slice's rows of every incremental model in %.1f s", seconds)
    return deleted, seconds
