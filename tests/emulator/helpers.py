"""Shared constants and CSV readers for the emulator tests."""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SAMPLE_DIR = REPO / "include" / "sample_data"
BINANCE_DIR = SAMPLE_DIR / "binance" / "ETH-USDT" / "1m"
OKX_DIR = SAMPLE_DIR / "okx" / "BTC-USDT" / "1m"
BINANCE_DAY1 = 1660435200000  # 2022-08-14 00:00 UTC
OKX_FIRST = 1763913600000  # 2025-11-23 16:00 UTC (OKX export days are cut at UTC+8)

DEFAULT_CONFIG = {
    "binance_weight_limit": 6000,
    "ban_seconds": 2,
    "ban_after": 3,
    "okx_rate_limit_factor": 1.0,
    "bybit_ip_limit": 600,
    "bybit_endpoint_limit": 20,
    "bybit_ban_seconds": 600,
    "clock_offset_s": 0.0,
}


def binance_rows() -> list[list[str]]:
    """The recorded Binance candles straight from the CSV files (strings, ascending)."""
    rows: list[list[str]] = []
    for path in sorted(BINANCE_DIR.glob("*.csv")):
        with path.open(newline="") as fh:
            rows.extend(csv.reader(fh))
    return rows


def okx_rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(OKX_DIR.glob("*.csv")):
        with path.open(newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows
