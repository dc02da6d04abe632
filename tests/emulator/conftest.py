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
        synthetic_markets=["binance:DOGE/USDT@2024-01-01", "okx:DOGE/USDT@2024-01-01"],
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
    import ccxt

    def make(exchange_id: str, **extra):
        ex = getattr(ccxt, exchange_id)(live.ccxt_config(exchange_id, **{"timeout": 10_000, **extra}))
        ex.number = str  # keep the wire strings, so values can be compared exactly
        return ex

    return make
