"""The data-quality marts on hand-made staging data: gaps and their repair states, loader anomalies,
price spikes, volume anomalies, cross-exchange divergence and the score, exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from dbt_helpers import DbtRunner, query

T0 = datetime(2024, 1, 1, tzinfo=UTC)
END = T0 + timedelta(hours=3)
SELECT_DQ = ("--select", "+data_quality_gaps", "+data_quality_summary", "int_dq_candle_flags_1m")
INSERT_OHLCV = (
    "INSERT INTO staging.ohlcv (exchange, symbol, timeframe, open_time, open, high, low, close, volume,"
    " raw_payload_id, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'p', 'r')"
)

# binance BTC/USDT 1m, configured [00:00, 03:00): minutes 0-4 missing (leading gap), 90-94 missing
# (gap in the middle), 176-179 missing (trailing gap); 120 traded nothing (volume 0: a candle, not a
# gap); 70 is a +4 % bad print that reverts at 71 (one spike); 150 has 200x the usual volume.
LEADING, MIDDLE, TRAILING = range(0, 5), range(90, 95), range(176, 180)
ZERO_VOLUME, SPIKE, VOLUME_SPIKE, DIVERGENT = 120, 70, 150, 135


def minute(k: int) -> datetime:
    return T0 + timedelta(minutes=k)


def base_close(k: int) -> Decimal:
    """A quiet series: steps of a few basis points, deterministic."""
    return Decimal(100) + Decimal((k * 7) % 5 - 2) * Decimal("0.05") + Decimal(k // 30) * Decimal("0.10")


def base_volume(k: int) -> Decimal:
    return Decimal(10 + (k * 3) % 7)


def binance_close(k: int) -> Decimal:
    return (base_close(k) * Decimal("1.04")).quantize(Decimal("0.01")) if k == SPIKE else base_close(k)


def okx_close(k: int) -> Decimal:
    return (base_close(k) * Decimal("1.002")).quantize(Decimal("0.01")) if k == DIVERGENT else base_close(k)


def insert_candle(cur, exchange: str, symbol: str, timeframe: str, t: datetime, close: Decimal,
                  volume: Decimal) -> None:  # fmt: skip
    cur.execute(INSERT_OHLCV, (exchange, symbol, timeframe, t, close, close, close, close, volume))


def insert_config(cur, exchange: str, symbol: str, timeframe: str, start: datetime, end: datetime | None) -> None:
    cur.execute(
        "INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start, history_end, enabled)"
        " VALUES (%s, %s, %s, %s, %s, %s, true)",
        (exchange, symbol, timeframe, exchange, start, end),
    )


def insert_task(cur, timeframe: str, start: datetime, end: datetime, status: str, outcome: str | None = None,
                attempts: int = 0, error: str | None = None) -> int:  # fmt: skip
    cur.execute(
        "INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, status, outcome,"
        " attempts, last_error, updated_at) VALUES ('binance', 'BTC/USDT', %s, %s, %s, %s, %s, %s, %s, %s)"
        " RETURNING task_id",
        (timeframe, start, end, status, outcome, attempts, error, T0 + timedelta(days=1, minutes=attempts)),
    )
    return cur.fetchone()[0]


def load_scenario(conn) -> dict[str, int]:
    tasks = {}
    with conn.cursor() as cur:
        missing = {*LEADING, *MIDDLE, *TRAILING}
        for k in range(180):
            if k not in missing:
                volume = {ZERO_VOLUME: Decimal(0), VOLUME_SPIKE: base_volume(k) * 200}.get(k, base_volume(k))
                insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), binance_close(k), volume)
            insert_candle(cur, "okx", "BTC/USDT", "1m", minute(k), okx_close(k), base_volume(k))
        insert_candle(cur, "binance", "BTC/USDT", "1m", minute(-1), Decimal(1), Decimal(1))  # before the range
        insert_config(cur, "binance", "BTC/USDT", "1m", T0, END)
        insert_config(cur, "okx", "BTC/USDT", "1m", T0, END)
        # configured, never loaded: one gap over the whole range
        insert_config(cur, "binance", "ETH/USDT", "1m", T0, END)
        # not configured (loaded before a config sync): judged between its first and last candle
        for k in (0, 1, 2, 3, 4, 6, 7, 8, 9):
            insert_candle(cur, "okx", "SOL/USDT", "1m", minute(k), Decimal(20), Decimal(1))

        # 1h series for the repair state machine: holes at 02, 05-06, 10, 20; 15 was repaired
        insert_config(cur, "binance", "BTC/USDT", "1h", T0, T0 + timedelta(days=1))
        for h in range(24):
            if h not in (2, 5, 6, 10, 20):
                insert_candle(cur, "binance", "BTC/USDT", "1h", T0 + timedelta(hours=h), Decimal(100), Decimal(600))
        hour = lambda h: T0 + timedelta(hours=h)  # noqa: E731
        tasks["confirmed_empty"] = insert_task(cur, "1h", hour(2), hour(3), "completed", "confirmed_empty", 3)
        tasks["failed"] = insert_task(cur, "1h", hour(5), hour(7), "failed", None, 3, "NetworkError: boom")
        tasks["other_window"] = insert_task(cur, "1h", hour(5), hour(6), "pending")  # not this gap's window
        tasks["running"] = insert_task(cur, "1h", hour(10), hour(11), "running", None, 1)
        tasks["repaired"] = insert_task(cur, "1h", hour(15), hour(16), "completed", "repaired", 1)
        tasks["pending"] = insert_task(cur, "1m", minute(0), minute(5), "pending")

        # what the loader recorded about the binance 1m payloads
        anomalies = [
            ("p1", "duplicate_conflict", 30), ("p2", "revised", 30),  # one minute, counted once
            ("p2", "revised", 40),
            ("p1", "duplicate_identical", 41),  # same values twice: not a duplicate in this sense
            ("p1", "out_of_order", 65), ("p2", "out_of_order", 65), ("p1", "out_of_order", 66),  # 3 rows
            ("p1", "out_of_order", -10),  # before the expected range: not counted
        ]  # fmt: skip
        for payload, kind, k in anomalies:
            cur.execute(
                "INSERT INTO staging.ohlcv_anomalies (raw_payload_id, kind, open_time, exchange, symbol, timeframe,"
                " run_id) VALUES (%s, %s, %s, 'binance', 'BTC/USDT', '1m', 'r')",
                (payload, kind, minute(k)),
            )
        cur.execute(
            "INSERT INTO staging.ohlcv_anomalies (raw_payload_id, kind, open_time, exchange, symbol, timeframe,"
            " run_id) VALUES ('p3', 'out_of_order', %s, 'binance', 'BTC/USDT', '1h', 'r')",
            (T0,),
        )
    conn.commit()
    return tasks


def gap_rows(conn) -> list[tuple]:
    return query(
        conn,
        "SELECT exchange, symbol, timeframe, gap_start, gap_end, missing_candles, missing_minutes, gap_kind, status,"
        " is_missing, task_id, attempts, last_error FROM marts.data_quality_gaps"
        " ORDER BY exchange, symbol, timeframe, gap_start",
    )


def summary(conn, exchange: str, symbol: str, grain: str = "hour") -> list[dict]:
    cols = ["period_start", "period_end", "expected", "present", "missing", "duplicates", "out_of_order",
            "price_spikes", "volume_anomalies", "cross_exchange_divergence_bps", "quality_score"]  # fmt: skip
    rows = query(
        conn,
        f"SELECT {', '.join(cols)} FROM marts.data_quality_summary WHERE exchange = %s AND symbol = %s"
        " AND timeframe = '1m' AND grain = %s ORDER BY period_start",
        (exchange, symbol, grain),
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def bps(a: Decimal, b: Decimal) -> Decimal:
    return (abs(a - b) / ((a + b) / 2) * 10_000).quantize(Decimal("0.0001"), ROUND_HALF_UP)


def test_gaps_and_the_repair_state_machine(dbt: DbtRunner, pg_conn) -> None:
    tasks = load_scenario(pg_conn)
    dbt("build", *SELECT_DQ)
    h = lambda n: T0 + timedelta(hours=n)  # noqa: E731
    assert gap_rows(pg_conn) == [
        # the 1h series: one row per hole, its status from the task with exactly its window
        ("binance", "BTC/USDT", "1h", h(2), h(3), 1, 60, "interior", "confirmed_empty_at_source", True,
         tasks["confirmed_empty"], 3, None),
        ("binance", "BTC/USDT", "1h", h(5), h(7), 2, 120, "interior", "open", True, tasks["failed"], 3,
         "NetworkError: boom"),
        ("binance", "BTC/USDT", "1h", h(10), h(11), 1, 60, "interior", "repair_scheduled", True, tasks["running"], 1,
         None),
        ("binance", "BTC/USDT", "1h", h(15), h(16), 1, 60, None, "repaired", False, tasks["repaired"], 1, None),
        ("binance", "BTC/USDT", "1h", h(20), h(21), 1, 60, "interior", "open", True, None, None, None),
        # leading gap (its repair is queued), the gap in the middle, the trailing gap; minute 120
        # (zero volume) is present, and the candle before history_start is ignored
        ("binance", "BTC/USDT", "1m", minute(0), minute(5), 5, 5, "leading", "repair_scheduled", True,
         tasks["pending"], 0, None),
        ("binance", "BTC/USDT", "1m", minute(90), minute(95), 5, 5, "interior", "open", True, None, None, None),
        ("binance", "BTC/USDT", "1m", minute(176), minute(180), 4, 4, "trailing", "open", True, None, None, None),
        # configured but no candle at all: one gap over the whole expected range
        ("binance", "ETH/USDT", "1m", T0, END, 180, 180, "no_candles", "open", True, None, None, None),
        # not configured: only holes between its first and last candle
        ("okx", "SOL/USDT", "1m", minute(5), minute(6), 1, 1, "interior", "open", True, None, None, None),
    ]  # fmt: skip
    ((updated_at,),) = query(
        pg_conn, "SELECT updated_at FROM marts.data_quality_gaps WHERE task_id = %s", (tasks["failed"],)
    )
    assert updated_at == T0 + timedelta(days=1, minutes=3)

    # The repair of the middle gap lands, the leading gap turns out to be empty at the source.
    with pg_conn.cursor() as cur:
        for k in MIDDLE:
            insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), base_close(k), base_volume(k))
        cur.execute(
            "INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end, status, outcome,"
            " attempts) VALUES ('binance', 'BTC/USDT', '1m', %s, %s, 'completed', 'repaired', 1)",
            (minute(90), minute(95)),
        )
        cur.execute(
            "UPDATE ops.backfill_tasks SET status = 'completed', outcome = 'confirmed_empty', attempts = 3"
            " WHERE task_id = %s",
            (tasks["pending"],),
        )
    pg_conn.commit()
    dbt("run", *SELECT_DQ)
    statuses = {(r[2], r[3], r[4]): r[8] for r in gap_rows(pg_conn) if r[1] == "BTC/USDT"}
    assert statuses[("1m", minute(0), minute(5))] == "confirmed_empty_at_source"
    assert statuses[("1m", minute(90), minute(95))] == "repaired"
    assert statuses[("1m", minute(176), minute(180))] == "open"


def test_summary_counts_flags_divergence_and_score(dbt: DbtRunner, pg_conn) -> None:
    load_scenario(pg_conn)
    dbt("build", *SELECT_DQ)

    # exactly one spike (its reversion is the same event) and one volume anomaly, on any market;
    # the quiet minutes, the zero-volume minute and the divergent okx minute are not flagged
    assert query(
        pg_conn,
        "SELECT exchange, symbol, open_time, is_price_spike, is_volume_anomaly"
        " FROM dbt_intermediate.int_dq_candle_flags_1m ORDER BY open_time",
    ) == [
        ("binance", "BTC/USDT", minute(SPIKE), True, False),
        ("binance", "BTC/USDT", minute(VOLUME_SPIKE), False, True),
    ]

    # binance divergence: the largest distance to okx's close of the same minute, per hour
    def divergence(hour: int, exchange_close, other_close, present) -> Decimal:
        return max(bps(exchange_close(k), other_close(k)) for k in range(60 * hour, 60 * hour + 60) if present(k))

    present = lambda k: k not in {*LEADING, *MIDDLE, *TRAILING}  # noqa: E731
    want_div = [divergence(h, binance_close, okx_close, present) for h in range(3)]
    assert want_div[0] == 0 and want_div[1] == bps(binance_close(SPIKE), base_close(SPIKE)) > 300
    assert want_div[2] == bps(base_close(DIVERGENT), okx_close(DIVERGENT)) > 10

    rows = summary(pg_conn, "binance", "BTC/USDT")
    assert [(r["period_start"], r["period_end"]) for r in rows] == [
        (T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1)) for h in range(3)
    ]
    got = [(r["expected"], r["present"], r["missing"], r["duplicates"], r["out_of_order"], r["price_spikes"],
            r["volume_anomalies"], r["cross_exchange_divergence_bps"], r["quality_score"]) for r in rows]  # fmt: skip
    assert got == [
        # 55/60 present, 2 duplicated minutes: 91.667 - 4
        (60, 55, 5, 2, 0, 0, 0, want_div[0], Decimal("87.67")),
        # 55/60, 3 out-of-order rows, 1 spike: 91.667 - 3 - 5
        (60, 55, 5, 0, 3, 1, 0, want_div[1], Decimal("83.67")),
        # 56/60 (the zero-volume minute counts as present), 1 volume anomaly: 93.333 - 2
        (60, 56, 4, 0, 0, 0, 1, want_div[2], Decimal("91.33")),
    ]
    (day,) = summary(pg_conn, "binance", "BTC/USDT", "day")
    assert (day["period_start"], day["period_end"]) == (T0, T0 + timedelta(days=1))
    assert (day["expected"], day["present"], day["missing"], day["duplicates"], day["out_of_order"],
            day["price_spikes"], day["volume_anomalies"]) == (180, 166, 14, 2, 3, 1, 1)  # fmt: skip
    assert day["cross_exchange_divergence_bps"] == max(want_div)
    assert day["quality_score"] == Decimal("78.22")  # 100 * 166/180 - 4 - 3 - 5 - 2

    okx = summary(pg_conn, "okx", "BTC/USDT")
    assert [(r["present"], r["quality_score"]) for r in okx] == [(60, Decimal("100.00"))] * 3
    assert [r["cross_exchange_divergence_bps"] for r in okx] == want_div  # symmetric
    # nothing loaded: every hour expected, nothing present, score 0; no other exchange: NULL divergence
    eth = summary(pg_conn, "binance", "ETH/USDT")
    assert [(r["expected"], r["present"], r["quality_score"], r["cross_exchange_divergence_bps"]) for r in eth] == [
        (60, 0, Decimal("0.00"), None)
    ] * 3
    # not configured: 00:00-00:09 expected, one minute missing, listed on one exchange only
    (sol,) = summary(pg_conn, "okx", "SOL/USDT")
    assert (sol["expected"], sol["present"], sol["quality_score"], sol["cross_exchange_divergence_bps"]) == (
        10, 9, Decimal("90.00"), None)  # fmt: skip


def test_live_market_is_expected_up_to_the_last_closed_minute(dbt: DbtRunner, pg_conn) -> None:
    start = T0
    with pg_conn.cursor() as cur:
        insert_config(cur, "binance", "BTC/USDT", "1m", start, None)
        for k in range(5):
            insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), base_close(k), base_volume(k))
    pg_conn.commit()
    # as of 00:10:30 the candles 00:00-00:09 are closed: 00:05-00:09 are missing
    dbt("build", *SELECT_DQ, "--vars", '{"dq_as_of": "2024-01-01T00:10:30Z"}')
    assert [r[3:9] for r in gap_rows(pg_conn)] == [(minute(5), minute(10), 5, 5, "trailing", "open")]
    dbt("run", *SELECT_DQ, "--vars", '{"dq_as_of": "2024-01-01T00:10:30Z", "dq_expected_delay_minutes": 3}')
    assert [r[3:5] for r in gap_rows(pg_conn)] == [(minute(5), minute(7))]

    # without dq_as_of: up to now()
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    dbt("run", *SELECT_DQ)
    after = datetime.now(UTC).replace(second=0, microsecond=0)
    ((gap_start, gap_end, missing),) = [(r[3], r[4], r[5]) for r in gap_rows(pg_conn)]
    assert gap_start == minute(5) and before <= gap_end <= after
    assert missing == (gap_end - gap_start) / timedelta(minutes=1)
    ((hours, expected),) = query(
        pg_conn, "SELECT count(*), sum(expected) FROM marts.data_quality_summary WHERE grain = 'hour'"
    )
    assert expected == missing + 5 and hours == -(-(gap_end - T0) // timedelta(hours=1))


def test_real_sample_days(dbt: DbtRunner, loaded_warehouse) -> None:
    """The bundled real candles (no market_config: judged between first and last candle) are complete
    and quiet: no gap, no spike, one volume anomaly (a real burst, 22x the hour's geometric mean)."""
    conn = loaded_warehouse
    result = dbt("build")
    print(f"dbt build incl. data quality (5,760 candles): {result.seconds:.1f} s")
    assert query(conn, "SELECT count(*) FROM marts.data_quality_gaps") == [(0,)]
    assert query(
        conn,
        "SELECT exchange, open_time, is_price_spike, is_volume_anomaly FROM dbt_intermediate.int_dq_candle_flags_1m",
    ) == [("binance", datetime(2022, 8, 14, 13, 16, tzinfo=UTC), False, True)]
    days = query(
        conn,
        "SELECT exchange, period_start, expected, present, price_spikes, volume_anomalies, quality_score,"
        " cross_exchange_divergence_bps FROM marts.data_quality_summary WHERE grain = 'day'"
        " ORDER BY exchange, period_start",
    )
    assert days == [
        ("binance", datetime(2022, 8, 14, tzinfo=UTC), 1440, 1440, 0, 1, Decimal("98.00"), None),
        ("binance", datetime(2022, 8, 15, tzinfo=UTC), 1440, 1440, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 23, tzinfo=UTC), 480, 480, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 24, tzinfo=UTC), 1440, 1440, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 25, tzinfo=UTC), 960, 960, 0, 0, Decimal("100.00"), None),
    ]
    assert query(conn, "SELECT count(*), min(quality_score) FROM marts.data_quality_summary WHERE grain = 'hour'") == [
        (96, Decimal("98.00"))
    ]


def test_incremental_candle_hours_equal_a_full_refresh(dbt: DbtRunner, pg_conn) -> None:
    """New minutes, a corrected close on one exchange (its sibling's divergence changes too) and a
    new spike flow in incrementally, recomputing only the hours from the change on; the result is
    what a full rebuild gives."""
    load_scenario(pg_conn)
    dbt("build", *SELECT_DQ)
    hours_sql = "SELECT * FROM dbt_intermediate.int_dq_candle_hours_1m ORDER BY exchange, symbol, period_start"
    before = {(r[0], r[1], r[2]): r for r in query(pg_conn, hours_sql)}
    with pg_conn.cursor() as cur:
        for k in MIDDLE:  # the hole in the middle is repaired
            insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), base_close(k), base_volume(k))
        # okx corrects a close in the last hour: a spike there, and binance's divergence changes
        cur.execute(
            "UPDATE staging.ohlcv SET close = close * 1.05, high = close * 1.05, ingested_at = clock_timestamp()"
            " WHERE exchange = 'okx' AND symbol = 'BTC/USDT' AND open_time = %s",
            (minute(165),),
        )
    pg_conn.commit()
    dbt("run", *SELECT_DQ)
    incremental = query(pg_conn, hours_sql)
    after = {(r[0], r[1], r[2]): r for r in incremental}
    changed = {key for key in after if after[key] != before.get(key)}
    assert changed == {("binance", "BTC/USDT", T0 + timedelta(hours=1)), ("okx", "BTC/USDT", T0 + timedelta(hours=2)),
                       ("binance", "BTC/USDT", T0 + timedelta(hours=2))}  # fmt: skip
    assert after[("okx", "BTC/USDT", T0 + timedelta(hours=2))][6] == [minute(165)]  # spike_times
    summary_sql = "SELECT * FROM marts.data_quality_summary ORDER BY exchange, symbol, grain, period_start"
    summary_incremental = query(pg_conn, summary_sql)

    dbt("run", "--full-refresh", *SELECT_DQ)
    assert query(pg_conn, hours_sql) == incremental
    assert query(pg_conn, summary_sql) == summary_incremental
