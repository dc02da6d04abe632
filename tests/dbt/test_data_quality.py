"""The data-quality marts on hand-made staging data: gaps and their repair states, loader anomalies,
price spikes, volume anomalies, cross-exchange divergence and the score, exactly; the live edge of
a healthy pipeline without false gaps; the drill-down in marts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from support.dbt_helpers import DbtRunner, query

T0 = datetime(2024, 1, 1, tzinfo=UTC)
END = T0 + timedelta(hours=3)
SELECT_DQ = ("--select", "+data_quality_gaps", "+data_quality_summary", "+data_quality_flagged_candles")
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
        # a chunk of that gap that claims a repair while it is still empty: the gap stays open and the
        # task shown is the one with exactly the gap's window
        tasks["other_window"] = insert_task(cur, "1h", hour(5), hour(6), "completed", "repaired", 1)
        tasks["running"] = insert_task(cur, "1h", hour(10), hour(11), "running", None, 1)
        tasks["repaired"] = insert_task(cur, "1h", hour(15), hour(16), "completed", "repaired", 1)
        tasks["pending"] = insert_task(cur, "1m", minute(0), minute(5), "pending")

        # what the loader recorded about the binance 1m payloads
        anomalies = [
            ("p1", "duplicate_conflict", 30), ("p2", "revised", 30),  # a duplicate AND a correction
            ("p2", "revised", 40), ("p3", "revised", 40),  # corrected twice: one corrected minute
            ("p1", "duplicate_identical", 41),  # same values twice: harmless, not counted
            # minute 65 out of order in the minute run, the reconcile and a repair: one minute
            ("p1", "out_of_order", 65), ("p2", "out_of_order", 65), ("p3", "out_of_order", 65),
            ("p1", "out_of_order", 66),
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
    cols = ["period_start", "period_end", "expected", "present", "missing", "duplicates", "corrections",
            "out_of_order", "price_spikes", "volume_anomalies", "cross_exchange_divergence_bps",
            "quality_score"]  # fmt: skip
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
        # the 1h series: one row per hole, its status from the tasks overlapping it
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


def score(c: dict) -> Decimal:
    """quality_score as documented (data_quality_summary.yml, README): the share of expected candles
    present and clean, each flag costing its weight of one candle, floored at 0."""
    return (unrounded_score(c)).quantize(Decimal("0.01"), ROUND_HALF_UP)


def unrounded_score(c: dict) -> Decimal:
    penalty = (
        c["price_spikes"]
        + Decimal("0.5") * c["duplicates"]
        + Decimal("0.25") * (c["corrections"] + c["volume_anomalies"])
        + Decimal("0.1") * c["out_of_order"]
    )
    return Decimal(100) * max(Decimal(0), c["present"] - penalty) / c["expected"]


COUNTS = ["expected", "present", "missing", "duplicates", "corrections", "out_of_order", "price_spikes",
          "volume_anomalies"]  # fmt: skip


def test_summary_counts_flags_divergence_and_score(dbt: DbtRunner, pg_conn) -> None:
    load_scenario(pg_conn)
    dbt("build", *SELECT_DQ)

    # the drill-down in marts: every candle the summary counts, one row each, with what it is;
    # minute 41 (identical duplicate) and anomalies outside the range or of the 1h series are not
    # counted, the spike's reversion (71) is the same event
    drill = query(
        pg_conn,
        "SELECT exchange, symbol, open_time, period_start, is_price_spike, is_volume_anomaly, is_duplicate,"
        " is_correction, is_out_of_order, close FROM marts.data_quality_flagged_candles ORDER BY open_time",
    )
    hour_of = lambda k: T0 + timedelta(hours=k // 60)  # noqa: E731
    assert drill == [
        ("binance", "BTC/USDT", minute(30), hour_of(30), False, False, True, True, False, binance_close(30)),
        ("binance", "BTC/USDT", minute(40), hour_of(40), False, False, False, True, False, binance_close(40)),
        ("binance", "BTC/USDT", minute(65), hour_of(65), False, False, False, False, True, binance_close(65)),
        ("binance", "BTC/USDT", minute(66), hour_of(66), False, False, False, False, True, binance_close(66)),
        ("binance", "BTC/USDT", minute(SPIKE), hour_of(SPIKE), True, False, False, False, False, binance_close(SPIKE)),
        ("binance", "BTC/USDT", minute(VOLUME_SPIKE), hour_of(VOLUME_SPIKE), False, True, False, False, False,
         binance_close(VOLUME_SPIKE)),
    ]  # fmt: skip

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
    want = [
        # 55/60 present; minute 30 is a duplicate and a correction, 40 a correction (twice)
        dict(expected=60, present=55, missing=5, duplicates=1, corrections=2, out_of_order=0, price_spikes=0,
             volume_anomalies=0),
        # 55/60; minutes 65 (in three payloads) and 66 out of order; one spike
        dict(expected=60, present=55, missing=5, duplicates=0, corrections=0, out_of_order=2, price_spikes=1,
             volume_anomalies=0),
        # 56/60 (the zero-volume minute counts as present), 1 volume anomaly
        dict(expected=60, present=56, missing=4, duplicates=0, corrections=0, out_of_order=0, price_spikes=0,
             volume_anomalies=1),
    ]  # fmt: skip
    assert [{k: r[k] for k in COUNTS} for r in rows] == want
    assert [r["cross_exchange_divergence_bps"] for r in rows] == want_div
    assert [r["quality_score"] for r in rows] == [score(w) for w in want]
    assert [r["quality_score"] for r in rows] == [Decimal("90.00"), Decimal("89.67"), Decimal("92.92")]
    # every count of the summary is the number of drill-down rows of its kind in the hour
    kinds = {"price_spikes": 4, "volume_anomalies": 5, "duplicates": 6, "corrections": 7, "out_of_order": 8}
    for r in rows:
        for kind, column in kinds.items():
            assert r[kind] == sum(1 for d in drill if d[3] == r["period_start"] and d[column]), (kind, r)

    (day,) = summary(pg_conn, "binance", "BTC/USDT", "day")
    assert (day["period_start"], day["period_end"]) == (T0, T0 + timedelta(days=1))
    total = {k: sum(w[k] for w in want) for k in COUNTS}
    assert {k: day[k] for k in COUNTS} == total == dict(
        expected=180, present=166, missing=14, duplicates=1, corrections=2, out_of_order=2, price_spikes=1,
        volume_anomalies=1)  # fmt: skip
    assert day["cross_exchange_divergence_bps"] == max(want_div)
    assert day["quality_score"] == score(total) == Decimal("90.86")
    # one scale: the day is its hours weighted by their expected candles
    weighted = sum(unrounded_score(w) * w["expected"] for w in want) / total["expected"]
    assert day["quality_score"] == weighted.quantize(Decimal("0.01"), ROUND_HALF_UP)

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


def test_penalties_are_rates_of_the_expected_candles(dbt: DbtRunner, pg_conn) -> None:
    """A day whose every hour misses a minute and whose odd hours hold a spike (two hours apart, so
    no spike sits in another's 60-candle baseline): a missing or spiked candle costs 100 / 60 of
    an hour and 100 / 1440 of the day, and the day scores its hours' mean weighted by expected
    candles, on the same scale. (With absolute penalties a spike cost 5 points in an hour and in
    a day alike, and the day lost the capped 25 for its 12 spikes: 73.33 against hours of 93.33
    and 98.33.)"""
    with pg_conn.cursor() as cur:
        insert_config(cur, "binance", "BTC/USDT", "1m", T0, T0 + timedelta(days=1))
        for k in range(24 * 60):
            hour, m = divmod(k, 60)
            if m != 30:  # minute 30 of every hour is missing
                close = base_close(m) * (Decimal("1.04") if hour % 2 and m == 10 else 1)
                insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), close.quantize(Decimal("0.01")),
                              base_volume(k))  # fmt: skip
    pg_conn.commit()
    dbt("build", *SELECT_DQ)
    hours = summary(pg_conn, "binance", "BTC/USDT")
    assert [(r["present"], r["missing"], r["price_spikes"]) for r in hours] == [(59, 1, h % 2) for h in range(24)]
    assert [r["quality_score"] for r in hours] == [Decimal("96.67") if h % 2 else Decimal("98.33") for h in range(24)]
    (day,) = summary(pg_conn, "binance", "BTC/USDT", "day")
    assert (day["expected"], day["present"], day["price_spikes"]) == (1440, 1416, 12)
    weighted = sum(unrounded_score(r) * r["expected"] for r in hours) / day["expected"]
    assert day["quality_score"] == weighted.quantize(Decimal("0.01"), ROUND_HALF_UP) == score(day) == Decimal("97.50")


def test_live_market_is_expected_up_to_the_delay(dbt: DbtRunner, pg_conn) -> None:
    start = T0
    with pg_conn.cursor() as cur:
        insert_config(cur, "binance", "BTC/USDT", "1m", start, None)
        for k in range(5):
            insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), base_close(k), base_volume(k))
    pg_conn.commit()
    # as of 00:10:30, with the default delay of 2 minutes, the candles that closed by 00:08:30
    # (00:00-00:07) are expected: 00:05-00:07 are missing
    as_of = '"dq_as_of": "2024-01-01T00:10:30Z"'
    dbt("build", *SELECT_DQ, "--vars", "{" + as_of + "}")
    assert [r[3:9] for r in gap_rows(pg_conn)] == [(minute(5), minute(8), 3, 3, "trailing", "open")]
    dbt("run", *SELECT_DQ, "--vars", "{" + as_of + ', "dq_expected_delay_minutes": 0}')
    assert [r[3:5] for r in gap_rows(pg_conn)] == [(minute(5), minute(10))]
    dbt("run", *SELECT_DQ, "--vars", "{" + as_of + ', "dq_expected_delay_minutes": 4}')
    assert [r[3:5] for r in gap_rows(pg_conn)] == [(minute(5), minute(6))]

    # without dq_as_of: up to now() minus the delay
    before = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    dbt("run", *SELECT_DQ)
    after = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    ((gap_start, gap_end, missing),) = [(r[3], r[4], r[5]) for r in gap_rows(pg_conn)]
    assert gap_start == minute(5) and before <= gap_end <= after
    assert missing == (gap_end - gap_start) / timedelta(minutes=1)
    ((hours, expected),) = query(
        pg_conn, "SELECT count(*), sum(expected) FROM marts.data_quality_summary WHERE grain = 'hour'"
    )
    assert expected == missing + 5 and hours == -(-(gap_end - T0) // timedelta(hours=1))


def test_live_market_with_a_healthy_pipeline_has_no_gap(dbt: DbtRunner, pg_conn) -> None:
    """The hourly build runs while the minute DAG is landing the minute that just closed: at
    01:00:03 the candles up to 00:58 are in staging and 00:59 is being loaded. A healthy live
    market has no missing minute and no gap (with a delay of 0, every live market showed 00:59
    missing and an open trailing gap at every build)."""
    with pg_conn.cursor() as cur:
        insert_config(cur, "binance", "BTC/USDT", "1m", T0, None)
        for k in range(59):
            insert_candle(cur, "binance", "BTC/USDT", "1m", minute(k), base_close(k), base_volume(k))
    pg_conn.commit()
    dbt("build", *SELECT_DQ, "--vars", '{"dq_as_of": "2024-01-01T01:00:03Z"}')
    assert gap_rows(pg_conn) == []
    (hour,) = summary(pg_conn, "binance", "BTC/USDT")
    assert (hour["expected"], hour["present"], hour["missing"], hour["quality_score"]) == (
        58, 58, 0, Decimal("100.00"))  # fmt: skip


def test_real_sample_days(dbt: DbtRunner, loaded_warehouse) -> None:
    """The bundled real candles (no market_config: judged between first and last candle) are complete
    and quiet: no gap, no spike, one volume anomaly (a real burst, 22x the hour's geometric mean)."""
    conn = loaded_warehouse
    result = dbt("build")
    print(f"dbt build incl. data quality (5,760 candles): {result.seconds:.1f} s")
    assert query(conn, "SELECT count(*) FROM marts.data_quality_gaps") == [(0,)]
    assert query(
        conn,
        "SELECT exchange, open_time, is_price_spike, is_volume_anomaly FROM marts.data_quality_flagged_candles",
    ) == [("binance", datetime(2022, 8, 14, 13, 16, tzinfo=UTC), False, True)]
    days = query(
        conn,
        "SELECT exchange, period_start, expected, present, price_spikes, volume_anomalies, quality_score,"
        " cross_exchange_divergence_bps FROM marts.data_quality_summary WHERE grain = 'day'"
        " ORDER BY exchange, period_start",
    )
    assert days == [
        # one volume anomaly: a quarter of a candle out of 1,440 (99.98)
        ("binance", datetime(2022, 8, 14, tzinfo=UTC), 1440, 1440, 0, 1, Decimal("99.98"), None),
        ("binance", datetime(2022, 8, 15, tzinfo=UTC), 1440, 1440, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 23, tzinfo=UTC), 480, 480, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 24, tzinfo=UTC), 1440, 1440, 0, 0, Decimal("100.00"), None),
        ("okx", datetime(2025, 11, 25, tzinfo=UTC), 960, 960, 0, 0, Decimal("100.00"), None),
    ]
    assert query(conn, "SELECT count(*), min(quality_score) FROM marts.data_quality_summary WHERE grain = 'hour'") == [
        (96, Decimal("99.58"))  # the same quarter candle out of 60
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
