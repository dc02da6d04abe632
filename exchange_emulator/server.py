"""HTTP server: routing, rate limiting, fault injection, admin API and the CLI entry point."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from exchange_emulator.binance_api import BinanceApi, BinanceError, request_weight
from exchange_emulator.bybit_api import BybitApi, BybitError, error_body
from exchange_emulator.faults import (
    BODY_KINDS,
    DELAY_KINDS,
    ROW_KINDS,
    TERMINAL_KINDS,
    Fault,
    FaultBook,
    FaultError,
    RequestContext,
    apply_row_fault,
    corrupt_body,
)
from exchange_emulator.markets import DEFAULT_LISTING, Registry
from exchange_emulator.okx_api import OkxApi, OkxError
from exchange_emulator.ratelimit import (
    BYBIT_BAN_SECONDS,
    BYBIT_ENDPOINT_LIMIT_PER_S,
    BYBIT_IP_LIMIT,
    BinanceWeights,
    BybitLimiter,
    OkxLimiter,
)
from exchange_emulator.synthetic import BLOCK_CACHE

log = logging.getLogger("exchange_emulator")

BINANCE_PREFIXES = ("/api/v1/", "/api/v3/", "/sapi/", "/fapi/", "/dapi/", "/eapi/", "/papi/", "/futures/")
OKX_PREFIX = "/api/v5/"
BYBIT_PREFIX = "/v5/"
CANDLE_PATHS = (
    "/api/v3/klines",
    "/api/v3/uiKlines",
    "/api/v5/market/candles",
    "/api/v5/market/history-candles",
    "/v5/market/kline",
)
BINANCE_CT = "application/json;charset=UTF-8"
OKX_CT = "application/json"
BYBIT_CT = "application/json; charset=utf-8"
CONTENT_TYPES = {"okx": OKX_CT, "bybit": BYBIT_CT}
# Bybit's IP block and its gateway errors are not API answers: short text pages, not JSON.
BYBIT_403_BODY = b"403 Forbidden: access too frequent"
_BYBIT_5XX = {
    500: "500 Internal Server Error",
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}

_BINANCE_5XX = {
    500: (-1001, "Internal error; unable to process your request. Please try again."),
    502: (-1001, "Internal error; unable to process your request. Please try again."),
    503: (-1008, "Server is currently overloaded with other requests. Please try again in a few minutes."),
    504: (
        -1007,
        "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
    ),
}
_OKX_5XX = {
    500: ("50026", "System error. Try again later."),
    502: ("50013", "Systems are busy. Please try again later."),
    503: ("50001", "Service temporarily unavailable. Try again later"),
    504: ("50004", "Endpoint request timeout. "),
}


def exchange_of(path: str) -> str:
    if path.startswith(OKX_PREFIX):
        return "okx"
    if path.startswith(BINANCE_PREFIXES):
        return "binance"
    if path.startswith(BYBIT_PREFIX):
        return "bybit"
    return ""


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.started = time.time()
            self.requests: dict[str, Counter] = defaultdict(Counter)
            self.statuses: Counter = Counter()
            self.sent_429: Counter = Counter()
            self.sent_418: Counter = Counter()
            # Every exchange's own way of saying so: Binance/OKX 429, Bybit retCode 10006 (HTTP 200);
            # Binance 418, Bybit 403 (IP limit).
            self.throttled: Counter = Counter()
            self.bans: Counter = Counter()
            self.faults_by_kind: Counter = Counter()
            self.faults_by_id: Counter = Counter()
            # Seconds from a request read to its answer written, per kind ("<exchange> candles page" of
            # >= 100 rows, "<exchange> candles short", else the path): what the emulator itself adds to a
            # client's call, queueing for the GIL behind other requests' threads included.
            self.service: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])

    def request(self, exchange: str, path: str) -> None:
        with self._lock:
            self.requests[exchange or "other"][path] += 1

    def response(self, status: int | str, cause: str = "", exchange: str = "", throttled: bool = False) -> None:
        with self._lock:
            self.statuses[str(status)] += 1
            if status == 429:
                self.sent_429[cause or "rate_limit"] += 1
            elif status == 418:
                self.sent_418[cause or "ban"] += 1
            if status == 429 or throttled:
                self.throttled[(exchange, cause or "rate_limit")] += 1
            elif status == 418 or (status == 403 and exchange == "bybit"):
                self.bans[(exchange, cause or "ban")] += 1

    def served(self, kind: str, seconds: float) -> None:
        with self._lock:
            entry = self.service[kind]
            entry[0] += 1
            entry[1] += seconds
            entry[2] = max(entry[2], seconds)

    def fault(self, f: Fault) -> None:
        with self._lock:
            self.faults_by_kind[f.kind] += 1
            self.faults_by_id[f.id] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests_total": sum(sum(c.values()) for c in self.requests.values()),
                "requests": {ex: dict(c) for ex, c in self.requests.items()},
                "requests_by_exchange": {ex: sum(c.values()) for ex, c in self.requests.items()},
                "responses_by_status": dict(self.statuses),
                "http_429_sent": sum(self.sent_429.values()),
                "http_429_by_cause": dict(self.sent_429),
                "http_418_sent": sum(self.sent_418.values()),
                "http_418_by_cause": dict(self.sent_418),
                "throttled_by_cause": _by_cause(self.throttled),
                "throttled_by_exchange": _by_exchange(self.throttled),
                "bans_by_cause": _by_cause(self.bans),
                "bans_by_exchange": _by_exchange(self.bans),
                "service_s": {kind: {"requests": n, "seconds": round(total, 4), "max_s": round(most, 4)}
                              for kind, (n, total, most) in self.service.items()},
                "faults_fired": {
                    "total": sum(self.faults_by_kind.values()),
                    "by_kind": dict(self.faults_by_kind),
                    "by_id": dict(self.faults_by_id),
                },
            }


def _by_cause(counts: Counter) -> dict[str, int]:
    out: Counter = Counter()
    for (_, cause), n in counts.items():
        out[cause] += n
    return dict(out)


def _by_exchange(counts: Counter) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for (exchange, cause), n in counts.items():
        out[exchange or "other"][cause] = n
    return dict(out)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    declared_length: int | None = None  # > len(body): announce more bytes, then hang up
    throttled: bool = False  # a rate-limit answer whatever its status (Bybit's 10006 is HTTP 200)
    kind: str = ""  # what Stats.service counts it under


class Emulator:
    """All server state; the HTTP handler is a thin adapter around :meth:`dispatch`."""

    def __init__(
        self,
        registry: Registry,
        seed: int = 42,
        binance_weight_limit: int = 6000,
        ban_seconds: float = 120.0,
        ban_after: int = 3,
        okx_rate_limit_factor: float = 1.0,
        bybit_ip_limit: int = BYBIT_IP_LIMIT,
        bybit_endpoint_limit: int = BYBIT_ENDPOINT_LIMIT_PER_S,
        bybit_ban_seconds: float = BYBIT_BAN_SECONDS,
        clock: Any = time.time,
    ) -> None:
        self.registry = registry
        self.clock = clock
        # The exchange's clock runs this many seconds ahead of the host's (negative: behind). Moves
        # server time, the in-progress candle and the wall-clock minute of Binance's weight budget,
        # e.g. to have a budget run out a few seconds before the exchange's minute ends.
        self.clock_offset_s = 0.0
        self.binance = BinanceApi(registry, binance_weight_limit)
        self.okx = OkxApi(registry)
        self.bybit = BybitApi(registry)
        self.weights = BinanceWeights(binance_weight_limit, ban_seconds, ban_after)
        self.okx_limits = OkxLimiter(okx_rate_limit_factor)
        self.bybit_limits = BybitLimiter(bybit_ip_limit, bybit_endpoint_limit, bybit_ban_seconds)
        self.faults = FaultBook(seed, registry.unified_symbol)
        self.stats = Stats()

    # ---- config -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "binance_weight_limit": self.weights.limit,
            "ban_seconds": self.weights.ban_seconds,
            "ban_after": self.weights.ban_after,
            "okx_rate_limit_factor": self.okx_limits.factor,
            "bybit_ip_limit": self.bybit_limits.ip_limit,
            "bybit_endpoint_limit": self.bybit_limits.endpoint_limit,
            "bybit_ban_seconds": self.bybit_limits.ban_seconds,
            "clock_offset_s": self.clock_offset_s,
        }

    def set_config(self, values: dict[str, Any]) -> dict[str, Any]:
        unknown = set(values) - set(self.config())
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}")
        if "binance_weight_limit" in values:
            self.weights.limit = int(values["binance_weight_limit"])
            self.binance.weight_limit = self.weights.limit
        if "ban_seconds" in values:
            self.weights.ban_seconds = float(values["ban_seconds"])
        if "ban_after" in values:
            self.weights.ban_after = max(1, int(values["ban_after"]))
        if "okx_rate_limit_factor" in values:
            self.okx_limits.factor = float(values["okx_rate_limit_factor"])
        if "bybit_ip_limit" in values:
            self.bybit_limits.ip_limit = int(values["bybit_ip_limit"])
        if "bybit_endpoint_limit" in values:
            self.bybit_limits.endpoint_limit = int(values["bybit_endpoint_limit"])
        if "bybit_ban_seconds" in values:
            self.bybit_limits.ban_seconds = float(values["bybit_ban_seconds"])
        if "clock_offset_s" in values:
            self.clock_offset_s = float(values["clock_offset_s"])
        return self.config()

    def now(self) -> float:
        """The exchange's time (epoch seconds)."""
        return self.clock() + self.clock_offset_s

    def reset(self) -> None:
        self.stats.reset()
        self.weights.reset()
        self.okx_limits.reset()
        self.bybit_limits.reset()

    # ---- exchange requests ----------------------------------------------------------------------
    @staticmethod
    def _json(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _error(
        self, exchange: str, status: int, body: dict, headers: dict[str, str] | None = None
    ) -> Response:
        return Response(status, self._json(body), CONTENT_TYPES.get(exchange, BINANCE_CT), headers or {})

    def _bybit_throttled(self, limit: int, reset_ms: int) -> Response:
        """Bybit's API rate limit: HTTP 200, retCode 10006, the endpoint's limit in the headers."""
        headers = {"X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": "0",
                   "X-Bapi-Limit-Reset-Timestamp": str(reset_ms)}
        body = {"retCode": 10006, "retMsg": "Too many visits!", "result": {}, "retExtInfo": {},
                "time": int(self.now() * 1000)}
        resp = self._error("bybit", 200, body, headers)
        resp.throttled = True
        return resp

    def _throttle_response(
        self, exchange: str, status: int, retry_after: int, banned_until_ms: int = 0
    ) -> Response:
        headers = {"Retry-After": str(retry_after)}
        if exchange == "bybit":  # Bybit sends no Retry-After: a reset time (10006) or nothing (403)
            if status == 429:
                limit = self.bybit_limits.endpoint_limit
                return self._bybit_throttled(limit, int((self.now() + retry_after) * 1000))
            return Response(403, BYBIT_403_BODY, "text/plain", {})
        if exchange == "okx":
            return self._error("okx", status, {"msg": "Too Many Requests", "code": "50011"}, headers)
        if status == 418:
            until = banned_until_ms or int((self.now() + retry_after) * 1000)
            msg = (
                f"Way too much request weight used; IP banned until {until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            msg = (
                f"Too much request weight used; current limit is {self.weights.limit} request weight per "
                "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API."
            )
        return self._error("binance", status, {"code": -1003, "msg": msg}, headers)

    def _fault_response(self, f: Fault, exchange: str) -> Response | None:
        if f.kind == "http_429":
            return self._throttle_response(exchange, 429, f.args["retry_after"])
        if f.kind == "http_418":
            return self._throttle_response(exchange, 418, f.args["retry_after"])
        if f.kind == "http_5xx":
            status = f.args["status"]
            if exchange == "bybit":
                page = f"<html><head><title>{_BYBIT_5XX[status]}</title></head><body>{_BYBIT_5XX[status]}</body></html>"
                return Response(status, page.encode(), "text/html", {})
            if exchange == "okx":
                code, msg = _OKX_5XX[status]
                return self._error("okx", status, {"code": code, "msg": msg, "data": []})
            bcode, bmsg = _BINANCE_5XX[status]
            return self._error(exchange, status, {"code": bcode, "msg": bmsg})
        return None  # timeout: no response at all

    def dispatch(self, method: str, raw_path: str, client_ip: str) -> Response | None:
        """Answer one exchange request; None means 'drop the connection without answering'."""
        url = urlsplit(raw_path)
        path = url.path
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        exchange = exchange_of(path)
        self.stats.request(exchange, path)
        raw_symbol = params.get("symbol") or params.get("instId")  # Binance and Bybit: symbol
        ctx = RequestContext(
            exchange,
            path,
            self.registry.unified_symbol(exchange or None, raw_symbol) if raw_symbol else None,
            path in CANDLE_PATHS,
        )
        for f in self.faults.fire(DELAY_KINDS, ctx):
            self.stats.fault(f)
            time.sleep(f.args["ms"] / 1000)
        for f in self.faults.fire(TERMINAL_KINDS, ctx):
            self.stats.fault(f)
            resp = self._fault_response(f, exchange)
            if resp is None:
                time.sleep(f.args["seconds"])
                self.stats.response("timeout")
                return None
            if exchange == "binance":
                resp.headers["X-MBX-USED-WEIGHT-1M"] = str(self.weights.used(client_ip, self.now()))
            self.stats.response(resp.status, "fault", exchange, resp.throttled)
            return resp
        resp = self._serve(method, path, params, exchange, client_ip, ctx)
        self.stats.response(resp.status, "", exchange, resp.throttled)
        return resp

    def _serve(
        self, method: str, path: str, params: dict[str, str], exchange: str, ip: str, ctx: RequestContext
    ) -> Response:
        now = self.now()
        now_ms = int(now * 1000)
        weight_headers: dict[str, str] = {}
        if exchange == "binance":
            verdict = self.weights.check(ip, request_weight(path, params), now)
            weight_headers["X-MBX-USED-WEIGHT-1M"] = str(verdict.used)
            if verdict.status != 200:
                resp = self._throttle_response(
                    "binance", verdict.status, verdict.retry_after, verdict.banned_until_ms
                )
                resp.headers.update(weight_headers)
                return resp
        elif exchange == "okx":
            verdict = self.okx_limits.check(ip, path, now)
            if verdict.status != 200:
                return self._throttle_response("okx", 429, verdict.retry_after)
        elif exchange == "bybit":
            bv = self.bybit_limits.check(ip, path, now)
            if bv.status == 403:
                if bv.banned:
                    log.warning("bybit: %s crossed the IP limit, blocked for %.0f s", ip, self.bybit_limits.ban_seconds)
                return Response(403, BYBIT_403_BODY, "text/plain", {})
            if bv.throttled:
                return self._bybit_throttled(bv.limit, bv.reset_ms)
            if bv.limit:
                weight_headers.update({"X-Bapi-Limit": str(bv.limit), "X-Bapi-Limit-Status": str(bv.remaining),
                                       "X-Bapi-Limit-Reset-Timestamp": str(bv.reset_ms)})
        if method != "GET" or not exchange:
            body = {"code": -1, "msg": f"emulator: {method} {path} is not emulated"}
            return self._not_emulated(exchange, f"{method} {path}", now_ms, weight_headers)
        try:
            if exchange == "binance":
                payload = self.binance.handle(path, params, now_ms)
            elif exchange == "bybit":
                payload = self.bybit.handle(path, params, now_ms)
            else:
                payload = self.okx.handle(path, params, now_ms)
        except (BinanceError, OkxError) as exc:
            return self._error(exchange, exc.status, exc.body, weight_headers)
        except BybitError as exc:
            return self._error(exchange, exc.status, error_body(exc, now_ms), weight_headers)
        except LookupError:
            return self._not_emulated(exchange, path, now_ms, weight_headers)
        if ctx.candles:
            if exchange == "binance":
                rows = payload
            elif exchange == "bybit":
                rows = payload["result"]["list"]
            else:
                rows = payload["data"]
            candles_kind = f"{exchange} candles {'page' if len(rows) >= 100 else 'short'}"
            for f in self.faults.fire(ROW_KINDS, ctx, first_only=False, rows=rows):
                self.stats.fault(f)
                rows = apply_row_fault(f, rows, exchange)
            if exchange == "binance":
                payload = rows
            elif exchange == "bybit":
                payload["result"]["list"] = rows
            else:
                payload["data"] = rows
        body = self._json(payload)
        declared = None
        for f in self.faults.fire(BODY_KINDS, ctx):
            self.stats.fault(f)
            if f.kind == "truncated_json" and f.args["cut_connection"]:
                declared = len(body)  # a transfer cut short: Content-Length of the full body
            body = corrupt_body(f, body)
        return Response(200, body, CONTENT_TYPES.get(exchange, BINANCE_CT), weight_headers, declared,
                        kind=candles_kind if ctx.candles else f"{exchange} {path}")

    def _not_emulated(self, exchange: str, what: str, now_ms: int, headers: dict[str, str]) -> Response:
        msg = f"emulator: {what} is not emulated"
        body: dict[str, Any] = {"code": -1, "msg": msg}
        if exchange == "okx":
            body = {"code": "50000", "msg": msg, "data": []}
        elif exchange == "bybit":
            body = {"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now_ms}
        return self._error(exchange, 404, body, headers)

    # ---- admin -------------------------------------------------------------------------------------
    def admin(self, method: str, raw_path: str, body: bytes) -> Response:
        path = urlsplit(raw_path).path.rstrip("/")
        try:
            payload = json.loads(body) if body.strip() else None
        except ValueError:
            return self._admin(400, {"error": "request body is not valid JSON"})
        try:
            if path == "/__admin/health":
                return self._admin(200, {"ok": True})
            if path == "/__admin/faults":
                if method == "GET":
                    return self._admin(200, {"faults": self.faults.describe()})
                if method == "POST":
                    if payload is None:
                        return self._admin(400, {"error": "POST a fault object or a list of them"})
                    added = self.faults.add(payload)
                    return self._admin(
                        200, {"added": [f.describe() for f in added], "faults": self.faults.describe()}
                    )
                if method == "DELETE":
                    self.faults.clear()
                    return self._admin(200, {"faults": []})
            if path == "/__admin/stats" and method == "GET":
                snap = self.stats.snapshot()
                snap["binance_weight"] = self.weights.snapshot(self.now())
                snap["bybit_blocked_s"] = {ip: round(left, 3) for ip in self.bybit_limits.blocked_ips()
                                           if (left := self.bybit_limits.blocked_for(ip, self.now())) > 0}
                snap["faults"] = self.faults.describe()
                return self._admin(200, snap)
            if path == "/__admin/reset" and method == "POST":
                self.reset()
                return self._admin(200, {"reset": True})
            if path == "/__admin/config":
                if method == "POST":
                    return self._admin(200, self.set_config(payload or {}))
                return self._admin(200, self.config())
            if path == "/__admin/markets" and method == "GET":
                return self._admin(
                    200,
                    {
                        "markets": [
                            {
                                "exchange": m.exchange,
                                "symbol": m.symbol,
                                "id": m.id,
                                "recorded": m.recorded,
                                "listing_ms": m.listing_ms,
                                "tick": str(m.tick),
                                "lot": str(m.lot),
                            }
                            for m in self.registry.markets.values()
                        ]
                    },
                )
        except (FaultError, ValueError, TypeError) as exc:
            return self._admin(400, {"error": str(exc)})
        return self._admin(404, {"error": f"no admin endpoint {method} {path}"})

    def _admin(self, status: int, obj: Any) -> Response:
        return Response(status, self._json(obj), "application/json", {})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ccxt's requests session expects
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server_version = "marketflow-emulator"
    sys_version = ""
    emulator: Emulator
    access_log = False

    def log_message(self, format: str, *args: Any) -> None:
        if self.access_log:
            log.info("%s %s", self.address_string(), format % args)

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            if self.path.startswith("/__admin"):
                resp = self.emulator.admin(method, self.path, body)
            else:
                resp = self.emulator.dispatch(method, self.path, self.client_address[0])
        except Exception as exc:  # an emulator bug must show up as a loud 500, not a dropped connection
            log.exception("internal error on %s %s", method, self.path)
            self.emulator.stats.response(500, "internal")
            msg = f"emulator internal error: {type(exc).__name__}: {exc}"
            resp = Response(500, json.dumps({"code": -1000, "msg": msg}).encode(), "application/json", {})
        if resp is None:
            self.close_connection = True  # timeout fault: hang up without a response
            return
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(resp.declared_length or len(resp.body)))
        if resp.declared_length:
            self.close_connection = True
        for key, value in resp.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(resp.body)
        if resp.kind:
            self.emulator.stats.served(resp.kind, time.perf_counter() - started)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def build_server(emulator: Emulator, host: str, port: int, access_log: bool = False) -> EmulatorHTTPServer:
    handler = type("BoundHandler", (Handler,), {"emulator": emulator, "access_log": access_log})
    return EmulatorHTTPServer((host, port), handler)


def _parse_faults(raw: str | None) -> Any:
    if not raw:
        return []
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text(encoding="utf-8")
    return json.loads(raw)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m exchange_emulator", description="Offline Binance/OKX/Bybit spot emulator"
    )
    p.add_argument(
        "--data-dir", type=Path, default=None, help="recorded candles: DIR/<exchange>/<BASE-QUOTE>/<tf>/*"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 = pick a free port (printed on start)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--synthetic-markets",
        default="",
        help="comma list of exchange:BASE/QUOTE[@YYYY-MM-DD], e.g. binance:BTC/USDT,okx:ETH/USDT",
    )
    p.add_argument(
        "--no-default-markets",
        action="store_true",
        help="do not add the default synthetic BTC/ETH/SOL/XRP-USDT markets",
    )
    p.add_argument("--synthetic-start", default=DEFAULT_LISTING, help="listing date of synthetic markets")
    p.add_argument(
        "--binance-weight-limit", type=int, default=6000, help="request weight per minute, 0 = unlimited"
    )
    p.add_argument(
        "--ban-seconds", type=float, default=120.0, help="first 418 ban length; doubles per repeat"
    )
    p.add_argument("--ban-after", type=int, default=3, help="requests ignoring a 429 before the IP is banned")
    p.add_argument(
        "--okx-rate-limit-factor",
        type=float,
        default=1.0,
        help="scales OKX per-endpoint request limits, 0 = unlimited",
    )
    p.add_argument(
        "--bybit-ip-limit", type=int, default=BYBIT_IP_LIMIT, help="Bybit requests per 5 s per IP, 0 = unlimited"
    )
    p.add_argument(
        "--bybit-endpoint-limit",
        type=int,
        default=BYBIT_ENDPOINT_LIMIT_PER_S,
        help="Bybit requests per second per IP and endpoint before retCode 10006, 0 = unlimited",
    )
    p.add_argument(
        "--bybit-ban-seconds", type=float, default=BYBIT_BAN_SECONDS, help="Bybit IP block after the IP limit"
    )
    p.add_argument(
        "--faults", default=None, help="JSON fault list/object (or @file); default: $EMULATOR_FAULTS"
    )
    p.add_argument(
        "--block-cache", type=int, default=None,
        help="day blocks of synthetic candles kept in memory (default: 2 per synthetic market, at least 96)",
    )
    p.add_argument("--access-log", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    registry = Registry(
        args.data_dir,
        seed=args.seed,
        synthetic=args.synthetic_markets.split(",") if args.synthetic_markets else [],
        default_synthetic=not args.no_default_markets,
        listing=args.synthetic_start,
    )
    emulator = Emulator(
        registry,
        seed=args.seed,
        binance_weight_limit=args.binance_weight_limit,
        ban_seconds=args.ban_seconds,
        ban_after=args.ban_after,
        okx_rate_limit_factor=args.okx_rate_limit_factor,
        bybit_ip_limit=args.bybit_ip_limit,
        bybit_endpoint_limit=args.bybit_endpoint_limit,
        bybit_ban_seconds=args.bybit_ban_seconds,
    )
    faults = _parse_faults(args.faults if args.faults is not None else os.environ.get("EMULATOR_FAULTS"))
    if faults:
        emulator.faults.add(faults)
    recorded, synthetic = registry.counts()
    # A day block of 1m candles per synthetic market (today's, and yesterday's around midnight): with
    # fewer blocks kept than markets, every minute's call re-made a whole day (~9 ms of CPU a market).
    BLOCK_CACHE.size = args.block_cache if args.block_cache is not None else max(BLOCK_CACHE.size, 2 * synthetic + 16)
    server = build_server(emulator, args.host, args.port, args.access_log)
    host, port = server.server_address[:2]
    print(
        f"emulator listening on http://{host}:{port} (data dir {args.data_dir}, "
        f"{recorded} recorded markets, {synthetic} synthetic)",
        flush=True,
    )

    def _stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0
