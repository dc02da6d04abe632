"""CLI flags, start-up line, env faults, and the Binance weight/ban state machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from exchange_emulator import EmulatorProcess
from exchange_emulator.ratelimit import BinanceWeights, OkxLimiter
from exchange_emulator.server import make_parser

from .helpers import SAMPLE_DIR


def test_start_line_flags_and_faults_from_cli_and_env(tmp_path, emu):
    faults = [{"kind": "http_5xx", "status": 502, "path": "/api/v3/time", "id": "cli"}]
    with EmulatorProcess(
        tmp_path,
        seed=7,
        synthetic_markets=["okx:ADA/USDT", "binance:ETH/BTC@2020-01-01"],
        default_markets=False,
        faults=faults,
        binance_weight_limit=0,
    ) as seeded:
        line = next(x for x in seeded.output if "listening" in x)
        assert re.fullmatch(
            rf"emulator listening on http://127\.0\.0\.1:{seeded.port} "
            rf"\(data dir {re.escape(str(tmp_path))}, 0 recorded markets, 2 synthetic\)",
            line,
        )
        markets = {(m["exchange"], m["symbol"]) for m in seeded.admin("GET", "/markets")["markets"]}
        assert markets == {("okx", "ADA/USDT"), ("binance", "ETH/BTC")}
        assert seeded.get("/api/v3/time")[0] == 502
        assert seeded.get("/api/v3/time")[0] == 200
        assert seeded.stats()["faults_fired"]["by_id"] == {"cli": 1}
        assert seeded.admin("GET", "/config")["binance_weight_limit"] == 0
        _, _, body = seeded.get("/api/v3/klines?symbol=ETHBTC&interval=1d&startTime=0&limit=1")
        assert json.loads(body)[0][0] == 1577836800000  # listing date from the spec
    env_faults = json.dumps({"kind": "http_429", "exchange": "okx"})
    with EmulatorProcess(SAMPLE_DIR, env={"EMULATOR_FAULTS": env_faults}) as other:
        # 4 default markets on 3 exchanges, less the 2 recorded ones
        assert "2 recorded markets, 10 synthetic" in next(x for x in other.output if "listening" in x)
        assert other.get("/api/v5/public/time")[0] == 429
        assert other.get("/api/v5/public/time")[0] == 200
        # same seed in another process -> byte-identical synthetic history on the wire
        page = "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1600000000000&limit=1000"
        assert other.get(page)[2] == emu.get(page)[2]
        okx_page = "/api/v5/market/history-candles?instId=SOL-USDT&bar=4H&after=1650000000000&limit=300"
        assert other.get(okx_page)[2] == emu.get(okx_page)[2]
        bybit_page = "/v5/market/kline?category=spot&symbol=XRPUSDT&interval=240&start=1650000000000&limit=1000"
        assert json.loads(other.get(bybit_page)[2])["result"] == json.loads(emu.get(bybit_page)[2])["result"]


def test_cli_help_lists_the_flags():
    out = subprocess.run(
        [sys.executable, "-m", "exchange_emulator", "--help"],
        capture_output=True,
        text=True,
        env={},  # no EMULATOR_FAULTS or other setting of the shell
        check=True,
    ).stdout
    for flag in (
        "--data-dir",
        "--port",
        "--host",
        "--seed",
        "--synthetic-markets",
        "--binance-weight-limit",
        "--faults",
        "--ban-seconds",
        "--ban-after",
        "--okx-rate-limit-factor",
        "--no-default-markets",
    ):
        assert flag in out
    args = make_parser().parse_args(["--data-dir", "x", "--port", "1"])
    assert (args.host, args.seed, args.binance_weight_limit) == ("127.0.0.1", 42, 6000)


def test_binance_weights_budget_ban_and_escalation():
    w = BinanceWeights(limit=10, ban_seconds=2, ban_after=2)
    t = 600.0  # start of a minute
    assert w.check("a", 6, t).status == 200
    v = w.check("a", 6, t + 1)
    assert (v.status, v.retry_after, v.used) == (429, 59, 6)
    assert w.check("b", 6, t + 1).status == 200  # budgets are per IP
    assert w.check("a", 1, t + 2).status == 429  # strike 1 (ignored Retry-After)
    v = w.check("a", 1, t + 3)  # strike 2 -> banned for 2 s
    assert (v.status, v.retry_after) == (418, 2)
    assert w.check("a", 1, t + 4).status == 418
    assert w.check("a", 1, t + 5.5).status == 200  # ban over, weight 7 <= 10
    assert w.check("a", 9, t + 6).status == 429
    w.check("a", 1, t + 7)
    v = w.check("a", 1, t + 8)
    assert (v.status, v.retry_after) == (418, 4)  # second ban doubles
    assert w.check("a", 9, t + 60).status == 200  # a new minute, a new budget
    unlimited = BinanceWeights(limit=0)
    assert all(unlimited.check("a", 80, t).status == 200 for _ in range(1000))


def test_okx_sliding_window():
    lim = OkxLimiter(factor=1.0)
    path = "/api/v5/market/history-candles"  # 20 per 2 s
    assert all(lim.check("a", path, 100.0 + i * 0.01).status == 200 for i in range(20))
    assert lim.check("a", path, 100.5).status == 429
    assert lim.check("a", "/api/v5/market/candles", 100.5).status == 200
    assert lim.check("a", path, 102.05).status == 200
    assert OkxLimiter(factor=0).check("a", path, 1.0).status == 200
