"""A planted-fault dataset: the data-quality marts report exactly the faults the emulator injected.

Three hours of the emulator's synthetic SOL/USDT on Binance (oldest first, one 1000-row page) and
OKX (newest first, history-candles) go through the real pipeline: ccxt extract -> MongoDB raw ->
staging load (which records duplicates and disorder in staging.ohlcv_anomalies) -> ops.market_config
sync -> `dbt build`. Every fault is planted by open time, so it lands on exactly the rows chosen
here, whatever page holds them. Then the faults are removed and the window re-fetched: the gaps
close, the spikes are corrected, and every corrected minute is counted as a correction (`revised`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from support.dbt_helpers import DBT_EXECUTABLE, DbtRunner, dbt_env_for

from exchange_emulator import EmulatorProcess
from marketflow.config import load_config
from marketflow.pipeline import Attempt, extract_market, load_market, plan_window
from marketflow.raw_store import RawStore
from marketflow.timeframes import to_ms

REPO = Path(__file__).resolve().parents[2]

T0 = datetime(2025, 6, 1, tzinfo=UTC)
HOURS = 3
SYMBOL = "SOL/USDT"
EXCHANGES = ("binance", "okx")
MARKETS = """
defaults:
  timeframes: [1m]
exchanges:
{blocks}
"""
BLOCK = """  {exchange}:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets:
      - symbol: {symbol}
        history_start: "{start}"
        history_end: "{end}"
"""

# Minutes after T0 of every planted fault (the same plan on both exchanges). Out-of-order rows are
# swapped with the next row, which then is the only row out of the documented order; nothing is
# planted next to another fault.
MISSING = [0, 20, 100, 101, 102, 179]  # leading, interior, a 3-minute hole, trailing
CONFLICTING = [30, 60, 150]  # same minute twice in one payload, different values
IDENTICAL = [45]  # same minute twice, same values: not a "duplicate" in the marts' sense
OUT_OF_ORDER = [10, 50, 80, 130]
SPIKES = {70: 1.03, 140: 0.97}  # close x factor, the next candle untouched (jump and reversion)
VOLUME_SPIKES = [110]  # volume x 100
ZERO_VOLUME = [40]  # a quiet minute the exchange reports with volume 0: a candle, not a gap

EXPECTED_GAPS = [(0, 1, "leading"), (20, 21, "interior"), (100, 103, "interior"), (179, 180, "trailing")]


def minute(k: int) -> datetime:
    return T0 + timedelta(minutes=k)


def ms(k: int) -> int:
    return to_ms(minute(k))


def planted_faults(exchange: str) -> list[dict]:
    common = {"exchange": exchange, "symbol": SYMBOL, "count": 100}
    return [
        {**common, "kind": "missing_minutes", "open_times": [ms(k) for k in MISSING]},
        {**common, "kind": "duplicate_rows", "conflicting": True, "open_times": [ms(k) for k in CONFLICTING]},
        {**common, "kind": "duplicate_rows", "open_times": [ms(k) for k in IDENTICAL]},
        {**common, "kind": "out_of_order_rows", "open_times": [ms(k) for k in OUT_OF_ORDER]},
        *({**common, "kind": "price_spike", "open_times": [ms(k)], "factor": f} for k, f in SPIKES.items()),
        {**common, "kind": "volume_spike", "open_times": [ms(k) for k in VOLUME_SPIKES], "factor": 100},
        {**common, "kind": "volume_spike", "open_times": [ms(k) for k in ZERO_VOLUME], "factor": 0},
    ]


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    # No recorded data: SOL/USDT is synthetic (deterministic for the seed) on both exchanges.
    with EmulatorProcess(seed=42, binance_weight_limit=0, okx_rate_limit_factor=0) as emu:
        yield emu


@pytest.fixture
def dbt(warehouse_dsn: str, tmp_path: Path) -> DbtRunner:
    assert Path(DBT_EXECUTABLE).exists(), f"dbt executable not found: {DBT_EXECUTABLE} (set MARKETFLOW_DBT_EXECUTABLE)"
    return DbtRunner(dbt_env_for(warehouse_dsn, tmp_path / "dbt"))


def build_quality_marts(dbt: DbtRunner) -> None:
    dbt("build", "--select", "+data_quality_gaps", "+data_quality_summary", "+data_quality_flagged_candles")


def run_pipeline(config, raw: RawStore, conn, run_id: str) -> list[dict]:
    window = plan_window("1m", None, None, {"start": T0.isoformat(), "end": minute(60 * HOURS).isoformat()}, 0)
    results = []
    for i, market in enumerate(config.markets("1m")):
        extracted = extract_market(config, market, "1m", window, raw, Attempt("test", run_id, "extract", i))
        results.append(load_market(conn, raw, extracted, Attempt("test", run_id, "load", i)))
    return results


def sync_config(conn, config) -> None:
    try:
        from marketflow.ops import sync_market_config
    except ImportError:  # before the ops module existed: mirror the markets file by hand
        with conn.cursor() as cur:
            for ex in config.exchanges:
                for m in ex.markets:
                    cur.execute(
                        "INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start,"
                        " history_end, enabled) VALUES (%s, %s, '1m', %s, %s, %s, true)",
                        (m.exchange, m.symbol, ex.ccxt_id, m.history_start, m.history_end),
                    )
        conn.commit()
        return
    sync_market_config(conn, config)


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.commit()
    return rows


def expected_hours(phase: int) -> dict[int, dict[str, int]]:
    """Per hour (0..2) the counts the summary must report, derived from the plan alone."""
    hours = {h: {"expected": 60, "present": 60, "duplicates": 0, "corrections": 0, "out_of_order": 0,
                 "price_spikes": 0, "volume_anomalies": 0} for h in range(HOURS)}  # fmt: skip

    def add(key: str, minutes) -> None:
        for k in minutes:
            hours[k // 60][key] += 1

    add("out_of_order", OUT_OF_ORDER)  # anomaly rows of the first fetch stay
    add("duplicates", CONFLICTING)
    if phase == 1:
        for k in MISSING:
            hours[k // 60]["present"] -= 1
        add("price_spikes", SPIKES)
        add("volume_anomalies", VOLUME_SPIKES)
    else:
        # the re-fetch corrected every minute the faults had changed: conflicting copies (the later,
        # altered row had won), spikes, the volume spike and the zero-volume minute
        add("corrections", [*CONFLICTING, *SPIKES, *VOLUME_SPIKES, *ZERO_VOLUME])
    return hours


def score(c: dict[str, int]) -> Decimal:
    """quality_score as documented: the share of expected candles present and clean, in percent."""
    penalty = (
        c["price_spikes"]
        + Decimal("0.5") * c["duplicates"]
        + Decimal("0.25") * (c["corrections"] + c["volume_anomalies"])
        + Decimal("0.1") * c["out_of_order"]
    )
    value = Decimal(100) * max(Decimal(0), c["present"] - penalty) / c["expected"]
    return value.quantize(Decimal("0.01"), ROUND_HALF_UP)


def summary(conn, exchange: str, grain: str) -> dict[datetime, dict]:
    cols = [
        "expected",
        "present",
        "missing",
        "duplicates",
        "corrections",
        "out_of_order",
        "price_spikes",
        "volume_anomalies",
        "cross_exchange_divergence_bps",
        "quality_score",
    ]
    rows = query(
        conn,
        f"SELECT period_start, {', '.join(cols)} FROM marts.data_quality_summary "
        "WHERE exchange = %s AND symbol = %s AND timeframe = '1m' AND grain = %s",
        (exchange, SYMBOL, grain),
    )
    return {r[0]: dict(zip(cols, r[1:], strict=True)) for r in rows}


def divergence_by_hour(conn, exchange: str) -> dict[datetime, Decimal]:
    """Max |close - other exchange's close| / mid in bps per hour, computed here from staging."""
    other = next(e for e in EXCHANGES if e != exchange)
    closes = {e: dict(query(conn, "SELECT open_time, close FROM staging.ohlcv WHERE exchange = %s AND symbol = %s",
                            (e, SYMBOL))) for e in (exchange, other)}  # fmt: skip
    out: dict[datetime, Decimal] = {}
    for t, a in closes[exchange].items():
        b = closes[other].get(t)
        if b is None:
            continue
        bps = abs(a - b) / ((a + b) / 2) * 10_000
        hour = t.replace(minute=0)
        out[hour] = max(out.get(hour, Decimal(0)), bps)
    return out


def check_summary(conn, phase: int) -> None:
    plan = expected_hours(phase)
    for exchange in EXCHANGES:
        hours = summary(conn, exchange, "hour")
        assert sorted(hours) == [T0 + timedelta(hours=h) for h in range(HOURS)], exchange
        divergence = divergence_by_hour(conn, exchange)
        for h, want in plan.items():
            got = hours[T0 + timedelta(hours=h)]
            counts = {k: got[k] for k in want}
            assert counts == want, (exchange, phase, h, counts, want)
            assert got["missing"] == want["expected"] - want["present"]
            assert got["quality_score"] == score(want), (exchange, phase, h)
            # both exchanges list SOL/USDT: the divergence is the largest gap between their closes
            assert got["cross_exchange_divergence_bps"] is not None
            assert abs(got["cross_exchange_divergence_bps"] - divergence[T0 + timedelta(hours=h)]) <= Decimal(
                "0.0001"
            ), (exchange, h)
        total = {k: sum(c[k] for c in plan.values()) for k in plan[0]}
        (day,) = summary(conn, exchange, "day").values()
        assert {k: day[k] for k in total} == total, (exchange, phase, day)
        assert day["quality_score"] == score(total)


def test_marts_report_exactly_the_planted_faults(emulator, tmp_path, mongo_db, pg_conn, dbt) -> None:
    path = tmp_path / "markets.yml"
    blocks = "".join(
        BLOCK.format(exchange=e, url=emulator.base_url, symbol=SYMBOL, start=T0.isoformat(),
                     end=minute(60 * HOURS).isoformat())
        for e in EXCHANGES
    )  # fmt: skip
    path.write_text(MARKETS.format(blocks=blocks))
    config = load_config(path, env={})
    raw = RawStore(mongo_db)
    emulator.clear_faults()
    for exchange in EXCHANGES:
        emulator.add_faults(planted_faults(exchange))

    results = run_pipeline(config, raw, pg_conn, "run-1")
    assert [r["inserted"] for r in results] == [60 * HOURS - len(MISSING)] * 2
    assert all(r["rejected"] == 0 for r in results)
    sync_config(pg_conn, config)
    # the repair scheduler already queued the 3-minute hole on Binance
    with pg_conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ops.backfill_tasks (exchange, symbol, timeframe, window_start, window_end)"
            " VALUES ('binance', %s, '1m', %s, %s)",
            (SYMBOL, minute(100), minute(103)),
        )
    pg_conn.commit()

    # what the loader saw: exactly the planted duplicates and disorder
    for exchange in EXCHANGES:
        anomalies = query(
            pg_conn,
            "SELECT kind, open_time FROM staging.ohlcv_anomalies WHERE exchange = %s ORDER BY kind, open_time",
            (exchange,),
        )
        assert anomalies == sorted(
            [("duplicate_conflict", minute(k)) for k in CONFLICTING]
            + [("duplicate_identical", minute(k)) for k in IDENTICAL]
            + [("out_of_order", minute(k)) for k in OUT_OF_ORDER]
        ), exchange
        (zero,) = query(
            pg_conn,
            "SELECT volume FROM staging.ohlcv WHERE exchange = %s AND open_time = %s",
            (exchange, minute(ZERO_VOLUME[0])),
        )
        assert zero == (0,)

    build_quality_marts(dbt)

    for exchange in EXCHANGES:
        gaps = query(pg_conn, "SELECT gap_start, gap_end, missing_minutes, missing_candles, gap_kind, status"
                              " FROM marts.data_quality_gaps WHERE exchange = %s AND symbol = %s ORDER BY gap_start",
                     (exchange, SYMBOL))  # fmt: skip
        want = [(minute(a), minute(b), b - a, b - a, kind,
                 "repair_scheduled" if (exchange, a) == ("binance", 100) else "open")
                for a, b, kind in EXPECTED_GAPS]  # fmt: skip
        assert gaps == want, exchange  # the zero-volume minute (00:40) is not a gap
        assert sum(g[2] for g in gaps) == len(MISSING)
        flags = query(pg_conn, "SELECT open_time, is_price_spike, is_volume_anomaly FROM"
                               " marts.data_quality_flagged_candles WHERE exchange = %s"
                               " AND (is_price_spike OR is_volume_anomaly) ORDER BY open_time",
                      (exchange,))  # fmt: skip
        assert flags == sorted(
            [(minute(k), True, False) for k in SPIKES] + [(minute(k), False, True) for k in VOLUME_SPIKES]
        ), exchange
    check_summary(pg_conn, phase=1)

    # The exchange answers cleanly again: a re-fetch fills the holes and corrects the bad prints.
    emulator.clear_faults()
    results = run_pipeline(config, raw, pg_conn, "run-2")
    assert [r["inserted"] for r in results] == [len(MISSING)] * 2
    build_quality_marts(dbt)
    assert query(pg_conn, "SELECT * FROM marts.data_quality_gaps") == []  # the pending task's window is full
    assert query(pg_conn, "SELECT count(*) FROM marts.data_quality_flagged_candles"
                          " WHERE is_price_spike OR is_volume_anomaly") == [(0,)]
    check_summary(pg_conn, phase=2)
