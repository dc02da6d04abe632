"""The bundled real candles, read straight from the files: the independent truth tests compare with."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "include" / "sample_data"

# (exchange, symbol) -> {open_time_ms: (open, high, low, close, volume, quote_volume, trades)}
Candles = dict[int, tuple[Decimal, Decimal, Decimal, Decimal, Decimal, Decimal, int | None]]


def binance_file(path: Path) -> Candles:
    out: Candles = {}
    with path.open() as fh:
        for row in csv.reader(fh):
            ts = int(row[0])
            ts = ts // 1000 if ts > 10**14 else ts  # microsecond dumps since 2025
            out[ts] = (*(Decimal(v) for v in row[1:6]), Decimal(row[7]), int(row[8]))
    return out


def okx_file(path: Path) -> Candles:
    out: Candles = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            out[int(row["open_time"])] = (Decimal(row["open"]), Decimal(row["high"]), Decimal(row["low"]),
                                          Decimal(row["close"]), Decimal(row["vol"]), Decimal(row["vol_quote"]), None)
    return out


def sample_candles(sample_dir: Path = SAMPLE_DIR) -> dict[tuple[str, str], Candles]:
    markets: dict[tuple[str, str], Candles] = {}
    for exchange, reader in (("binance", binance_file), ("okx", okx_file)):
        for market_dir in sorted((sample_dir / exchange).iterdir()):
            symbol = market_dir.name.replace("-", "/")
            candles: Candles = {}
            for path in sorted((market_dir / "1m").glob("*.csv")):
                candles.update(reader(path))
            markets[(exchange, symbol)] = candles
    return markets


def assert_marts_equal_sample(cur) -> None:
    """marts.ohlcv_1m holds exactly the bundled source files' candles (every value, no candle more), and
    marts.latest_price each market's last close. ``cur``: a cursor on the warehouse."""
    from marketflow.timeframes import to_ms

    truth = sample_candles()
    cur.execute("SELECT exchange, symbol, open_time, open, high, low, close, volume, quote_volume, trades "
                "FROM marts.ohlcv_1m")
    rows = cur.fetchall()
    assert len(rows) == sum(len(c) for c in truth.values()) == 5760
    for exchange, symbol, open_time, *values in rows:
        expected = truth[(exchange, symbol)].get(to_ms(open_time))
        assert expected is not None, f"{exchange} {symbol} {open_time}: a candle the source never had"
        assert tuple(values[:5]) == expected[:5], (exchange, symbol, open_time)
        assert (values[5], values[6]) == (expected[5], expected[6]), (exchange, symbol, open_time)
    cur.execute("SELECT exchange, symbol, price FROM marts.latest_price")
    assert dict(((ex, sym), price) for ex, sym, price in cur.fetchall()) == {
        market: candles[max(candles)][3] for market, candles in truth.items()}
