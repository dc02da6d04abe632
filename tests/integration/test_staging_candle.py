"""staging.candle, the narrow table behind the view staging.ohlcv (revision 0010, docs/storage.md stage 2):
the loader's rows and writes through the view come back through the view exactly as they were written."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from marketflow.staging_keys import payload_id_bytes
from marketflow.staging_load import write_ohlcv

T0 = datetime(2025, 11, 23, 16, 0, tzinfo=UTC)
HEX = "0123456789abcdef0123456789abcdef"
# every shape a payload id has had: raw_store's 32 lower-case hex digits, the tests' and the release
# fixture's short names, text exactly 15 bytes long (16 with one marker byte), upper-case hex, non-ASCII
PAYLOAD_IDS = [HEX, "p1", "", "fifteen_chars_x", "sixteen_chars_xy", HEX.upper(), HEX + "0", "rép-ü", "syn"]


def _rows(conn, sql: str, args: tuple = ()) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def _candle(minute: int, payload: str, symbol: str = "ETH/USDT", close: str = "1983.55000000",
            run: str = "scheduled__2025-11-23T16:00:00+00:00") -> tuple:
    return ("binance", symbol, "1m", T0 + timedelta(minutes=minute), Decimal("1983.50000000"),
            Decimal("1984.00000000"), Decimal("1982.10000000"), Decimal(close), Decimal("412.78650000"),
            Decimal("818823.78125650"), 1201, payload, run)


def test_payload_ids_round_trip_and_hex_ids_take_16_bytes(pg_conn) -> None:
    with pg_conn.cursor() as cur:
        for minute, payload in enumerate(PAYLOAD_IDS):
            cur.execute("INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, "
                        "volume, raw_payload_id, run_id) VALUES ('okx', 'BTC/USDT', '1m', %s, 1, 1, 1, 1, 1, %s, 'r')",
                        (T0 + timedelta(minutes=minute), payload))
    pg_conn.commit()
    assert [r[0] for r in _rows(pg_conn, "SELECT raw_payload_id FROM staging.ohlcv ORDER BY open_time")] == PAYLOAD_IDS
    stored = [bytes(r[0]) for r in _rows(pg_conn, "SELECT raw_payload_id FROM staging.candle ORDER BY open_time")]
    assert len(stored[0]) == 16 and stored[0].hex() == HEX
    assert all(len(b) != 16 for b in stored[1:])  # length 16 means a hex id, nothing else has it
    # the loader's encoding (Python) is the view's (SQL)
    assert stored == [payload_id_bytes(p) for p in PAYLOAD_IDS]


def test_the_loader_writes_the_narrow_table_and_reruns_change_nothing(pg_conn) -> None:
    rows = [_candle(m, HEX if m % 2 else "p1", symbol) for symbol in ("ETH/USDT", "BTC/USDT") for m in range(5)]
    with pg_conn.cursor() as cur:
        assert write_ohlcv(cur, rows[:5])[:2] == (5, 0)
        assert write_ohlcv(cur, rows[5:])[:2] == (5, 0)
    pg_conn.commit()
    view = "SELECT exchange, symbol, timeframe, open_time, open, high, low, close, volume, quote_volume, trades, " \
           "raw_payload_id, run_id FROM staging.ohlcv ORDER BY symbol DESC, open_time"
    assert _rows(pg_conn, view) == rows  # every value as written, the ids as text
    assert _rows(pg_conn, "SELECT count(*) FROM staging.market") == [(2,)]
    assert _rows(pg_conn, "SELECT count(*) FROM ops.run") == [(1,)]
    stamped = _rows(pg_conn, "SELECT symbol, open_time, ingested_at FROM staging.ohlcv ORDER BY 1, 2")

    with pg_conn.cursor() as cur:  # the same rows again: nothing written, ingested_at kept
        assert write_ohlcv(cur, rows[:5]) == (0, 0, [])
    pg_conn.commit()
    assert _rows(pg_conn, "SELECT symbol, open_time, ingested_at FROM staging.ohlcv ORDER BY 1, 2") == stamped

    corrected = [_candle(3, "fix", close="1983.60000000", run="manual__fix")]
    with pg_conn.cursor() as cur:
        inserted, updated, revisions = write_ohlcv(cur, [*rows[:3], *corrected])
    pg_conn.commit()
    assert (inserted, updated) == (0, 1)
    assert [(r[0], r[3:6], r[7]) for r in revisions] == [("fix", ("binance", "ETH/USDT", "1m"), "manual__fix")]
    assert f"payload {HEX} said" in revisions[0][6]  # the stored id read back as text
    after = _rows(pg_conn, "SELECT symbol, open_time, ingested_at FROM staging.ohlcv ORDER BY 1, 2")
    assert [a for a, b in zip(after, stamped, strict=True) if a != b] == [
        next(a for a in after if a[:2] == ("ETH/USDT", corrected[0][3]))]  # only the corrected row moved
    assert _rows(pg_conn, view)[3] == corrected[0]


def test_a_rolled_back_new_market_is_not_cached(pg_conn) -> None:
    """A market row added inside a transaction that rolls back is gone: the next load must add it again
    (a cached id would point its candles at no market, invisible through the view)."""
    with pg_conn.cursor() as cur:
        cur.execute("SELECT 1")  # a transaction is open: the keys are added inside it
        write_ohlcv(cur, [_candle(0, HEX, "NEW/USDT")])
    pg_conn.rollback()
    assert _rows(pg_conn, "SELECT count(*) FROM staging.market") == [(0,)]
    with pg_conn.cursor() as cur:
        assert write_ohlcv(cur, [_candle(0, HEX, "NEW/USDT")])[:2] == (1, 0)
    pg_conn.commit()
    assert _rows(pg_conn, "SELECT symbol, raw_payload_id FROM staging.ohlcv") == [("NEW/USDT", HEX)]


def test_copy_update_and_delete_through_the_view(pg_conn) -> None:
    text = ("okx\tBTC/USDT\t1m\t2025-11-23 16:00:00+00\t86000.1\t86012.3\t85990\t86001.9\t"
            "0.000000012345678901234567890123\t\\N\t\\N\tp2\trun-1\n"
            "okx\tBTC/USDT\t1m\t2025-11-23 16:01:00+00\t1\t2\t1\t1\t1\t\\N\t\\N\tp3\trun-1\n")
    with pg_conn.cursor() as cur:
        cur.copy_expert("COPY staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume, "
                        "quote_volume, trades, raw_payload_id, run_id) FROM STDIN", io.StringIO(text))
        cur.execute("UPDATE staging.ohlcv SET close = 1.5, high = 2.5, run_id = 'manual', "
                    "ingested_at = '2026-01-01+00' WHERE open_time = '2025-11-23 16:01+00'")
        assert cur.rowcount == 1
        cur.execute("UPDATE staging.ohlcv SET symbol = 'ETH/USDT' WHERE raw_payload_id = 'p2'")
        cur.execute("DELETE FROM staging.ohlcv WHERE raw_payload_id = 'nothing'")
        assert cur.rowcount == 0
    pg_conn.commit()
    assert _rows(pg_conn, "SELECT symbol, open_time, close::text, volume::text, high::text, raw_payload_id, run_id, "
                          "ingested_at = '2026-01-01+00' FROM staging.ohlcv ORDER BY open_time") == [
        ("ETH/USDT", T0, "86001.9", "0.000000012345678901234567890123", "86012.3", "p2", "run-1", False),
        ("BTC/USDT", T0 + timedelta(minutes=1), "1.5", "1", "2.5", "p3", "manual", True)]
    with pg_conn.cursor() as cur:
        cur.execute("DELETE FROM staging.ohlcv WHERE symbol = 'ETH/USDT'")
        assert cur.rowcount == 1
    pg_conn.commit()
    assert _rows(pg_conn, "SELECT count(*) FROM staging.candle") == [(1,)]
