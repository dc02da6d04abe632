"""A candle history of any size built straight in Postgres, for the figures that need one (issue 16:
the hourly run and the analyst queries at 30M candles, bytes per candle).

``build_history`` writes ``markets x minutes`` 1m candles into staging.ohlcv of a fresh warehouse
database with one INSERT ... SELECT per week (generate_series; the values are the recorded real
candles of include/sample_data, see bench.storage.generate), syncs the markets file as the DAGs do,
then builds the marts with dbt as the pipeline does. It checks the free disk first and refuses,
saying how much it needs, when the history would not fit or would take the bench over its budget.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2

from bench.context import BenchContext, say
from bench.workload import symbols

START = datetime(2025, 1, 1, tzinfo=UTC)  # a closed past window: every market's history is complete
# Bytes a candle takes in Postgres with the marts built: figure 8 measured 947 (today's layout);
# 1,100 leaves room for dead tuples of the build's merges before autovacuum, and the WAL of the build.
DISK_BYTES_PER_CANDLE = 1_100
DISK_FIXED_BYTES = 3 * 2**30  # WAL segments (max_wal_size), dbt's files, a margin
BENCH_DISK_BUDGET = 35 * 2**30  # issue 16: the bench stays under 35 GB


@dataclass
class History:
    dsn: str
    env: dict[str, str]
    work: Path
    markets: list[tuple[str, str]]
    candles: int
    generate_seconds: float
    dbt_seconds: float


def disk_needed(candles: int) -> int:
    return candles * DISK_BYTES_PER_CANDLE + DISK_FIXED_BYTES


def check_disk(path: Path, candles: int) -> None:
    """Refuse, with what to do, when ``candles`` would not fit on the disk of ``path`` or would take
    the bench over its 35 GB budget."""
    need = disk_needed(candles)
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if need > BENCH_DISK_BUDGET:
        raise RuntimeError(f"a history of {candles:,} candles needs about {need / 2**30:.1f} GiB "
                           f"({DISK_BYTES_PER_CANDLE} bytes a candle + {DISK_FIXED_BYTES / 2**30:.0f} GiB), over the "
                           f"bench's {BENCH_DISK_BUDGET / 2**30:.0f} GiB budget: ask for fewer markets or minutes")
    if need > free:
        raise RuntimeError(f"a history of {candles:,} candles needs about {need / 2**30:.1f} GiB but {path} has only "
                           f"{free / 2**30:.1f} GiB free: free disk space or set MARKETFLOW_BENCH_DIR to a larger "
                           "disk, or ask for fewer candles")
    say(f"disk: {candles:,} candles need about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")


def markets_for(count: int) -> list[tuple[str, str]]:
    """Half Binance, half OKX, the same symbols on both (the cross-exchange quality rule has work)."""
    half = count // 2
    return [("binance", s) for s in symbols(half)] + [("okx", s) for s in symbols(count - half)]


def build_history(ctx: BenchContext, name: str, markets_count: int, minutes: int,
                  dbt_args: tuple[str, ...] | None = ("build", "--exclude-resource-type", "unit_test"),
                  long_markets: int = 0, long_minutes: int = 0, ticker_minutes: int = 0,
                  market_major: bool = False) -> History:
    """A fresh database ``name`` with ``markets_count x minutes`` 1m candles from START, the markets
    file synced, and the marts built by ``dbt <dbt_args>`` (None: staging only). The caller drops
    the database (ctx.pg.drop_database) and removes ``History.work`` when done.

    ``long_markets`` > 0: the first that many markets (Binance) hold ``long_minutes`` instead, and
    every market ends at START + long_minutes (the others start later), e.g. a few markets with a
    year of history among many with weeks. ``ticker_minutes``: a ticker snapshot per market and
    minute for the last that many minutes (30 s into the minute, at the candle's close)."""
    from bench.storage import generate, write_markets_config
    from marketflow.config import load_config
    from marketflow.ops import sync_market_config

    markets = markets_for(markets_count)
    span = max(minutes, long_minutes) if long_markets else minutes
    late = {m: span - minutes for m in markets[long_markets:]} if long_markets else {}
    total = long_markets * long_minutes + (markets_count - long_markets) * minutes
    check_disk(ctx.root, total)
    dsn = ctx.new_database(name)
    work = ctx.root / name
    work.mkdir(parents=True, exist_ok=True)
    config_file = write_markets_config(work / "markets.yml", markets, START, START + timedelta(minutes=span),
                                       {m: START + timedelta(minutes=d) for m, d in late.items()})
    env = ctx.service_env(dsn, "http://127.0.0.1:9", config_file, name)
    # dbt's artefacts under the bench's directory, never over dbt/target (which cosmos reads)
    env.update(DBT_TARGET_PATH=str(work / "target"), DBT_LOG_PATH=str(work / "logs"))
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        candles, gen_s = generate(conn, markets, START, span, late, market_major)
        if ticker_minutes:
            _tickers(conn, START + timedelta(minutes=span - ticker_minutes))
        conn.autocommit = False
        sync_market_config(conn, load_config(config_file, env))  # the DAGs' own sync of the markets file
        conn.commit()
    finally:
        conn.close()
    dbt_s = 0.0
    if dbt_args:
        say(f"dbt {' '.join(dbt_args)} on {candles:,} candles ...")
        started = time.monotonic()
        ctx.dbt(env, *dbt_args)
        dbt_s = time.monotonic() - started
        say(f"dbt took {dbt_s:.0f}s")
    return History(dsn, env, work, markets, candles, gen_s, dbt_s)


def _tickers(conn, since: datetime) -> None:
    """A ticker per market and minute from ``since``: the candle's close 30 s into its minute."""
    with conn.cursor() as cur:
        cur.execute("""
            insert into staging.ticker (exchange, symbol, ts, last, bid, ask, bid_volume, ask_volume,
                                        base_volume, quote_volume, raw_payload_id, run_id, ingested_at)
            select exchange, symbol, open_time + interval '30 seconds', close, close, close,
                   1, 1, volume, quote_volume, raw_payload_id, run_id, ingested_at
            from staging.ohlcv where open_time >= %s""", (since,))
        cur.execute("vacuum (analyze) staging.ticker")
