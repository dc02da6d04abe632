"""The live edge (in-progress candle left out, ticker snapshot) and idempotent DDL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from marketflow.config import load_config
from marketflow.exchanges import rewrite_hosts
from marketflow.pipeline import Attempt, extract_market, load_market, plan_window
from marketflow.raw_store import RawStore
from marketflow.schema import apply_ddl, current, head
from marketflow.timeframes import floor_ms, to_ms

LIVE = """
exchanges:
  binance:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets: [BTC/USDT]
  okx:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets: [ETH/USDT]
"""


def test_live_minutes_and_tickers(tmp_path, emulator_url, mongo_db, pg_conn) -> None:
    path = tmp_path / "markets.yml"
    path.write_text(LIVE.format(url=emulator_url))
    config = load_config(path, env={})
    raw = RawStore(mongo_db)
    now = datetime.now(UTC)
    window = plan_window("1m", None, None, {}, 4, now=now)  # no logical date: last closed minute + 4
    assert window.end_ms == floor_ms(to_ms(now), "1m")
    for i, market in enumerate(config.markets("1m")):
        extracted = extract_market(config, market, "1m", window, raw, Attempt("t", "live-1", "extract", i),
                                   with_ticker=True)
        assert len(extracted["ticker_payload_ids"]) == 1
        result = load_market(pg_conn, raw, extracted, Attempt("t", "live-1", "load", i))
        assert result["rejected"] == 0 and result["tickers"] == 1
    with pg_conn.cursor() as cur:
        cur.execute("SELECT exchange, count(*), max(open_time) FROM staging.ohlcv GROUP BY exchange ORDER BY 1")
        rows = cur.fetchall()
        cur.execute("SELECT exchange, symbol, last, bid, ask, ts FROM staging.ticker ORDER BY exchange")
        tickers = cur.fetchall()
    # Five closed minutes each; the emulator's in-progress minute was not loaded.
    assert [(ex, n) for ex, n, _ in rows] == [("binance", 5), ("okx", 5)]
    assert all(last_open < now.replace(second=0, microsecond=0) for _, _, last_open in rows)
    assert [(t[0], t[1]) for t in tickers] == [("binance", "BTC/USDT"), ("okx", "ETH/USDT")]
    for _, _, last, bid, ask, ts in tickers:
        assert last > 0 and bid <= ask and abs(ts - now) < timedelta(days=1)


def test_ddl_reapplies_as_a_no_op(pg_conn) -> None:
    assert current(pg_conn) == head()
    assert apply_ddl(pg_conn) == []  # at head: no revision runs
    assert current(pg_conn) == head()


def test_ddl_turns_jit_off_for_new_sessions_of_the_pipeline_role(warehouse_dsn: str) -> None:
    """Data tests have no pre-hook: the role's default is what keeps JIT from compiling them."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(warehouse_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW jit")
            assert cur.fetchone()[0] == "off"
            cur.execute(sql.SQL("ALTER ROLE CURRENT_USER IN DATABASE {} RESET jit").format(
                sql.Identifier(conn.info.dbname)))
        conn.commit()
        apply_ddl(conn)  # the file is unchanged, but the setting is checked and restored anyway
    finally:
        conn.close()
    conn = psycopg2.connect(warehouse_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW jit")
            assert cur.fetchone()[0] == "off"
    finally:
        conn.close()


def test_base_url_rewrites_every_api_host_and_keeps_paths() -> None:
    urls = {"public": "https://api.binance.com/api/v3", "fapiPublic": "https://fapi.binance.com/fapi/v1",
            "rest": "https://{hostname}", "nested": {"x": "https://www.okx.com/api/v5"}, "rateLimit": 50}
    assert rewrite_hosts(urls, "http://127.0.0.1:8765/") == {
        "public": "http://127.0.0.1:8765/api/v3", "fapiPublic": "http://127.0.0.1:8765/fapi/v1",
        "rest": "http://127.0.0.1:8765", "nested": {"x": "http://127.0.0.1:8765/api/v5"}, "rateLimit": 50}


def test_ddl_is_current_only_at_head(pg_conn) -> None:
    from marketflow.schema import apply_ddl, ddl_is_current, downgrade

    assert ddl_is_current(pg_conn)  # the fixture upgraded to head
    assert downgrade(pg_conn, "-1") == [f"-{head()}"]
    assert not ddl_is_current(pg_conn)  # the minute path prepares storage first
    assert apply_ddl(pg_conn) == [head()]
    assert ddl_is_current(pg_conn)
