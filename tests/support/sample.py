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
