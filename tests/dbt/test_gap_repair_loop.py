"""The gap-repair loop end to end: emulator -> raw -> staging -> dbt gaps mart -> ops.backfill_tasks -> re-fetch.

Minutes removed from staging come back and their gap turns `repaired`; a window the exchange has
no data for is retried `gap_repair_max_attempts` times, then `confirmed_empty_at_source`, and is
never queued again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from marketflow.config import load_config
from marketflow.ops import claim_tasks, schedule_gap_repairs, sync_market_config
from marketflow.pipeline import Attempt, extract_market, load_market, plan_window, repair_gap
from marketflow.raw_store import RawStore
from scripts.warehouse_checks import task_rows

# The recording ends 2022-08-15 23:59; history_end ten minutes later leaves a window the
# exchange (emulator) has nothing for.
MARKETS = """
defaults:
  gap_repair_max_attempts: 2
exchanges:
  binance:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets:
      - symbol: ETH/USDT
        history_start: "2022-08-15T00:00:00Z"
        history_end: "2022-08-16T00:10:00Z"
"""
REMOVED = (datetime(2022, 8, 15, 12, 0, tzinfo=UTC), datetime(2022, 8, 15, 12, 30, tzinfo=UTC))
EMPTY = (datetime(2022, 8, 16, 0, 0, tzinfo=UTC), datetime(2022, 8, 16, 0, 10, tzinfo=UTC))


def gaps(conn) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute("SELECT gap_start, gap_end, status FROM marts.data_quality_gaps ORDER BY gap_start")
        return cur.fetchall()


def run_loop(config, raw, conn, run_id: str) -> list[str]:
    schedule_gap_repairs(conn, config.gap_repair_max_tasks, config.gap_repair_max_attempts, run_id)
    outcomes = []
    for i, task in enumerate(claim_tasks(conn, "binance", config.gap_repair_max_tasks, run_id)):
        outcomes.append(repair_gap(config, task, raw, conn, Attempt("test", run_id, "repair", i, task.attempts)))
    return outcomes


def test_repair_loop(tmp_path, emulator_url, mongo_db, pg_conn, dbt) -> None:
    path = tmp_path / "markets.yml"
    path.write_text(MARKETS.format(url=emulator_url))
    config = load_config(path, env={})
    raw = RawStore(mongo_db)
    market = config.market("binance", "ETH/USDT")
    window = plan_window("1m", None, None, {"start": "2022-08-15T00:00:00Z", "end": "2022-08-16T00:10:00Z"}, 0)
    load_market(pg_conn, raw, extract_market(config, market, "1m", window, raw, Attempt("t", "r0", "x")),
                Attempt("t", "r0", "l"))
    sync_market_config(pg_conn, config)
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM staging.ohlcv WHERE open_time >= %s AND open_time < %s", REMOVED)
        assert cur.rowcount == 30
    pg_conn.commit()

    dbt("build")
    assert gaps(pg_conn) == [(*REMOVED, "open"), (*EMPTY, "open")]

    assert sorted(run_loop(config, raw, pg_conn, "r1")) == ["completed/repaired", "pending"]
    dbt("build")
    assert gaps(pg_conn) == [(*REMOVED, "repaired"), (*EMPTY, "repair_scheduled")]
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM marts.ohlcv_1m WHERE open_time >= %s AND open_time < %s", REMOVED)
        assert cur.fetchone()[0] == 30  # the minutes are back, in the marts too

    assert run_loop(config, raw, pg_conn, "r2") == ["completed/confirmed_empty"]
    dbt("build")
    assert gaps(pg_conn) == [(*REMOVED, "repaired"), (*EMPTY, "confirmed_empty_at_source")]

    # Never retried forever: nothing left to schedule or claim.
    assert run_loop(config, raw, pg_conn, "r3") == []
    assert [(r[4], r[5], r[6]) for r in task_rows(pg_conn)] == [("completed", "repaired", 1),
                                                                ("completed", "confirmed_empty", 2)]
