"""A token bucket per exchange and egress identity in Postgres, shared by every worker process.

ccxt paces calls inside one process; with several Airflow workers each would go at full speed.
This bucket holds one exchange's budget for all of them. Its unit is ccxt's own request cost
(Binance: `rateLimit` 50 ms, klines cost 0.4 -> 3,000 calls/min, i.e. Binance's 6,000 weight per
minute at weight 2), so it works for any ccxt exchange without a table of weights.

An exchange counts its limit per IP address, so the bucket is per (exchange, egress identity): every
worker process reads its identity from ``MARKETFLOW_EGRESS_ID`` (default ``default``), set alike for
workers that leave through one IP (they share one budget) and differently for workers behind another
IP (a budget of its own). A 429 or a ban pauses only the identity that got it. With the CeleryExecutor
the tasks of an exchange go to its queue (``ExchangeConfig.queue``), so an operator places workers,
and so identities, per exchange.

Acquisition is one atomic UPDATE (refill by elapsed time, then take) — no lock held between
calls. Live before history: a limiter for history work (the hourly reconcile, gap repairs,
backfills) may not take the bucket below ``reserve`` of its capacity; the minute path may take
everything. So a backfill at the exchange's full limit drains the bucket to the reserve and stops
there, and the minute path always finds its tokens (and the refill, as soon as it asks).

Live first in time, too: every live take marks a burst on the bucket (``live_until`` = the take +
``live_burst_seconds``), and history takes wait until it has passed. At a minute close the minute
path's calls come one after another, so for those seconds the exchange (and the machine) serve the
feed alone; history resumes ``live_burst_seconds`` after the feed's last call. So that a live path
calling without pause cannot starve history, one history acquisition yields to bursts for at most
``max_live_yield_seconds``, then takes its tokens above the reserve as before.

A 429 pauses the whole exchange for its Retry-After; a 418 (ban) pauses it until the ban ends.
A request larger than the bucket (less the reserve, for history) waits for a full bucket and leaves it
in debt, as ccxt's throttler does, so no cost is too big to take and the average rate is kept.

Tokens used (live and in all), denials and time waited are counted per exchange and minute in
ops.rate_limit_metrics (all identities together).
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from marketflow.logs import get_logger

log = get_logger(__name__)

EGRESS_ENV = "MARKETFLOW_EGRESS_ID"
DEFAULT_EGRESS = "default"
_EGRESS = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def egress_id(env: dict[str, str] | None = None) -> str:
    """This worker's egress identity (``MARKETFLOW_EGRESS_ID``): workers leaving through one IP address
    share a bucket per exchange, so set the same value on them (e.g. the IP or a NAT gateway's name)."""
    value = (os.environ if env is None else env).get(EGRESS_ENV, "").strip() or DEFAULT_EGRESS
    if not _EGRESS.match(value):
        raise ValueError(f"{EGRESS_ENV}={value!r} is not an egress identity: use 1-64 letters, digits, '_', '.', "
                         f"':' or '-' (e.g. the worker's public IP or its NAT gateway's name), or unset it for "
                         f"{DEFAULT_EGRESS!r}")
    return value


@dataclass
class _Minute:
    tokens: float = 0.0
    acquisitions: int = 0
    denied: int = 0
    wait_seconds: float = 0.0
    http_429: int = 0
    http_418: int = 0
    live_tokens: float = 0.0
    live_wait_seconds: float = 0.0


@dataclass
class SharedRateLimiter:
    """``conn`` must be a dedicated autocommit psycopg2 connection (acquisitions commit at once)."""

    conn: object
    exchange: str
    per_minute: float  # cost units per minute the exchange allows (60000 / ccxt rateLimit)
    share: float = 0.9  # fraction of the exchange's limit we use, leaving room for clock skew and others
    burst_seconds: float = 2.0
    # Longest wait for tokens; ``deadline`` (time.monotonic()) shortens it to what is left of the task.
    max_wait_seconds: float = 300.0
    live: bool = True  # the minute path; False for history work, which leaves ``reserve`` to it
    reserve: float = 0.0  # share of the capacity history may not take
    deadline: float | None = None
    # Workers behind one egress IP share a bucket per exchange; None: this process's MARKETFLOW_EGRESS_ID.
    egress: str | None = None
    # Live takes hold history off for this long after each of them (0: no hold); history waits out such a
    # burst for at most max_live_yield_seconds per acquisition.
    live_burst_seconds: float = 0.0
    max_live_yield_seconds: float = 30.0
    # Seconds this limiter's history acquisitions waited for live bursts (reported by the tasks).
    live_yield_seconds: float = 0.0
    _pending: dict[datetime, _Minute] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.egress is None:
            self.egress = egress_id()

    @property
    def floor(self) -> float:
        """Tokens this limiter must leave in the bucket: the live reserve, for history work."""
        return 0.0 if self.live else self.capacity * self.reserve

    @property
    def refill_per_second(self) -> float:
        return self.per_minute * self.share / 60.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.refill_per_second * self.burst_seconds)

    def ensure_bucket(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(
                """
                INSERT INTO ops.rate_limit_buckets (exchange, egress_id, capacity, refill_per_second, tokens)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (exchange, egress_id) DO UPDATE
                    SET capacity = EXCLUDED.capacity, refill_per_second = EXCLUDED.refill_per_second
                    WHERE (rate_limit_buckets.capacity, rate_limit_buckets.refill_per_second)
                          IS DISTINCT FROM (EXCLUDED.capacity, EXCLUDED.refill_per_second)
                """,
                (self.exchange, self.egress, self.capacity, self.refill_per_second, self.capacity),
            )

    def acquire(self, cost: float) -> float:
        """Take ``cost`` tokens, waiting as long as needed; returns the seconds waited."""
        cost = max(float(cost or 1), 1e-6)
        started = time.monotonic()
        give_up = started + self.max_wait_seconds
        if self.deadline is not None:
            give_up = min(give_up, self.deadline)
        yield_until = started + self.max_live_yield_seconds
        denied = 0
        yielded = 0.0
        while True:
            now = time.monotonic()
            yields = not self.live and now < yield_until
            wait, for_live = self._try_take(cost, yield_to_live=yields)
            if wait <= 0:
                break
            denied += 1
            if for_live:  # the rest of the yield is short: wake at its end, not at the burst's
                wait = min(wait, max(yield_until - now, 0.01))
            if now + wait > give_up:
                raise TimeoutError(f"{self.exchange}: no rate-limit budget within {give_up - started:.0f}s "
                                   f"({'live' if self.live else 'history'} call; the exchange is paused or the "
                                   f"budget is saturated); see ops.rate_limit_buckets, egress_id "
                                   f"{self.egress!r}")
            time.sleep(min(wait, 5.0))
            if for_live:
                yielded += time.monotonic() - now
        waited = time.monotonic() - started
        self.live_yield_seconds += yielded
        if self.live:
            self._count(tokens=cost, acquisitions=1, denied=denied, wait_seconds=waited, live_tokens=cost,
                        live_wait_seconds=waited)
        else:
            self._count(tokens=cost, acquisitions=1, denied=denied, wait_seconds=waited)
        return waited

    def _try_take(self, cost: float, yield_to_live: bool = False) -> tuple[float, bool]:
        """Take the tokens if they are there (returns 0), else the seconds until they could be, and
        whether a live burst (``yield_to_live``: a history take waits it out) is what holds it back.

        The refill and the take are computed from the row inside the UPDATE itself: concurrent
        workers queue on the row lock and Postgres re-evaluates both against the newest version,
        so no take is lost (a CTE read first would hand two workers the same tokens).
        """
        available = ("least(capacity, tokens + extract(epoch FROM clock_timestamp() - refilled_at) "
                     "* refill_per_second)")
        # History needs the reserve left over after its take; live needs only the cost. A request costing
        # more than that (a slow exchange's page: Kraken's 1.2 units against a 1-unit bucket) waits for a
        # full bucket and leaves it in debt, which later takers wait out, as ccxt's own throttler does;
        # the rate stays the exchange's. The hair less keeps a bucket sized to exactly one request (Bybit's
        # 45/s x 0.111 s = 4.999...) from missing it by a float's last bit.
        params = {"ex": self.exchange, "egress": self.egress, "cost": cost,
                  "need": min(cost + self.floor, self.capacity) * (1 - 1e-9),
                  "burst": self.live_burst_seconds if self.live else 0.0, "yield": yield_to_live}
        with self.conn.cursor() as cur:
            cur.execute(
                f"""
                UPDATE ops.rate_limit_buckets
                SET tokens = {available} - %(cost)s, refilled_at = clock_timestamp(),
                    live_until = CASE WHEN %(burst)s > 0
                                      THEN greatest(live_until, clock_timestamp() + make_interval(secs => %(burst)s))
                                      ELSE live_until END
                WHERE exchange = %(ex)s AND egress_id = %(egress)s AND {available} >= %(need)s
                  AND (paused_until IS NULL OR paused_until <= clock_timestamp())
                  AND NOT (%(yield)s AND coalesce(live_until > clock_timestamp(), false))
                RETURNING 1
                """,
                params,
            )
            if cur.fetchone():
                return 0.0, False
            cur.execute(
                f"""
                SELECT greatest(extract(epoch FROM paused_until - clock_timestamp()), 0),
                       greatest((%(need)s - {available}) / refill_per_second, 0),
                       CASE WHEN %(yield)s THEN greatest(extract(epoch FROM live_until - clock_timestamp()), 0) END
                FROM ops.rate_limit_buckets WHERE exchange = %(ex)s AND egress_id = %(egress)s
                """,
                params,
            )
            row = cur.fetchone()
        if row is None:
            raise LookupError(f"no rate-limit bucket for {self.exchange} (egress {self.egress!r}); "
                              f"call ensure_bucket() first")
        paused_for, refill_wait, live_for = (float(v or 0) for v in row)
        wait = max(paused_for, refill_wait, live_for, 0.01)
        return wait, live_for > 0 and live_for >= max(paused_for, refill_wait)

    def pause(self, seconds: float, reason: str, status: int | None = None) -> None:
        """Stop the calls to this exchange of every worker of this egress identity for ``seconds`` (429
        Retry-After, 418 ban): the exchange limits and bans an IP, so other identities keep calling."""
        with self.conn.cursor() as cur:
            cur.execute(
                """
                UPDATE ops.rate_limit_buckets
                SET paused_until = greatest(coalesce(paused_until, clock_timestamp()),
                                            clock_timestamp() + make_interval(secs => %s)),
                    pause_reason = %s, tokens = 0, refilled_at = clock_timestamp()
                WHERE exchange = %s AND egress_id = %s
                """,
                (seconds, reason, self.exchange, self.egress),
            )
        if status == 429:
            self._count(http_429=1)
        elif status == 418:
            self._count(http_418=1)
        log.warning("%s: all calls from egress %s paused for %.0fs: %s", self.exchange, self.egress, seconds, reason,
                    exchange=self.exchange, egress=self.egress, seconds=seconds, status=status)

    def _count(self, **amounts: float) -> None:
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        bucket = self._pending.setdefault(minute, _Minute())
        for key, value in amounts.items():
            setattr(bucket, key, getattr(bucket, key) + value)
        if len(self._pending) > 1 or bucket.acquisitions % 50 == 0:
            self.flush()

    def flush(self) -> None:
        """Add the counted figures to ops.rate_limit_metrics."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        with self.conn.cursor() as cur:
            for minute, m in pending.items():
                cur.execute(
                    """
                    INSERT INTO ops.rate_limit_metrics AS r (exchange, minute, tokens_used, acquisitions, denied,
                                                             wait_seconds, http_429, http_418, live_tokens_used,
                                                             live_wait_seconds)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (exchange, minute) DO UPDATE SET
                        tokens_used = r.tokens_used + EXCLUDED.tokens_used,
                        acquisitions = r.acquisitions + EXCLUDED.acquisitions, denied = r.denied + EXCLUDED.denied,
                        wait_seconds = r.wait_seconds + EXCLUDED.wait_seconds,
                        http_429 = r.http_429 + EXCLUDED.http_429, http_418 = r.http_418 + EXCLUDED.http_418,
                        live_tokens_used = r.live_tokens_used + EXCLUDED.live_tokens_used,
                        live_wait_seconds = r.live_wait_seconds + EXCLUDED.live_wait_seconds
                    """,
                    (self.exchange, minute, m.tokens, m.acquisitions, m.denied, m.wait_seconds, m.http_429,
                     m.http_418, m.live_tokens, m.live_wait_seconds),
                )
