"""The bench's markets and window: synthetic Binance markets served by the emulator.

Binance is the exchange whose limit (6000 request weight per minute, 1000 klines per call at
weight 2) the backfill figure is measured against; the peer downloads the same pairs and days.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT", "LTC/USDT", "DOT/USDT",
           "LINK/USDT", "AVAX/USDT"]
# A closed past window, so every run of it sees identical candles (the emulator is seeded).
WINDOW_START = datetime(2024, 1, 1, tzinfo=UTC)
BINANCE_WEIGHT_LIMIT = 6000
KLINES_PER_CALL = 1000
KLINES_WEIGHT = 2


def symbols(count: int) -> list[str]:
    extra = [f"B{i:02d}/USDT" for i in range(max(0, count - len(SYMBOLS)))]
    return (SYMBOLS + extra)[:count]


def window(days: int) -> tuple[datetime, datetime]:
    return WINDOW_START, WINDOW_START + timedelta(days=days)


def emulator_args(markets: list[str], weight_limit: int = BINANCE_WEIGHT_LIMIT, seed: int = 7) -> list[str]:
    """Only the bench's markets (on Binance), listed in 2020, with the given weight limit (0 = off)."""
    spec = ",".join(f"binance:{s}@2020-01-01" for s in markets)
    return ["--no-default-markets", "--synthetic-markets", spec, "--seed", str(seed),
            "--binance-weight-limit", str(weight_limit)]


def write_markets_config(path: Path, markets: list[str], start: datetime | None, end: datetime | None,
                         rate_limit_share: float | None = None, pool_slots: int | None = None) -> Path:
    """A markets file for the bench; bounded history when start/end are given, live markets otherwise."""
    lines = [
        "# Written by the benchmark (bench/workload.py); synthetic markets on the exchange emulator.",
        "defaults:",
        "  timeframes: [1m]",
        "  overlap_minutes: 2",
        "  schedule_start: ${MARKETFLOW_SCHEDULE_START:2026-11-01T00:00:00Z}",
        "exchanges:",
        "  binance:",
        "    api_base_url: ${MARKETFLOW_EXCHANGE_URL}",
        "    options:",
        "      fetchMarkets: {types: [spot]}",
    ]
    if rate_limit_share is not None:
        lines.append(f"    rate_limit_share: {rate_limit_share}")
    if pool_slots is not None:
        lines.append(f"    pool_slots: {pool_slots}")
    lines.append("    markets:")
    for symbol in markets:
        lines.append(f"      - symbol: {symbol}")
        if start is not None:
            lines.append(f'        history_start: "{start:%Y-%m-%dT%H:%M:%SZ}"')
        if end is not None:
            lines.append(f'        history_end: "{end:%Y-%m-%dT%H:%M:%SZ}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
