"""Exchange-style rate limiting: Binance request weight + IP bans, OKX per-endpoint windows."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

MAX_BAN_SECONDS = 3 * 24 * 3600  # Binance bans scale "from 2 minutes to 3 days"


@dataclass
class Verdict:
    status: int  # 200 = go ahead, 429 = over budget, 418 = banned
    retry_after: int = 0
    used: int = 0
    banned_until_ms: int = 0


@dataclass
class _IpState:
    minute: int = -1
    used: int = 0
    backoff_until: float = 0.0
    strikes: int = 0
    banned_until: float = 0.0
    bans: int = 0


class BinanceWeights:
    """Per-IP request weight per wall-clock minute, like Binance's REQUEST_WEIGHT/1MINUTE.

    Over budget -> 429 with Retry-After = seconds to the next minute. Every request that
    arrives before that Retry-After elapsed is a strike (answered 429 again); after
    ``ban_after`` strikes the IP is banned (418) for ``ban_seconds * 2**previous_bans``.
    """

    def __init__(self, limit: int = 6000, ban_seconds: float = 120.0, ban_after: int = 3) -> None:
        self.limit = limit
        self.ban_seconds = ban_seconds
        self.ban_after = ban_after
        self._ips: dict[str, _IpState] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._ips.clear()

    def used(self, ip: str, now: float) -> int:
        with self._lock:
            st = self._ips.get(ip)
            return st.used if st and st.minute == int(now // 60) else 0

    def snapshot(self, now: float) -> dict[str, dict]:
        with self._lock:
            return {
                ip: {
                    "used_weight_1m": st.used if st.minute == int(now // 60) else 0,
                    "banned_for_s": max(0.0, round(st.banned_until - now, 3)),
                    "bans": st.bans,
                    "strikes": st.strikes,
                }
                for ip, st in self._ips.items()
            }

    def check(self, ip: str, weight: int, now: float) -> Verdict:
        with self._lock:
            st = self._ips.setdefault(ip, _IpState())
            minute = int(now // 60)
            if st.minute != minute:
                st.minute, st.used = minute, 0
            if now < st.banned_until:
                return Verdict(418, math.ceil(st.banned_until - now), st.used, int(st.banned_until * 1000))
            if self.limit <= 0:
                st.used += weight
                return Verdict(200, 0, st.used)
            if now < st.backoff_until:
                st.strikes += 1
                if st.strikes >= self.ban_after:
                    duration = min(MAX_BAN_SECONDS, self.ban_seconds * 2**st.bans)
                    st.bans += 1
                    st.strikes = 0
                    st.banned_until = now + duration
                    st.backoff_until = 0.0
                    return Verdict(418, math.ceil(duration), st.used, int(st.banned_until * 1000))
                return Verdict(429, max(1, math.ceil(st.backoff_until - now)), st.used)
            if st.used + weight > self.limit:
                retry = max(1, math.ceil((minute + 1) * 60 - now))
                st.backoff_until = now + retry
                return Verdict(429, retry, st.used)
            st.strikes = 0
            st.used += weight
            return Verdict(200, 0, st.used)


# Real OKX public limits: requests per 2 seconds per IP, per endpoint
OKX_LIMITS_PER_2S = {
    "/api/v5/public/time": 10,
    "/api/v5/public/instruments": 20,
    "/api/v5/market/candles": 40,
    "/api/v5/market/history-candles": 20,
    "/api/v5/market/ticker": 20,
    "/api/v5/market/tickers": 20,
}


@dataclass
class OkxLimiter:
    """Sliding 2-second window per (IP, endpoint); ``factor`` scales the limits, 0 disables."""

    factor: float = 1.0
    _hits: dict[tuple[str, str], deque] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()

    def check(self, ip: str, path: str, now: float) -> Verdict:
        base = OKX_LIMITS_PER_2S.get(path)
        if base is None or self.factor <= 0:
            return Verdict(200)
        limit = max(1, int(base * self.factor))
        with self._lock:
            hits = self._hits.setdefault((ip, path), deque())
            while hits and hits[0] <= now - 2.0:
                hits.popleft()
            if len(hits) >= limit:
                return Verdict(429, max(1, math.ceil(hits[0] + 2.0 - now)))
            hits.append(now)
            return Verdict(200)


# Bybit's documented HTTP IP limit: 600 requests in any 5-second window per IP, all traffic shared;
# over it: 403 "access too frequent" and the IP is blocked (Bybit: "wait for at least 10 minutes").
BYBIT_IP_LIMIT = 600
BYBIT_IP_WINDOW_S = 5.0
BYBIT_BAN_SECONDS = 600.0
# Bybit's per-endpoint "API rate limit" (rolling 1 s window, answered retCode 10006 "Too many visits!"
# with X-Bapi-Limit* headers) is documented per UID; public market requests carry none, so the
# emulator counts it per IP and endpoint. 20/s is twice what ccxt's own pacing sends (cost 5 x 20 ms).
BYBIT_ENDPOINT_LIMIT_PER_S = 20


@dataclass
class BybitVerdict:
    status: int  # 200 = go ahead (or a 10006 envelope when ``throttled``), 403 = IP limit / blocked
    throttled: bool = False
    limit: int = 0  # X-Bapi-Limit
    remaining: int = 0  # X-Bapi-Limit-Status
    reset_ms: int = 0  # X-Bapi-Limit-Reset-Timestamp: now, or when the endpoint's window frees up
    banned: bool = False  # this request is the one that crossed the IP limit


@dataclass
class BybitLimiter:
    """The IP window (403 + block of ``ban_seconds``) and a 1-second window per (IP, endpoint)
    (10006); ``ip_limit`` / ``endpoint_limit`` 0 disable either."""

    ip_limit: int = BYBIT_IP_LIMIT
    endpoint_limit: int = BYBIT_ENDPOINT_LIMIT_PER_S
    ban_seconds: float = BYBIT_BAN_SECONDS
    _ip_hits: dict[str, deque] = field(default_factory=dict)
    _hits: dict[tuple[str, str], deque] = field(default_factory=dict)
    _blocked_until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self._ip_hits.clear()
            self._hits.clear()
            self._blocked_until.clear()

    def blocked_ips(self) -> list[str]:
        with self._lock:
            return list(self._blocked_until)

    def blocked_for(self, ip: str, now: float) -> float:
        with self._lock:
            return max(0.0, self._blocked_until.get(ip, 0.0) - now)

    def check(self, ip: str, path: str, now: float) -> BybitVerdict:
        now_ms = int(now * 1000)
        with self._lock:
            if now < self._blocked_until.get(ip, 0.0):
                return BybitVerdict(403)
            if self.ip_limit > 0:
                ip_hits = self._ip_hits.setdefault(ip, deque())
                while ip_hits and ip_hits[0] <= now - BYBIT_IP_WINDOW_S:
                    ip_hits.popleft()
                if len(ip_hits) >= self.ip_limit:
                    self._blocked_until[ip] = now + self.ban_seconds
                    ip_hits.clear()
                    return BybitVerdict(403, banned=True)
                ip_hits.append(now)
            if self.endpoint_limit <= 0:
                return BybitVerdict(200, limit=0, remaining=0, reset_ms=now_ms)
            hits = self._hits.setdefault((ip, path), deque())
            while hits and hits[0] <= now - 1.0:
                hits.popleft()
            if len(hits) >= self.endpoint_limit:
                return BybitVerdict(200, True, self.endpoint_limit, 0, int((hits[0] + 1.0) * 1000) + 1)
            hits.append(now)
            return BybitVerdict(200, False, self.endpoint_limit, self.endpoint_limit - len(hits), now_ms)
