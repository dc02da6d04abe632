"""Issue acceptance: 30 days of 1m candles for 4 markets through the emulator with Binance-style limits.

Every candle lands in the marts, and our own pacing causes zero 429s and zero bans. The emulator's
weight limit is lowered to 1,200 per minute (a fifth of Binance's 6,000) so the shared bucket has to
pace a test-sized backfill; the markets file tells the bucket the same budget (240 ccxt cost units =
1,200 weight), of which it spends 90 %.
"""

from __future__ import annotations

import psycopg2

from exchange_emulator.testing import EmulatorProcess
from marketflow import exchanges
from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, load_market, plan_chunks
from marketflow.raw_store import RawStore
from marketflow.timeframes import Window

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT"]
MARKETS = """
exchanges:
  binance:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    rate_limit_per_minute: 240
    markets:
{markets}
"""
DAYS = 30


def test_thirty_days_four_markets_no_429s_every_candle_in_the_marts(tmp_path, warehouse_dsn, pg_conn, mongo_db,
                                                                     dbt) -> None:
    markets = "\n".join(f"      - {{symbol: {s}, history_start: '2025-06-01T00:00:00Z', "
                        f"history_end: '2025-07-01T00:00:00Z'}}" for s in SYMBOLS)
    with EmulatorProcess(binance_weight_limit=1200) as emulator:
        path = tmp_path / "markets.yml"
        path.write_text(MARKETS.format(url=emulator.base_url, markets=markets))
        config = load_config(path, env={})
        raw = RawStore(mongo_db)
        ops_conn = psycopg2.connect(warehouse_dsn)
        ops_conn.autocommit = True
        try:
            chunks = plan_chunks(config, "binance", {"start": "2025-06-01T00:00:00Z", "end": "2025-07-01T00:00:00Z",
                                                     "chunk_hours": 24 * 10})
            assert len(chunks) == 4 * 3
            for i, chunk in enumerate(chunks):
                exchanges._markets_cache.clear()  # each chunk is its own task process
                market = config.market("binance", chunk["symbol"])
                window = Window(chunk["window_start_ms"], chunk["window_end_ms"])
                extracted = extract_market(config, market, "1m", window, raw, Attempt("t", "bf", "extract", i),
                                           ops_conn=ops_conn)
                load_market(pg_conn, raw, extracted, Attempt("t", "bf", "load", i))
        finally:
            ops_conn.close()
        stats = emulator.stats()
    assert (stats["http_429_sent"], stats["http_418_sent"]) == (0, 0), stats
    # 10-day chunks of 14,400 candles: 15 calls of at most 1,000 each.
    assert stats["requests"]["binance"]["/api/v3/klines"] == 4 * 3 * 15
    # The market list (weight 20, ten klines pages) is loaded once and shared (ops.market_lists),
    # not once per chunk.
    assert stats["requests"]["binance"]["/api/v3/exchangeInfo"] == 1

    dbt("build")
    with pg_conn.cursor() as cur:
        cur.execute("SELECT symbol, count(*), min(open_time), max(open_time) FROM marts.ohlcv_1m "
                    "GROUP BY symbol ORDER BY symbol")
        rows = cur.fetchall()
        assert [(s, n) for s, n, _, _ in rows] == [(s, DAYS * 1440) for s in sorted(SYMBOLS)]
        cur.execute("SELECT count(*) FROM marts.data_quality_gaps WHERE status <> 'repaired'")
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT sum(http_429), sum(http_418), sum(acquisitions) FROM ops.rate_limit_metrics")
        assert cur.fetchone() == (0, 0, 1 + 4 * 3 * 15)  # the market list once, then 15 pages per chunk
