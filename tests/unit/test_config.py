"""The markets file: typed parsing, ${VAR} substitution, one clear line per mistake, and its JSON Schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml

import marketflow
from marketflow.config import ConfigError, ccxt_exchange_ids, json_schema, load_config

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


def _ccxt_class(ccxt_id: str):
    """The exchange as ccxt describes it, read here without marketflow (the oracle of the checks below)."""
    import ccxt

    return getattr(ccxt, ccxt_id)()


def test_a_timeframe_the_exchange_does_not_offer_fails_the_load(tmp_path: Path) -> None:
    # Kraken has no 3-minute candles: DAG parsing (a plain load) refuses it, without importing ccxt.
    assert "3m" not in _ccxt_class("kraken").timeframes and "1m" in _ccxt_class("kraken").timeframes
    path = write(tmp_path, "exchanges:\n  kraken:\n    markets:\n      - {symbol: BTC/USD, timeframes: [1m, 3m]}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == (f"{path}: exchanges.kraken.markets[0].timeframes: timeframe '3m' is not offered by "
                              "kraken. Fix: use one of 1m, 5m, 15m, 30m, 1h, 4h, 1d, 1w")


def test_an_exchange_that_cannot_fetch_candles_is_refused(tmp_path: Path) -> None:
    assert not _ccxt_class("coincheck").has.get("fetchOHLCV")
    text = "exchanges:\n  coincheck:\n    markets: [BTC/JPY]\n  binance:\n    markets: [BTC/USDT]\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == (f"{path}: exchanges.coincheck: coincheck cannot fetch candles (ccxt's "
                              "has['fetchOHLCV'] is false). Fix: remove the exchange or set enabled: false")
    assert (err.value.key, err.value.fix) == ("exchanges.coincheck", "remove the exchange or set enabled: false")
    # disabled, it is never called: no refusal
    disabled = write(tmp_path, text.replace("  coincheck:\n", "  coincheck:\n    enabled: false\n"))
    assert load_config(disabled, env={}).exchange("coincheck").enabled is False


def test_dag_parsing_checks_capabilities_without_importing_ccxt(tmp_path: Path) -> None:
    """The refusals run at every DAG parse from the committed capability snapshot: importing ccxt there
    would cost every parse about a second."""
    path = write(tmp_path, "exchanges:\n  kraken:\n    markets: [BTC/USD]\n  coincheck:\n    markets: [BTC/JPY]\n")
    script = ("import sys\nfrom marketflow.config import ConfigError, load_config\n"
              f"try:\n    load_config({str(path)!r}, env={{}})\nexcept ConfigError as exc:\n    print(exc.key)\n"
              "print('ccxt' in sys.modules)\n")
    plugins = Path(marketflow.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(plugins)}).stdout.split()
    assert out == ["exchanges.coincheck", "False"]


def test_warnings_name_what_an_exchange_cannot_give(tmp_path: Path) -> None:
    """A capped history and no batch tickers are warned at every load; no quote volume or trade count
    by the deep check (check-config), which asks the parser. Warnings never fail a load."""
    assert not _ccxt_class("bitbank").has.get("fetchTickers") and _ccxt_class("bitbank").has.get("fetchOHLCV")
    text = ("exchanges:\n  kraken:\n    markets: [BTC/USD]\n  bitbank:\n    markets: [BTC/JPY]\n"
            "  binance:\n    markets: [BTC/USDT]\n")
    path = write(tmp_path, text)
    kraken_history = (f"{path}: exchanges.kraken: kraken serves only its newest 720 candles of each timeframe: older "
                      "windows are reported beyond_exchange_history, not fetched")
    bitbank_tickers = (f"{path}: exchanges.bitbank: bitbank has no batch tickers (ccxt's has['fetchTickers'] is "
                       "false): one ticker request per market")
    assert load_config(path, env={}).warnings == (kraken_history, bitbank_tickers)
    deep = load_config(path, env={}, deep=True).warnings
    # Kraken sends a trade count and no quote volume; Binance sends both (parsing.KLINE_LAYOUTS)
    assert deep == (kraken_history,
                    f"{path}: exchanges.kraken: no quote volume: kraken does not send it; the column stays NULL",
                    bitbank_tickers,
                    f"{path}: exchanges.bitbank: no quote volume: marketflow has no field map for bitbank (add it to "
                    "parsing.KLINE_LAYOUTS); the column stays NULL",
                    f"{path}: exchanges.bitbank: no trade count: marketflow has no field map for bitbank (add it to "
                    "parsing.KLINE_LAYOUTS); the column stays NULL")
    # the markets file's facts override the documented cap: no cap, no warning
    lifted = write(tmp_path, text.replace("  kraken:\n", "  kraken:\n    facts: {history_candles: 0}\n"))
    assert load_config(lifted, env={}).warnings == (bitbank_tickers.replace(str(path), str(lifted)),)


def test_facts_overrides_are_checked_and_passed_on(tmp_path: Path) -> None:
    path = write(tmp_path, "exchanges:\n  gate:\n    facts: {page_limit: 500, row_order: oldest_first}\n"
                           "    markets: [BTC/USDT]\n")
    assert load_config(path, env={}).exchange("gate").facts == {"page_limit": 500, "row_order": "oldest_first"}
    bad = write(tmp_path, "exchanges:\n  gate:\n    facts: {page_limit: 0, paging: sideways, depth: 3}\n"
                          "    markets: [BTC/USDT]\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, env={})
    assert [i.key for i in err.value.issues] == ["exchanges.gate.facts.page_limit", "exchanges.gate.facts.paging",
                                                 "exchanges.gate.facts.depth"]
    assert str(err.value).splitlines()[0].startswith(f"{bad}: exchanges.gate.facts.page_limit: 0 is out of range. "
                                                     "Fix: use a whole number greater than 0")


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


# --- messages for the usual mistakes: typos, types, timestamps, timeframes, several at once ---------------


def load_patched(tmp_path: Path, *patches: tuple[str, str], env: dict[str, str] | None = None) -> ConfigError:
    text = GOOD
    for old, new in patches:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env or {})
    assert str(err.value).startswith(f"{path}: {err.value.key}: "), err.value
    return err.value


@pytest.mark.parametrize(
    ("patch", "key", "closest"),
    [
        (("  timeframes: [1m]", "  timeframe: [1m]"), "defaults.timeframe", "timeframes"),
        (("    options: {", "    pool_slot: 3\n    options: {"), "exchanges.binance.pool_slot", "pool_slots"),
        (("        history_end:", "        history_ends:"), "exchanges.binance.markets[1].history_ends", "history_end"),
        (("    ccxt_id: okx", "    ccxtid: okx\n    ccxt_id: okx"), "exchanges.okx_eu.ccxtid", "ccxt_id"),
        (("defaults:\n", "defaults:\n  timeouts: {minute_tsk: 100}\n"), "defaults.timeouts.minute_tsk", "minute_task"),
        (("exchanges:", "housekeeping: {ops_retention: 30}\nexchanges:"), "housekeeping.ops_retention",
         "ops_retention_days"),
    ],
)
def test_an_unknown_key_suggests_the_closest_one(tmp_path: Path, patch: tuple[str, str], key: str,
                                                 closest: str) -> None:
    err = load_patched(tmp_path, patch)
    assert (err.key, err.problem) == (key, "unknown key")
    assert f"did you mean '{closest}'?" in err.fix


def test_an_unknown_key_with_no_near_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    err = load_patched(tmp_path, ("options: {", "colour: red\n    options: {"))
    assert err.key == "exchanges.binance.colour"
    assert "use one of: api_base_url, backfill_pool_slots, ccxt_id," in err.fix and "timeout_ms" in err.fix


@pytest.mark.parametrize(
    ("patch", "key", "problem", "fix"),
    [
        (("    options: {", "    pool_slots: two\n    options: {"), "exchanges.binance.pool_slots",
         "'two' is not an integer", "write a whole number greater than 0 (default 2)"),
        (("    options: {", "    pool_slots: 0\n    options: {"), "exchanges.binance.pool_slots",
         "0 is out of range", "use a whole number greater than 0 (default 2)"),
        (("    options: {", "    rate_limit_share: 1.5\n    options: {"), "exchanges.binance.rate_limit_share",
         "1.5 is out of range", "greater than 0 and at most 1 (default 0.9)"),
        (("    options: {", "    rate_limit_share: most\n    options: {"), "exchanges.binance.rate_limit_share",
         "'most' is not a number", "write a number greater than 0 and at most 1"),
        (("  timeframes: [1m]", "  timeframes: [1m]\n  overlap_minutes: -1"), "defaults.overlap_minutes",
         "-1 is out of range", "use a whole number at least 0 (default 2)"),
        (("${OKX_ENABLED:false}", "sometimes"), "exchanges.okx_eu.enabled", "'sometimes' is not a boolean",
         "write true or false"),
        (("options: {fetchMarkets: {types: [spot]}}", "options: [spot]"), "exchanges.binance.options",
         "expected a mapping", "e.g. 'options: {fetchMarkets: {types: [spot]}}'"),
        (("markets: [BTC/USDT]", "markets: BTC/USDT"), "exchanges.okx_eu.markets", "expected a list, got str",
         "e.g. 'markets: [BTC/USDT, "),
        (("- symbol: BTC/USDT", "- symbol: 5"), "exchanges.binance.markets[0].symbol", "expected text, got int 5",
         "write it as text"),
        (("markets: [BTC/USDT]", "markets: [{timeframes: [1h]}]"), "exchanges.okx_eu.markets[0].symbol",
         "no symbol configured", "add it, e.g. 'symbol: BTC/USDT'"),
        (("  okx_eu:", "  okx_eu: [BTC/USDT]\n  okx_old:"), "exchanges.okx_eu", "expected a mapping",
         "give the exchange a 'markets:' list"),
    ],
)
def test_a_wrong_type_or_value_says_what_the_key_takes(tmp_path: Path, patch: tuple[str, str], key: str, problem: str,
                                                       fix: str) -> None:
    err = load_patched(tmp_path, patch)
    assert err.key == key and problem in err.problem and fix in err.fix, err


def test_a_substituted_value_is_checked_after_substitution(tmp_path: Path) -> None:
    err = load_patched(tmp_path, env={"OKX_ENABLED": "sometimes"})
    assert (err.key, err.problem) == ("exchanges.okx_eu.enabled", "'sometimes' is not a boolean")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ('"yesterday"', "exchanges.binance.markets[1].history_start"),
        ('"2022-13-14T00:00:00Z"', "exchanges.binance.markets[1].history_start"),  # month 13
        ('"2022-08-14T25:00:00Z"', "exchanges.binance.markets[1].history_start"),  # hour 25
        ("1660435200", "exchanges.binance.markets[1].history_start"),  # epoch seconds are not a timestamp here
    ],
)
def test_a_bad_timestamp_is_named_with_an_example(tmp_path: Path, value: str, key: str) -> None:
    err = load_patched(tmp_path, ('history_start: "2022-08-14T00:00:00Z"', f"history_start: {value}"))
    assert err.key == key and "is not an ISO-8601 timestamp" in err.problem
    assert err.fix == "write e.g. 2024-01-01T00:00:00Z"


def test_a_bad_schedule_start_and_history_end_are_named(tmp_path: Path) -> None:
    err = load_patched(tmp_path, ("defaults:\n", "defaults:\n  schedule_start: soon\n"),
                       ('history_end: "2022-08-16T00:00:00Z"', "history_end: next week"))
    assert [i.key for i in err.issues] == ["defaults.schedule_start", "exchanges.binance.markets[1].history_end"]
    assert all("is not an ISO-8601 timestamp" in i.problem for i in err.issues)


def test_timestamps_are_read_as_utc(tmp_path: Path) -> None:
    text = GOOD.replace('history_start: "2022-08-14T00:00:00Z"', 'history_start: "2022-08-14T02:00:00+02:00"')
    text = text.replace('history_start: "2024-01-01T00:00:00Z"', "history_start: 2024-01-01")  # a YAML date
    text = text.replace('history_end: "2022-08-16T00:00:00Z"', 'history_end: "2022-08-16T00:00:00"')  # no zone
    cfg = load_config(write(tmp_path, text), env={})
    eth = cfg.market("binance", "ETH/USDT")
    assert eth.history_start == datetime(2022, 8, 14, tzinfo=UTC)
    assert eth.history_end == datetime(2022, 8, 16, tzinfo=UTC)
    assert cfg.market("binance", "BTC/USDT").history_start == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("timeframes", "problem"),
    [
        ("[1m, 2x, 7m]", "unsupported timeframe '2x', '7m'"),
        ("90s", "unsupported timeframe '90s'"),
        ("[]", "expected a non-empty list of timeframes"),
        ("[1m, 1h, 1m]", "a timeframe is listed twice"),
        ("{1m: true}", "expected a list, got dict"),
    ],
)
def test_a_bad_timeframe_list_is_named(tmp_path: Path, timeframes: str, problem: str) -> None:
    err = load_patched(tmp_path, ("timeframes: [1m, 1h]", f"timeframes: {timeframes}"))
    assert err.key == "exchanges.binance.markets[1].timeframes" and problem in err.problem
    assert err.fix


def test_a_single_timeframe_may_be_written_without_a_list(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace("timeframes: [1m, 1h]", "timeframes: 1h")), env={})
    assert cfg.market("binance", "ETH/USDT").timeframes == ("1h",)


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    text = """
defaults:
  timeframes: [1m, 7m]
  overlap_minuts: 3
exchanges:
  binanse:
    pool_slots: two
    markets: [BTC/USDT, btc-usdt]
  okx:
    enabled: maybe
    markets: [ETH/USDT]
housekeeping:
  batch_size: 10
"""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    keys = ["exchanges.binanse", "defaults.timeframes", "defaults.overlap_minuts", "exchanges.binanse.pool_slots",
            "exchanges.binanse.markets[1].symbol", "exchanges.okx.enabled", "housekeeping.batch_size"]
    assert [i.key for i in err.value.issues] == keys
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == keys  # one line per mistake
    assert all(line.startswith(f"{path}: ") and ". Fix: " in line for line in lines)
    assert "did you mean binance" in lines[0] and "did you mean 'overlap_minutes'?" in lines[2]


def test_every_unset_variable_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("${EXCHANGE_URL:}", "${EXCHANGE_URL}").replace("${OKX_ENABLED:false}",
                                                                                      "${OKX_ENABLED}"))
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert [(i.key, i.problem) for i in err.value.issues] == [
        ("exchanges.binance.api_base_url", "environment variable EXCHANGE_URL is not set and has no default"),
        ("exchanges.okx_eu.enabled", "environment variable OKX_ENABLED is not set and has no default")]


def test_parse_time_ccxt_ids_are_ccxts_own_list() -> None:
    # The parse-time check lists ccxt's modules instead of importing ccxt (seconds); ccxt.exchanges is the truth.
    import ccxt

    assert ccxt_exchange_ids() == frozenset(ccxt.exchanges)


# --- the JSON Schema for editors -------------------------------------------------------------------------

CONFIG_DIR = REPO / "include" / "config"
SCHEMA = CONFIG_DIR / "markets.schema.json"


def test_the_committed_schema_is_what_the_command_generates() -> None:
    plugins = Path(marketflow.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "marketflow.config", "--json-schema"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(plugins)}, check=True).stdout
    assert out == SCHEMA.read_text(), (
        "include/config/markets.schema.json is stale: python -m marketflow.config --json-schema > it")
    assert json.loads(out) == json_schema()


@pytest.mark.parametrize("name", ["markets.yml", "markets.demo.yml"])
def test_shipped_files_point_at_the_schema_and_satisfy_it(name: str) -> None:
    text = (CONFIG_DIR / name).read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=./markets.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(yaml.safe_load(text))] == []


@pytest.mark.parametrize(
    ("patch", "valid"),
    [
        (("", ""), True),
        (("markets: [BTC/USDT]", "markets: [BTC/USDT, {symbol: ETH/USDT}]"), True),
        (("timeframes: [1m, 1h]", "timeframes: 1h"), True),
        (("    options: {", "    pool_slots: ${SLOTS:3}\n    rate_limit_share: 1\n    options: {"), True),
        (("${EXCHANGE_URL:}", "http://127.0.0.1:8765"), True),
        (("exchanges:", "housekeeping: {batch_size: 100}\nexchanges:"), True),
        (("  timeframes: [1m]", "  timeframes: [1m]\n  overlap_minutes: 0"), True),
        (("options: {", "colour: red\n    options: {"), False),
        (("    options: {", "    pool_slots: 0\n    options: {"), False),
        (("    options: {", "    pool_slots: two\n    options: {"), False),
        (("    options: {", "    rate_limit_share: 1.5\n    options: {"), False),
        (("${OKX_ENABLED:false}", "maybe"), False),
        (("timeframes: [1m, 1h]", "timeframes: [1m, 7m]"), False),
        (("timeframes: [1m, 1h]", "timeframes: [1m, 1m]"), False),
        (("timeframes: [1m, 1h]", "timeframes: []"), False),
        (("- symbol: BTC/USDT", "- symbol: btc-usdt"), False),
        (("markets: [BTC/USDT]", "markets: [btc-usdt]"), False),
        (("markets: [BTC/USDT]", "markets: []"), False),
        (("${EXCHANGE_URL:}", "ftp://127.0.0.1"), False),
        (("  okx_eu:", "  OKX_eu:"), False),
        (("exchanges:", "housekeeping: {batch_size: 10}\nexchanges:"), False),
        (("  timeframes: [1m]", "  timeframes: [1m]\n  overlap_minutes: -1"), False),
        (("options: {fetchMarkets: {types: [spot]}}", "options: [spot]"), False),
    ],
)
def test_the_schema_accepts_what_the_loader_accepts(tmp_path: Path, patch: tuple[str, str], valid: bool) -> None:
    # jsonschema, a validator independent of pydantic, judges the raw file (before ${VAR} substitution) as an
    # editor does; it must agree with the loader, so the editor flags exactly what would fail the DAG import.
    # Checks a schema cannot express (ccxt ids, duplicates, history_end after start) are tested above.
    text = GOOD.replace(*patch, 1)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert validator.is_valid(yaml.safe_load(text)) is valid
    try:
        load_config(write(tmp_path, text), env={})
        loaded = True
    except ConfigError:
        loaded = False
    assert loaded is valid
