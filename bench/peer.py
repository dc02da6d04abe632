"""Figure 3: the peer, freqtrade ``download-data``, against the same emulator, markets and days.

Figure 2 (bench/backfill.py) leaves its run in ``ctx.shared["backfill"]``: the warehouse DSN
with marts.ohlcv_1m filled, the markets, the window [start, end), its end-to-end wall seconds
and the emulator flags. Here a fresh emulator with the same flags (same seed, same Binance
weight limit) serves freqtrade, pinned in its own virtualenv (bench/requirements-freqtrade.txt),
which downloads the same pairs at 1m over the same timerange into a fresh feather data dir.

* 3a: freqtrade's wall seconds (the whole subprocess, start-up included) / marketflow's
  end-to-end seconds. Target: >= 1, i.e. marketflow, which lands in marts and not in files,
  is not slower.
* 3b: its candles against marts.ohlcv_1m inside the window: float(Decimal) of ours == its
  float64, per field; candles on one side only. Feather keeps float64 exactly (freqtrade's
  json format rounds to 10 significant digits), so any difference is a real one.

The venv is created once with uv and reused while a stamp file matches the pinned set; its
install time goes to the detail, never into the timed part.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from bench import workload
from bench.context import BENCH_DIR, REPO, BenchContext, say
from bench.report import Figure

FREQTRADE_VERSION = "2026.9"
REQUIREMENTS = REPO / "bench" / "requirements-freqtrade.txt"
TIMEFRAME = "1m"
FIELDS = ("open", "high", "low", "close", "volume")
# A download that takes longer than this is broken (a ban loop), not slow.
TIMEOUT_S = 3600

# Reads freqtrade's feather files inside its own venv (pyarrow lives there, not in ours) and
# writes {pair: [[open_ms, o, h, l, c, v], ...]}; json.dumps writes floats with repr, which
# round-trips float64 exactly.
_DUMP_SCRIPT = r"""
import json, sys
from pathlib import Path
import pandas as pd
datadir, out, pairs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
result = {}
for pair in pairs:
    path = datadir / f"{pair.replace('/', '_')}-1m.feather"
    if not path.exists():
        continue
    df = pd.read_feather(path)
    ms = ((df["date"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).tolist()
    cols = [df[c].astype("float64").tolist() for c in ("open", "high", "low", "close", "volume")]
    result[pair] = [[t, *vals] for t, *vals in zip(ms, *cols)]
out.write_text(json.dumps(result))
"""


def _uv() -> str:
    uv = BENCH_DIR.parent / "tools" / "bin" / "uv"  # .local/tools/bin/uv, made by `make install`
    if uv.exists():
        return str(uv)
    found = shutil.which("uv")
    if not found:
        raise RuntimeError("uv not found: run `make install` first (it creates .local/tools/bin/uv)")
    return found


def ensure_freqtrade(root: Path) -> tuple[Path, float | None]:
    """The pinned freqtrade venv under ``root``; returns (its bin dir, install seconds or None if reused)."""
    venv = root / "freqtrade-venv"
    stamp = venv / ".installed"
    # The stamp names exactly what was installed: the pinned file, the interpreter, and how.
    want = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode() + b"compile-bytecode").hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want and (venv / "bin" / "freqtrade").exists():
        return venv / "bin", None
    say(f"installing freqtrade {FREQTRADE_VERSION} (pinned) into {venv}")
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    uv = _uv()
    # Same interpreter version the pins were compiled for (bench/requirements-freqtrade.txt header).
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    # `pip sync`: exactly the pinned set, nothing resolved at install time. Bytecode compiled at
    # install, as pip does: without it (uv's default), and with PYTHONDONTWRITEBYTECODE set as on
    # these machines, every freqtrade start compiled its imports from source (8-9 s instead of ~2).
    subprocess.run([uv, "pip", "sync", "--quiet", "--compile-bytecode", "--python", str(venv / "bin" / "python"),
                    str(REQUIREMENTS)], check=True)
    seconds = time.monotonic() - started
    stamp.write_text(want + "\n")
    return venv / "bin", seconds


def _versions(bin_dir: Path) -> dict[str, str]:
    code = "import freqtrade, ccxt; print(freqtrade.__version__, ccxt.__version__)"
    out = subprocess.run([str(bin_dir / "python"), "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return {"freqtrade": out[0], "ccxt": out[1]}


def _config(path: Path, emulator_url: str) -> Path:
    """Exchange config pointing ccxt at the emulator; only_from_ccxt keeps it off data.binance.vision."""
    config = {
        "dry_run": True,
        "trading_mode": "spot",
        "stake_currency": "USDT",
        "dataformat_ohlcv": "feather",
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "only_from_ccxt": True,
            "ccxt_config": {"urls": {"api": {"public": f"{emulator_url}/api/v3"}},
                            "options": {"fetchMarkets": {"types": ["spot"]}}},
            "pair_whitelist": [],
        },
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _admin(url: str, path: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(f"{url}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - (\S+) - (\w+) - (.*)$")


def _parse_log(log_file: Path) -> dict[str, Any]:
    """Download phase (first 'Download history data' to last 'Downloaded data') and the trouble it logged."""
    first = last = None
    warnings: list[str] = []
    rate_limited = 0
    for line in log_file.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if not m:
            continue
        ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        level, msg = m.group(3), m.group(4)
        if msg.startswith("Download history data for"):
            first = first or ts
        elif msg.startswith("Downloaded data for"):
            last = ts
        if level in ("WARNING", "ERROR", "CRITICAL"):
            warnings.append(f"{level} {msg[:200]}")
            if "429" in msg or "418" in msg or "DDosProtection" in msg or "RateLimit" in msg:
                rate_limited += 1
    return {
        "download_phase_s": round((last - first).total_seconds(), 3) if first and last else None,
        "log_warnings": len(warnings),
        "log_rate_limit_warnings": rate_limited,
        "log_warning_samples": warnings[:5],
    }


def _download(bin_dir: Path, work: Path, emulator_url: str, markets: list[str], start: datetime,
              end: datetime) -> dict[str, Any]:
    """Run download-data once against the emulator; returns wall seconds, log facts and emulator stats."""
    datadir, userdir = work / "data", work / "user_data"
    shutil.rmtree(work, ignore_errors=True)
    userdir.mkdir(parents=True)  # freqtrade refuses to run without an existing user dir
    log_file = work / "freqtrade.log"
    config = _config(work / "config.json", emulator_url)
    # Timerange in epoch seconds: exact to the second, not only whole days.
    timerange = f"{int(start.timestamp())}-{int(end.timestamp())}"
    argv = [str(bin_dir / "freqtrade"), "download-data", "-c", str(config), "--userdir", str(userdir),
            "--datadir", str(datadir), "--pairs", *markets, "--timeframes", TIMEFRAME, "--timerange", timerange,
            "--data-format-ohlcv", "feather", "--logfile", str(log_file)]
    # Its own environment: none of our PYTHONPATH / virtualenv leaks into its interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["NO_COLOR"] = "1"
    _admin(emulator_url, "/__admin/reset", "POST")  # count only freqtrade's calls
    say(f"freqtrade download-data: {len(markets)} pairs, {TIMEFRAME}, timerange {timerange}")
    started = time.monotonic()
    res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.monotonic() - started
    (work / "freqtrade.out").write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-3000:]
        raise RuntimeError(f"freqtrade download-data failed (exit {res.returncode}):\n{tail}")
    stats = _admin(emulator_url, "/__admin/stats")
    return {"seconds": seconds, "argv": [Path(argv[0]).name, *argv[1:]], "datadir": datadir,
            "log": _parse_log(log_file), "emulator_stats": stats, "bin_dir": bin_dir}


def _read_theirs(bin_dir: Path, datadir: Path, markets: list[str]) -> dict[str, list[list[float]]]:
    out = datadir.parent / "candles.json"
    subprocess.run([str(bin_dir / "python"), "-c", _DUMP_SCRIPT, str(datadir), str(out), *markets],
                   check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def _read_ours(dsn: str, markets: list[str], start: datetime, end: datetime) -> dict[tuple[str, int], tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT symbol, (extract(epoch FROM open_time) * 1000)::bigint, open, high, low, close, volume"
                " FROM marts.ohlcv_1m WHERE exchange = 'binance' AND symbol = ANY(%s)"
                " AND open_time >= %s AND open_time < %s",
                (markets, start, end))
            return {(row[0], int(row[1])): row[2:] for row in cur}
    finally:
        conn.close()


def compare(ours: dict[tuple[str, int], tuple], theirs: dict[str, list[list[float]]], markets: list[str],
            start: datetime, end: datetime) -> dict[str, Any]:
    """Candle by candle inside [start, end): equal floats per field, and what only one side holds."""
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    their_map: dict[tuple[str, int], list[float]] = {}
    outside = {"before_start": 0, "at_or_after_end": 0}
    for pair, rows in theirs.items():
        for t, *vals in rows:
            t = int(t)
            if t < start_ms:
                outside["before_start"] += 1
            elif t >= end_ms:
                outside["at_or_after_end"] += 1
            else:
                their_map[(pair, t)] = vals
    common = ours.keys() & their_map.keys()
    only_ours = sorted(ours.keys() - their_map.keys())
    only_theirs = sorted(their_map.keys() - ours.keys())
    differing = 0
    field_diffs = dict.fromkeys(FIELDS, 0)
    max_abs: float = 0.0
    samples: list[dict[str, Any]] = []
    for key in common:
        mine, other = ours[key], their_map[key]
        bad = False
        for name, a, b in zip(FIELDS, mine, other, strict=True):
            fa = float(a)
            if fa != b and not (math.isnan(fa) and math.isnan(b)):
                bad = True
                field_diffs[name] += 1
                max_abs = max(max_abs, abs(fa - b))
                if len(samples) < 5:
                    samples.append({"symbol": key[0], "open_time_ms": key[1], "field": name, "ours": str(a),
                                    "freqtrade": repr(b)})
        differing += bad

    def _keys(keys: list[tuple[str, int]]) -> list[str]:
        return [f"{s} {datetime.fromtimestamp(t / 1000, tz=UTC):%Y-%m-%d %H:%M}" for s, t in keys[:5]]

    per_symbol = {s: {"ours": 0, "freqtrade": 0} for s in markets}
    for s, _ in ours:
        per_symbol[s]["ours"] += 1
    for s, _ in their_map:
        per_symbol[s]["freqtrade"] += 1
    return {
        "candles_ours": len(ours),
        "candles_freqtrade_in_window": len(their_map),
        "candles_freqtrade_outside_window": outside,
        "candles_common": len(common),
        "candles_equal": len(common) - differing,
        "candles_differing": differing,
        "differing_by_field": field_diffs,
        "max_abs_difference": max_abs,
        "difference_samples": samples,
        "only_ours": len(only_ours),
        "only_ours_samples": _keys(only_ours),
        "only_freqtrade": len(only_theirs),
        "only_freqtrade_samples": _keys(only_theirs),
        "per_symbol": per_symbol,
        # Equal but empty proves nothing: name the markets neither side has a candle of.
        "markets_without_candles": [s for s, n in per_symbol.items() if not n["ours"] and not n["freqtrade"]],
    }


def _our_backfill(ctx: BenchContext) -> dict[str, Any]:
    if "backfill" in ctx.shared:
        return ctx.shared["backfill"]
    # `--only 3`: figure 2 did not run in this process; run the same backfill once.
    from bench.backfill import backfill_once

    markets = workload.symbols(ctx.sizes.backfill_markets)
    say("no figure-2 run in this process: running marketflow's backfill first (not timed here)")
    ctx.shared["backfill"] = backfill_once(ctx, ctx.sizes.backfill_days, markets, workload.BINANCE_WEIGHT_LIMIT, "a")
    return ctx.shared["backfill"]


def _http_summary(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    if not stats:
        return None
    return {"requests_total": stats.get("requests_total"), "by_path": stats.get("requests", {}).get("binance", {}),
            "responses_by_status": stats.get("responses_by_status"), "http_429": stats.get("http_429_sent"),
            "http_418": stats.get("http_418_sent")}


def run(ctx: BenchContext) -> list[Figure]:
    bf = _our_backfill(ctx)
    markets: list[str] = list(bf["markets"])
    start, end = bf["start"], bf["end"]
    bin_dir, install_s = ensure_freqtrade(ctx.root)
    versions = _versions(bin_dir)

    # Same flags and, when figure 2 replaced the bundled recordings, the same data dir: same candles.
    with ctx.emulator(*bf["emulator_args"], name="emulator-peer", data_dir=bf.get("emulator_data_dir")) as url:
        got = _download(bin_dir, ctx.root / "freqtrade", url, markets, start, end)
    say(f"freqtrade took {got['seconds']:.1f}s (download phase {got['log']['download_phase_s']}s); "
        f"marketflow {bf['seconds']:.1f}s")

    cmp = compare(_read_ours(bf["dsn"], markets, start, end), _read_theirs(bin_dir, got["datadir"], markets),
                  markets, start, end)
    ours_s, theirs_s = float(bf["seconds"]), got["seconds"]
    ratio = theirs_s / ours_s if ours_s > 0 else None
    phase = got["log"]["download_phase_s"]
    theirs_http = _http_summary(got["emulator_stats"])
    window = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC (end exclusive)"
    shared_detail = {"markets": markets, "window": window, "timeframe": TIMEFRAME,
                     "emulator_args": list(bf["emulator_args"])}

    timing = Figure(
        figure="3a peer: freqtrade download-data vs marketflow backfill, wall time",
        value=round(theirs_s, 2),
        unit="s",
        reference=f"marketflow backfill end to end into marts (figure 2), {ours_s:.1f} s",
        reference_value=round(ours_s, 2),
        ratio=ratio,
        target="ratio >= 1 (marketflow, landing in marts, not slower)",
        met=ratio is not None and ratio >= 1,
        detail={
            **shared_detail,
            **versions,
            "freqtrade_install_s": None if install_s is None else round(install_s, 1),
            "freqtrade_venv": "reused (stamp matches bench/requirements-freqtrade.txt)" if install_s is None
            else "installed now with uv from bench/requirements-freqtrade.txt (not timed)",
            "freqtrade_command": " ".join(got["argv"]),
            "freqtrade_wall_s": round(theirs_s, 2),
            "freqtrade_download_phase_s": phase,
            "freqtrade_startup_and_other_s": None if phase is None else round(theirs_s - phase, 2),
            "ratio_download_phase_only": None if phase is None or ours_s <= 0 else round(phase / ours_s, 4),
            "marketflow_wall_s": round(ours_s, 2),
            # Figure 2's split, when it reports one: how much of its time is the marts (dbt build).
            "marketflow_to_staging_s": bf.get("staging_seconds"),
            "marketflow_dbt_build_s": bf.get("dbt_seconds"),
            "ratio_vs_marketflow_to_staging": round(theirs_s / bf["staging_seconds"], 4)
            if bf.get("staging_seconds") else None,
            "marketflow_candles": bf.get("candles"),
            "http_freqtrade": theirs_http,
            "http_marketflow": _http_summary(bf.get("emulator_stats")) or {
                "klines_calls": bf.get("pages"), "http_429": bf.get("http_429"), "http_418": bf.get("http_418")},
            "freqtrade_log": got["log"],
            "note": "freqtrade writes feather files; marketflow's time includes MongoDB raw, Postgres staging and "
                    "dbt marts. Both against a fresh emulator with the same flags (Binance weight limit on).",
        },
    )
    equal = cmp["candles_differing"] == 0 and cmp["only_ours"] == 0 and cmp["only_freqtrade"] == 0
    mismatches = cmp["candles_differing"] + cmp["only_ours"] + cmp["only_freqtrade"]
    candles = Figure(
        figure="3b peer: freqtrade's candles vs marts.ohlcv_1m",
        value=mismatches,
        unit="candles differing or on one side only",
        reference=f"{cmp['candles_ours']:,} candles in marts.ohlcv_1m, {cmp['candles_freqtrade_in_window']:,} "
                  f"from freqtrade in the window",
        reference_value=cmp["candles_ours"],
        ratio=cmp["candles_equal"] / cmp["candles_ours"] if cmp["candles_ours"] else None,
        target="0 (identical candles)",
        met=equal and cmp["candles_ours"] > 0,
        detail={
            **shared_detail,
            "compared": "exchange binance, these symbols, open_time in [start, end); per field float(Decimal(ours)) "
                        "== freqtrade's float64 (feather); ratio = equal candles / our candles",
            "freqtrade_timerange_semantics": "download-data pages from the start with startTime only (1000 per call) "
                                             "until a page starts at or after the end, keeps what the last page holds "
                                             "beyond the end, and drops the last candle of the whole download as "
                                             "'incomplete'; so it stores candles after the window "
                                             "(candles_freqtrade_outside_window), and would miss the window's last "
                                             "candle if the window were a multiple of 1000 minutes",
            **cmp,
        },
    )
    return [timing, candles]
