"""parse_candles reads well-formed spot rows of Binance and OKX (and their envelopes) by position instead of through
ccxt's parse_ohlcv. Both paths must give the same candles, still-open counts and reject reasons,
on the bundled real candles and on every malformed row of the bad-input corpus."""

from __future__ import annotations

import csv
import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.payloads import BAD_ROWS, BINANCE_MARKET, OKX_MARKET, T0, kline

from marketflow import parsing
from marketflow.parsing import KLINE_LAYOUTS, parse_candles

SAMPLES = Path(__file__).resolve().parents[2] / "include" / "sample_data"
FETCHED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def binance_rows() -> list[list[Any]]:
    """Binance REST kline rows (times as numbers, values as strings) from the recorded day files."""
    rows = []
    for path in sorted((SAMPLES / "binance").rglob("*.csv")):
        with path.open() as f:
            for r in csv.reader(f):
                rows.append([int(r[0]), *r[1:6], int(r[6]), r[7], int(r[8]), *r[9:12]])
    return rows


def okx_rows() -> list[list[Any]]:
    """OKX REST candle rows (all strings, newest first) from the recorded exports."""
    rows = []
    for path in sorted((SAMPLES / "okx").rglob("*.csv")):
        with path.open() as f:
            for r in csv.DictReader(f):
                rows.append([r["open_time"], r["open"], r["high"], r["low"], r["close"], r["vol"], r["vol_ccy"],
                             r["vol_quote"], r["confirm"]])
    return sorted(rows, key=lambda r: -int(r[0]))


def doc(ccxt_id: str, body: Any, market: dict[str, Any]) -> dict[str, Any]:
    return {"ccxt_id": ccxt_id, "body": json.dumps(body), "timeframe": "1m", "fetched_at": FETCHED_AT,
            "market": market}


def both_paths(monkeypatch: pytest.MonkeyPatch, payload: dict[str, Any]) -> tuple[Any, Any]:
    fast = parse_candles(payload)
    layout = KLINE_LAYOUTS[payload["ccxt_id"]]
    monkeypatch.setitem(parsing.KLINE_LAYOUTS, payload["ccxt_id"], dataclasses.replace(layout, spot_positional=False))
    via_ccxt = parse_candles(payload)
    monkeypatch.setitem(parsing.KLINE_LAYOUTS, payload["ccxt_id"], layout)
    return fast, via_ccxt


def comparable(parsed: parsing.ParsedCandles) -> tuple[Any, ...]:
    # repr keeps a Decimal's exponent ("1.10" is not "1.1") and the types (int vs str)
    return (repr(parsed.candles), repr(parsed.rejects), parsed.still_open, parsed.out_of_order)


@pytest.mark.parametrize(("ccxt_id", "rows", "market"), [
    ("binance", binance_rows(), BINANCE_MARKET),
    ("okx", okx_rows(), OKX_MARKET),
], ids=["binance", "okx"])
def test_real_rows_parse_alike_on_both_paths(monkeypatch: pytest.MonkeyPatch, ccxt_id: str, rows: list[Any],
                                             market: dict[str, Any]) -> None:
    assert len(rows) == 2880
    fast, via_ccxt = both_paths(monkeypatch, doc(ccxt_id, rows, market))
    assert len(fast.candles) == 2880 and not fast.rejects
    assert comparable(fast) == comparable(via_ccxt)
    first = fast.candles[0]
    assert first.open == parsing.Decimal(str(rows[0][1])) and str(first.open) == str(rows[0][1])


@pytest.mark.parametrize(("case", "row", "reason"), BAD_ROWS, ids=[c for c, _, _ in BAD_ROWS])
def test_malformed_rows_get_the_same_reason_on_both_paths(monkeypatch: pytest.MonkeyPatch, case: str, row: Any,
                                                          reason: str) -> None:
    rows = [kline(T0), row, kline(T0 + 2 * 60_000)]
    fast, via_ccxt = both_paths(monkeypatch, doc("binance", rows, BINANCE_MARKET))
    assert comparable(fast) == comparable(via_ccxt)
    assert len(fast.candles) + len(fast.rejects) == 3


def okx_row(row: Any) -> Any:
    """A Binance row as OKX sends it: open time as text, [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]."""
    if not isinstance(row, list) or len(row) < 8:
        return row
    return [str(row[0]) if type(row[0]) is int else row[0], *row[1:6], row[7], row[7], "1"]


@pytest.mark.parametrize(("case", "row", "reason"), BAD_ROWS, ids=[c for c, _, _ in BAD_ROWS])
def test_malformed_okx_rows_get_the_same_reason_on_both_paths(monkeypatch: pytest.MonkeyPatch, case: str, row: Any,
                                                              reason: str) -> None:
    rows = [okx_row(kline(T0 + 2 * 60_000)), okx_row(row), okx_row(kline(T0))]  # newest first
    fast, via_ccxt = both_paths(monkeypatch, doc("okx", {"code": "0", "msg": "", "data": rows}, OKX_MARKET))
    assert comparable(fast) == comparable(via_ccxt)
    assert len(fast.candles) + len(fast.rejects) == 3


@pytest.mark.parametrize("ts", ["01660435200000", "1660435200000.0", "1e12", " 1660435200000", "١٦٦٠٤٣٥٢٠٠٠٠٠",
                                "99999999999999999999"])
def test_odd_okx_open_times_parse_alike_on_both_paths(monkeypatch: pytest.MonkeyPatch, ts: str) -> None:
    row = [ts, "10", "11", "9", "10.5", "1", "10", "10", "1"]
    fast, via_ccxt = both_paths(monkeypatch, doc("okx", {"code": "0", "msg": "", "data": [row]}, OKX_MARKET))
    assert comparable(fast) == comparable(via_ccxt)


def test_only_spot_markets_are_read_by_position(monkeypatch: pytest.MonkeyPatch) -> None:
    # ccxt reads an inverse Binance market's volume from position 7: such rows must not take the shortcut
    inverse = {**BINANCE_MARKET, "type": "delivery", "inverse": True}
    fast, via_ccxt = both_paths(monkeypatch, doc("binance", [kline(T0)], inverse))
    assert comparable(fast) == comparable(via_ccxt)
    assert str(fast.candles[0].volume) == "50.0"  # kline()'s quote volume, at position 7
