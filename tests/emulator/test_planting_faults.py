"""Row faults planted by open time: exactly the rows named are changed, on whichever page holds them."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from exchange_emulator.faults import FaultBook, FaultError, apply_row_fault

from .helpers import BINANCE_DAY1, OKX_FIRST, binance_rows

MINUTE = 60_000
KLINES = f"/api/v3/klines?symbol=ETHUSDT&interval=1m&startTime={BINANCE_DAY1}&limit=10"
CANDLES = f"/api/v5/market/history-candles?instId=BTC-USDT&after={OKX_FIRST + 10 * MINUTE}&limit=10"


def binance_row(k: int, close: str = "1.50000000") -> list:
    ts = BINANCE_DAY1 + k * MINUTE
    return [
        ts,
        "1.00000000",
        "2.00000000",
        "0.50000000",
        close,
        "10.00000",
        ts + MINUTE - 1,
        "15.00000000",
        7,
        "4.00000",
        "6.00000000",
        "0",
    ]


def okx_row(k: int) -> list:
    return [
        str(OKX_FIRST + k * MINUTE),
        "87084",
        "87106.1",
        "87076.9",
        "87101.8",
        "4.86906759",
        "424048.925458154",
        "424048.925458154",
        "1",
    ]


def planted(spec: dict, rows: list, exchange: str = "binance") -> list:
    (fault,) = FaultBook(1).add(spec)
    return apply_row_fault(fault, rows, exchange)


def out_of_order(rows: list, newest_first: bool) -> list[int]:
    """Open times the loader flags: rows that step backwards against the documented order."""
    flagged, previous = [], None
    for r in rows:
        ts = int(r[0])
        if previous is not None and (ts > previous if newest_first else ts < previous):
            flagged.append(ts)
        previous = ts
    return flagged


def test_duplicates_by_open_time_conflict_on_every_copy() -> None:
    rows = [binance_row(k) for k in range(6)]
    out = planted({"kind": "duplicate_rows", "conflicting": True, "open_times": [rows[1][0], rows[4][0]]}, rows)
    assert [r[0] for r in out] == [rows[k][0] for k in (0, 1, 1, 2, 3, 4, 4, 5)]
    assert out[1] == rows[1] and out[2][4] == "1.50000001" and out[2][5] == "10.00001"
    assert out[6][4] == "1.50000001"
    identical = planted({"kind": "duplicate_rows", "open_times": [rows[2][0]]}, rows)
    assert identical[2] == identical[3] == rows[2]


@pytest.mark.parametrize("newest_first", [False, True])
def test_out_of_order_by_open_time_flags_exactly_those_rows(newest_first: bool) -> None:
    rows = [okx_row(k) for k in range(10)] if newest_first else [binance_row(k) for k in range(10)]
    if newest_first:
        rows.reverse()
    times = [int(rows[2][0]), int(rows[6][0]), int(rows[9][0])]  # the last row swaps with the one before
    out = planted({"kind": "out_of_order_rows", "open_times": times}, rows, "okx" if newest_first else "binance")
    assert sorted(int(r[0]) for r in out) == sorted(int(r[0]) for r in rows)
    assert out_of_order(out, newest_first) == [times[0], times[1], int(rows[8][0])]


def test_price_spike_keeps_tick_and_consistency() -> None:
    rows = [binance_row(k) for k in range(3)]
    out = planted({"kind": "price_spike", "open_times": [rows[1][0]], "factor": 1.5}, rows)
    assert out[0] == rows[0] and out[2] == rows[2]
    assert out[1][4] == "2.25000000" and out[1][2] == "2.25000000" and out[1][3] == "0.50000000"
    down = planted({"kind": "price_spike", "open_times": [rows[1][0]], "factor": 0.2}, rows)
    assert down[1][4] == "0.30000000" and down[1][3] == "0.30000000"
    okx = planted({"kind": "price_spike", "open_times": [int(okx_row(0)[0])], "factor": 1.02}, [okx_row(0)], "okx")
    assert okx[0][4] == "88843.8" and Decimal(okx[0][2]) >= Decimal(okx[0][4])


def test_volume_spike_and_zero_volume() -> None:
    rows = [binance_row(k) for k in range(2)]
    out = planted({"kind": "volume_spike", "open_times": [rows[0][0]], "factor": 100}, rows)
    assert out[0][5] == "1000.00000" and out[0][7] == "1500.00000000" and out[0][8] == 700
    assert out[1] == rows[1]
    zero = planted({"kind": "volume_spike", "open_times": [rows[0][0]], "factor": 0}, rows)
    assert (zero[0][5], zero[0][7], zero[0][8], zero[0][9]) == ("0.00000", "0.00000000", 0, "0.00000")
    okx = planted({"kind": "volume_spike", "open_times": [int(okx_row(0)[0])], "factor": 0}, [okx_row(0)], "okx")
    assert all(Decimal(v) == 0 for v in okx[0][5:8])


def test_open_time_specs_are_validated() -> None:
    book = FaultBook(1)
    for bad in (
        {"kind": "price_spike"},
        {"kind": "volume_spike", "open_times": []},
        {"kind": "price_spike", "open_times": [1], "factor": 1},
        {"kind": "out_of_order_rows", "open_times": ["x"]},
        {"kind": "duplicate_rows", "open_times": [True]},
    ):
        with pytest.raises(FaultError):
            book.add(bad)


def test_planted_faults_fire_only_on_the_page_holding_the_rows(live) -> None:
    target = BINANCE_DAY1 + 15 * MINUTE
    live.add_faults(
        [
            {"kind": "price_spike", "exchange": "binance", "open_times": [target], "factor": 2, "count": 5},
            {"kind": "volume_spike", "exchange": "okx", "open_times": [OKX_FIRST + 3 * MINUTE], "count": 5},
        ]
    )
    first = json.loads(live.get(KLINES)[2])  # minutes 0-9: no target row, the fault does not fire
    assert live.faults()[0]["fired"] == 0 and all(r[0] != target for r in first)
    second = json.loads(live.get(KLINES.replace(str(BINANCE_DAY1), str(BINANCE_DAY1 + 10 * MINUTE)))[2])
    spiked = next(r for r in second if r[0] == target)
    recorded = binance_rows()[15]
    assert int(recorded[0]) == target
    assert spiked[4] == "3952.24000000" == format(2 * Decimal(recorded[4]), ".8f")
    assert spiked[2] == spiked[4] and spiked[5] == recorded[5]  # high widened, volume untouched
    assert live.faults()[0]["fired"] == 1 and live.faults()[0]["remaining"] == 4
    data = json.loads(live.get(CANDLES)[2])["data"]
    row = next(r for r in data if int(r[0]) == OKX_FIRST + 3 * MINUTE)
    assert Decimal(row[5]) > 10 * Decimal(next(r for r in data if int(r[0]) == OKX_FIRST + 4 * MINUTE)[5])
    assert live.stats()["faults_fired"]["by_kind"] == {"price_spike": 1, "volume_spike": 1}
