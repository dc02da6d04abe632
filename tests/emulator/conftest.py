"""Fixtures for the exchange emulator tests: one shared emulator process on the real sample data."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from exchange_emulator import EmulatorProcess

from .helpers import DEFAULT_CONFIG, SAMPLE_DIR


@pytest.fixture(scope="session")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(
        SAMPLE_DIR,
        seed=42,
        synthetic_markets=["binance:DOGE/USDT@2024-01-01", "okx:DOGE/USDT@2024-01-01", "bybit:DOGE/USDT@2024-01-01"],
        ban_seconds=2,
    ) as proc:
        yield proc


@pytest.fixture
def live(emu: EmulatorProcess) -> Iterator[EmulatorProcess]:
    """The shared emulator with faults, stats, weights, bans and limits reset around the test."""
    emu.clear_faults()
    emu.configure(**DEFAULT_CONFIG)
    emu.reset()
    yield emu
    emu.clear_faults()
    emu.configure(**DEFAULT_CONFIG)
    emu.reset()


@pytest.fixture
def make_exchange(live: EmulatorProcess):
    """A real ccxt client pointed at the emulator the way production points one at a mirror
    (marketflow.exchanges.rewrite_hosts on ccxt's own API urls, as `api_base_url` does), not through
    the emulator's own URL table; only the emulator's spot-only options are its own."""
    import copy

    import ccxt

    from marketflow.exchanges import rewrite_hosts

    def make(exchange_id: str, **extra):
        klass = getattr(ccxt, exchange_id)
        urls = copy.deepcopy(klass().urls)
        urls["api"] = rewrite_hosts(urls["api"], live.base_url)
        ex = klass({"urls": urls, "options": live.ccxt_options(exchange_id), "enableRateLimit": True,
                    "timeout": 10_000, **extra})
        ex.number = str  # keep the wire strings, so values can be compared exactly
        return ex

    return make
