"""API keys come from the environment or an Airflow connection and never reach raw, logs or error rows."""

from __future__ import annotations

import json
import logging

import pytest

from marketflow.config import ConfigError, load_config
from marketflow.exchanges import build_exchange, call_with_retries
from marketflow.raw_store import PayloadContext, RawStore
from marketflow.secrets import redact

KEY, SECRET = "mfTESTKEY0123456789abcdef", "mfTESTSECRET9876543210zyxw"
MARKETS = """
exchanges:
  binance:
    api_base_url: {url}
    options: {{fetchMarkets: {{types: [spot]}}}}
    markets: [BTC/USDT]
"""


def test_redact_masks_values_and_signature_params() -> None:
    url = f"https://api.binance.com/api/v3/account?timestamp=1&recvWindow=5000&signature=abc123&apiKey={KEY}"
    assert redact(url, [KEY]) == ("https://api.binance.com/api/v3/account?timestamp=1&recvWindow=5000"
                                  "&signature=***&apiKey=***")
    assert redact(f"binance GET failed for key {KEY}: {SECRET}", [KEY, SECRET]) == "binance GET failed for key ***: ***"


def test_keys_in_the_markets_file_are_refused(tmp_path) -> None:
    path = tmp_path / "m.yml"
    text = MARKETS.format(url="http://127.0.0.1:1")
    path.write_text(text.replace("    markets:", f"    apiKey: {KEY}\n    markets:"))
    with pytest.raises(ConfigError, match=r"exchanges\.binance\.apiKey: API credentials do not belong"):
        load_config(path, env={})


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_signed_call_leaves_no_secret_in_raw_or_logs(tmp_path, emulator_url, mongo_db, monkeypatch) -> None:
    monkeypatch.setenv("MARKETFLOW_BINANCE_API_KEY", KEY)
    monkeypatch.setenv("MARKETFLOW_BINANCE_SECRET", SECRET)
    path = tmp_path / "m.yml"
    path.write_text(MARKETS.format(url=emulator_url))
    cfg = load_config(path, env={}).exchange("binance")
    exchange = build_exchange(cfg)
    assert exchange.apiKey == KEY  # the credentials did reach ccxt
    collected = Collect()
    ccxt_log = logging.getLogger("ccxt.base.exchange")  # ccxt logs request headers at DEBUG
    ccxt_log.addHandler(collected)
    old_level = ccxt_log.level
    ccxt_log.setLevel(logging.DEBUG)  # setLevel, not setattr: it also clears the logger's level cache
    monkeypatch.setattr(ccxt_log, "disabled", False)
    monkeypatch.setattr(logging.root.manager, "disable", 0)
    with pytest.raises(Exception) as err:  # the emulator serves no private endpoints: a signed call fails
        call_with_retries(exchange, exchange.fetch_balance, "balance")
    responses = err.value.responses
    assert responses and "signature=***" in responses[0].url
    raw = RawStore(mongo_db)
    ctx = PayloadContext("binance", "binance", "BTC/USDT", None, "account", None, "run-1", 1, {})
    raw.save_responses(ctx, responses, error=exchange.redact(str(err.value)))
    stored = json.dumps(list(mongo_db.raw_market_payload.find()), default=str)
    ccxt_log.removeHandler(collected)
    ccxt_log.setLevel(old_level)
    logged = "\n".join(collected.lines)
    assert "X-MBX-APIKEY" in logged  # the request headers were logged, with the key masked
    for secret in (KEY, SECRET):
        assert secret not in stored and secret not in logged
    sent_signature = exchange.last_request_url.split("signature=")[1]
    assert sent_signature and sent_signature not in stored
