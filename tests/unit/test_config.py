"""The markets file: typed parsing, ${VAR} substitution, and one clear error per mistake."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from marketflow.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """
defaults:
  timeframes: [1m]
  history_start: "2024-01-01T00:00:00Z"
exchanges:
  binance:
    api_base_url: ${EXCHANGE_URL:}
    options: {fetchMarkets: {types: [spot]}}
    markets:
      - symbol: BTC/USDT
      - symbol: ETH/USDT
        timeframes: [1m, 1h]
        history_start: "2022-08-14T00:00:00Z"
        history_end: "2022-08-16T00:00:00Z"
  okx_eu:
    ccxt_id: okx
    enabled: ${OKX_ENABLED:false}
    markets: [BTC/USDT]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "markets.yml"
    path.write_text(text)
    return path


def test_good_file_parses_into_typed_objects(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"EXCHANGE_URL": "http://127.0.0.1:9"})
    binance = cfg.exchange("binance")
    assert binance.api_base_url == "http://127.0.0.1:9"
    assert binance.options == {"fetchMarkets": {"types": ["spot"]}}
    assert binance.pool == "exchange_binance"
    eth = cfg.market("binance", "ETH/USDT")
    assert eth.timeframes == ("1m", "1h")
    assert eth.history_start == datetime(2022, 8, 14, tzinfo=UTC)
    assert eth.history_end == datetime(2022, 8, 16, tzinfo=UTC)
    assert (eth.base, eth.quote) == ("ETH", "USDT")
    assert cfg.market("binance", "BTC/USDT").history_start == datetime(2024, 1, 1, tzinfo=UTC)
    okx = cfg.exchange("okx_eu")
    assert okx.ccxt_id == "okx" and okx.enabled is False
    assert [m.symbol for m in cfg.markets("1m")] == ["BTC/USDT", "ETH/USDT"]  # okx_eu disabled
    assert [m.symbol for m in cfg.markets("1h")] == ["ETH/USDT"]


def test_defaults_apply_when_variables_are_unset(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), env={"OKX_ENABLED": "true"})
    assert cfg.exchange("binance").api_base_url is None  # empty default = live exchange
    assert cfg.exchange("okx_eu").enabled is True


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        (("binance:\n", "binanse:\n"), "exchanges.binanse", "unknown ccxt exchange id 'binanse'"),
        (("ccxt_id: okx", "ccxt_id: okex9"), "exchanges.okx_eu.ccxt_id", "unknown ccxt exchange id 'okex9'"),
        (("- symbol: BTC/USDT", "- symbol: btc-usdt"), "exchanges.binance.markets[0].symbol", "malformed symbol"),
        (("- symbol: ETH/USDT", "- symbol: BTC/USDT"), "exchanges.binance.markets[1].symbol", "duplicate market"),
        (("timeframes: [1m, 1h]", "timeframes: [1m, 7m]"), "exchanges.binance.markets[1].timeframes",
         "unsupported timeframe '7m'"),
        (("${EXCHANGE_URL:}", "${EXCHANGE_URL}"), "exchanges.binance.api_base_url",
         "environment variable EXCHANGE_URL is not set"),
        (("history_end: \"2022-08-16T00:00:00Z\"", "history_end: \"2021-01-01T00:00:00Z\""),
         "exchanges.binance.markets[1].history_end", "not after history_start"),
        (("history_start: \"2022-08-14T00:00:00Z\"", "history_start: \"yesterday\""),
         "exchanges.binance.markets[1].history_start", "not an ISO-8601 timestamp"),
        (("options: {", "colour: red\n    options: {"), "exchanges.binance.colour", "unknown key"),
    ],
)
def test_each_mistake_names_file_key_and_fix(tmp_path: Path, patch: tuple[str, str], key: str, words: str) -> None:
    old, new = patch
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message
    assert "Fix: " in message and err.value.fix


def test_timeframe_the_exchange_does_not_offer(tmp_path: Path) -> None:
    # 3d exists nowhere in marketflow; 2h exists in marketflow but e.g. not in every exchange.
    path = write(tmp_path, GOOD.replace("markets: [BTC/USDT]", "timeframes: [3d]\n    markets: [BTC/USDT]"))
    with pytest.raises(ConfigError, match=r"okx_eu\.timeframes: unsupported timeframe '3d'"):
        load_config(path, env={})


def test_deep_check_knows_what_each_exchange_offers(tmp_path: Path) -> None:
    # Kraken has no 3-minute candles; the fast parse-time check cannot know, the deep check does.
    text = "exchanges:\n  kraken:\n    markets:\n      - symbol: BTC/USD\n        timeframes: [1m, 3m]\n"
    path = write(tmp_path, text)
    assert load_config(path, env={}).market("kraken", "BTC/USD").timeframes == ("1m", "3m")
    with pytest.raises(ConfigError, match=r"kraken\.markets\[0\]\.timeframes: timeframe '3m' is not offered by kraken"):
        load_config(path, env={}, deep=True)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist.*MARKETFLOW_CONFIG"):
        load_config(tmp_path / "nope.yml", env={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "exchanges: [unclosed"), env={})
    with pytest.raises(ConfigError, match="no exchanges configured"):
        load_config(write(tmp_path, "defaults: {}\n"), env={})


@pytest.mark.parametrize("name", ["markets.yml", "markets.demo.yml"])
def test_shipped_config_files_parse(name: str) -> None:
    cfg = load_config(REPO / "include" / "config" / name, env={"MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:1"})
    assert cfg.markets("1m")
    assert {e.ccxt_id for e in cfg.enabled_exchanges} == {"binance", "okx"}
