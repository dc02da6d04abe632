"""Offline Binance/OKX/Bybit spot exchange emulator for ccxt (see README.md in this package).

Run: ``python -m exchange_emulator --data-dir DIR --port 8765``.
"""

from exchange_emulator.ccxt_config import ccxt_config, ccxt_options, ccxt_urls
from exchange_emulator.testing import EmulatorProcess

__all__ = ["EmulatorProcess", "ccxt_config", "ccxt_options", "ccxt_urls"]
