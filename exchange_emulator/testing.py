"""Test helper: run the emulator as a subprocess for the duration of a ``with`` block.

with EmulatorProcess(data_dir="include/sample_data", binance_weight_limit=0) as emu:
    ex = ccxt.binance(emu.ccxt_config("binance"))
    ex.load_markets()
    emu.add_faults({"kind": "http_5xx", "exchange": "binance"})
    emu.stats()["faults_fired"]["total"]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from exchange_emulator.ccxt_config import ccxt_config, ccxt_options, ccxt_urls

_READY = re.compile(r"emulator listening on (http://\S+)")


class EmulatorProcess:
    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        seed: int = 42,
        synthetic_markets: list[str] | None = None,
        default_markets: bool = True,
        binance_weight_limit: int | None = None,
        ban_seconds: float | None = None,
        ban_after: int | None = None,
        okx_rate_limit_factor: float | None = None,
        bybit_ip_limit: int | None = None,
        bybit_endpoint_limit: int | None = None,
        bybit_ban_seconds: float | None = None,
        faults: Any = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 30.0,
        python: str = sys.executable,
    ) -> None:
        args = [python, "-m", "exchange_emulator", "--host", host, "--port", "0", "--seed", str(seed)]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if synthetic_markets:
            args += ["--synthetic-markets", ",".join(synthetic_markets)]
        if not default_markets:
            args.append("--no-default-markets")
        for flag, value in (
            ("--binance-weight-limit", binance_weight_limit),
            ("--ban-seconds", ban_seconds),
            ("--ban-after", ban_after),
            ("--okx-rate-limit-factor", okx_rate_limit_factor),
            ("--bybit-ip-limit", bybit_ip_limit),
            ("--bybit-endpoint-limit", bybit_endpoint_limit),
            ("--bybit-ban-seconds", bybit_ban_seconds),
        ):
            if value is not None:
                args += [flag, str(value)]
        if faults is not None:
            args += ["--faults", json.dumps(faults)]
        self.args = args + list(extra_args or [])
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self.output: deque[str] = deque(maxlen=500)  # recent server log lines, for debugging

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self) -> EmulatorProcess:
        env = dict(os.environ)
        env.pop("EMULATOR_FAULTS", None)  # a stray shell setting must not leak into tests
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.output.append(line.rstrip("\n"))
                m = _READY.search(line)
                if m and not ready.is_set():
                    self.base_url = m.group(1)
                    ready.set()
            ready.set()  # process ended

        threading.Thread(target=pump, name="emulator-output", daemon=True).start()
        if not ready.wait(self.startup_timeout) or not self.base_url:
            self.stop()
            raise RuntimeError("emulator did not start:\n" + "\n".join(self.output))
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                self.admin("GET", "/health")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # only our own child, by its PID
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    # ---- ccxt ---------------------------------------------------------------------------------------
    def ccxt_urls(self, exchange_id: str) -> dict[str, Any]:
        return ccxt_urls(exchange_id, self.base_url)

    def ccxt_options(self, exchange_id: str) -> dict[str, Any]:
        return ccxt_options(exchange_id)

    def ccxt_config(self, exchange_id: str, **extra: Any) -> dict[str, Any]:
        return ccxt_config(exchange_id, self.base_url, **extra)

    # ---- admin API -------------------------------------------------------------------------------------
    def admin(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.base_url}/__admin{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"admin {method} {path} -> {exc.code}: {exc.read().decode()}") from None

    def add_faults(self, faults: Any) -> list[dict[str, Any]]:
        return self.admin("POST", "/faults", faults)["added"]

    def faults(self) -> list[dict[str, Any]]:
        return self.admin("GET", "/faults")["faults"]

    def clear_faults(self) -> None:
        self.admin("DELETE", "/faults")

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "/stats")

    def reset(self) -> None:
        self.admin("POST", "/reset")

    def configure(self, **values: Any) -> dict[str, Any]:
        return self.admin("POST", "/config", values)

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Raw GET against the emulator (status, headers, body), for wire-level assertions."""
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
