"""Deterministic synthetic candles for markets without recorded files.

Design (every window is computable in O(window), nothing is generated from the listing date):

* Price anchors: ``log P(t) = log P0 + sum_k a_k * noise_k(t / scale_k)`` - smooth value noise
  whose lattice values come from a hash of (seed, symbol, octave, i); evaluable at any instant.
  The slowest octaves are shared by all exchanges (so BTC/USDT looks alike on Binance and OKX),
  a tiny exchange-specific octave keeps the venues apart.
* Intraday timeframes: each day block (UTC day, or 16:00 UTC day for OKX Hong Kong bars)
  is a Brownian bridge from P(day start) to P(day end) with a per-block RNG seeded from
  (seed, exchange, symbol, timeframe, block start); candle i has open = close of i-1.
* 1d candles: open = P(day start), close = P(day end), hashed wicks; 3d/1w/1M candles are
  exact roll-ups (first/max/min/last/sums) of those daily candles.
* Prices are integer ticks, volumes integer lots, so every field is an exact decimal string
  with fixed precision; high >= max(open, close), low <= min(open, close), all > 0.

Different timeframes are generated independently: they agree exactly at block boundaries
(each UTC day opens at P(day start) on every intraday timeframe) but e.g. a 1h candle is
not the roll-up of the synthetic 1m candles. Same seed -> identical bytes, except for the
in-progress candle, which is the final candle scaled to the elapsed fraction of its period.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from exchange_emulator.candles import Candle
from exchange_emulator.timeframes import DAY, MINUTE, Timeframe

# Plausible 2017-2025 price levels; other symbols get a hashed level.
_BASE_PRICES = {
    "BTC": 40000.0,
    "ETH": 2500.0,
    "SOL": 100.0,
    "XRP": 0.6,
    "BNB": 400.0,
    "OKB": 40.0,
    "DOGE": 0.12,
}
_STABLES = {"USDT", "USDC", "BUSD", "FDUSD", "DAI", "USD"}
_OCTAVES = ((730, 0.9), (180, 0.45), (45, 0.25), (12, 0.12), (3, 0.05), (1, 0.025))  # (days, amplitude)
_DAILY_VOL = 0.03  # std-dev of the intraday bridge per day (log terms)
_QUOTE_PER_MINUTE = 250_000.0  # typical quote volume traded per minute
_TRADE_Q8 = 400 * 100_000_000  # ~400 quote units per trade, for the trade count


def h64(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _unit(*parts: object) -> float:
    return h64(*parts) / 18446744073709551616.0


class _BlockCache:
    """Small thread-safe LRU shared by all synthetic markets (blocks are ~1 MB at most)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


BLOCK_CACHE = _BlockCache(96)  # ~1 MB per 1m block at most


def _formatter(decimals: int, out_decimals: int | None) -> Callable[[int], str]:
    """int in units of 10**-decimals -> decimal string; fixed to ``out_decimals`` places or trimmed."""
    if out_decimals is None:
        if decimals == 0:
            return str

        def trim(v: int) -> str:
            digits = str(v).zfill(decimals + 1)
            tail = digits[-decimals:].rstrip("0")
            return f"{digits[:-decimals]}.{tail}" if tail else digits[:-decimals]

        return trim
    pad = "0" * (out_decimals - decimals)
    if decimals == 0:
        return lambda v: f"{v}.{pad}"

    def fixed(v: int) -> str:
        digits = str(v).zfill(decimals + 1)
        return f"{digits[:-decimals]}.{digits[-decimals:]}{pad}"

    return fixed


class SyntheticMarket:
    """Seeded random-walk candles for one (exchange, BASE/QUOTE)."""

    def __init__(self, exchange: str, base: str, quote: str, seed: int, listing_ms: int) -> None:
        self.exchange = exchange
        self.base = base
        self.quote = quote
        self.seed = seed
        self.listing_ms = listing_ms
        level = _BASE_PRICES.get(base)
        if level is None:
            level = 1.0 if base in _STABLES else 10 ** (_unit(seed, base, "level") * 4 - 1.3)
        if quote not in _STABLES:  # e.g. ETH/BTC: express the level in the quote asset
            level = level / _BASE_PRICES.get(quote, 1000.0)
        self.p0 = level
        mag = math.floor(math.log10(level))
        self.price_decimals = min(8, max(2, 6 - mag))
        self.lot_decimals = min(8, max(0, mag + 1))
        self.tick = 10.0**-self.price_decimals
        # Binance prints 8-decimal strings, OKX trims trailing zeros
        out = 8 if exchange == "binance" else None
        self._fp = _formatter(self.price_decimals, out)
        self._fv = _formatter(self.lot_decimals, out)
        self._fq = _formatter(8, out)
        scale = self.price_decimals + self.lot_decimals  # lots * ticks -> 10**-scale quote units
        self._q_mul = 10 ** max(0, 8 - scale)
        self._q_div = 10 ** max(0, scale - 8)
        self._symbol_key = f"{base}/{quote}"
        self._lp0 = math.log(level)
        self._lattice: dict[tuple, float] = {}
        self._days: dict[int, tuple] = {}
        self._inflight: set[tuple] = set()
        self._lock = threading.Lock()

    # ---- price anchors -------------------------------------------------------------
    def _g(self, *key: object) -> float:
        value = self._lattice.get(key)
        if value is None:
            if len(key) == 2:
                value = _unit(self.seed, self._symbol_key, *key) * 2 - 1
            else:  # venue octave
                value = _unit(self.seed, self.exchange, self._symbol_key, *key) * 2 - 1
            if len(self._lattice) > 200_000:
                self._lattice.clear()
            self._lattice[key] = value
        return value

    def log_anchor(self, t_ms: int) -> float:
        x_days = t_ms / DAY
        total = self._lp0
        for k, (scale, amp) in enumerate(_OCTAVES):
            x = x_days / scale
            i = math.floor(x)
            f = x - i
            f = f * f * (3 - 2 * f)
            g0 = self._g(k, i)
            total += amp * (g0 + (self._g(k, i + 1) - g0) * f)
        # venue-specific wobble (a few bp) so exchanges do not print identical prices
        x = x_days * 4
        i = math.floor(x)
        f = x - i
        e0 = self._g("venue", i, 0)
        return total + 0.002 * (e0 + (self._g("venue", i + 1, 0) - e0) * f)

    def _ticks(self, log_price: float) -> int:
        return max(1, round(math.exp(log_price) / self.tick))

    # ---- int tuples: (ts, dur, o, h, l, c, lots, taker_lots, q8, taker_q8, trades) ---------
    def _quote8(self, lots: int, price_ticks: int) -> int:
        value = lots * price_ticks
        if self._q_div > 1:
            return (value + self._q_div // 2) // self._q_div
        return value * self._q_mul

    def _ints(self, ts: int, dur: int, o: int, h: int, low: int, c: int, lots: int, taker: int) -> tuple:
        vwap = (o + h + low + c) >> 2
        q8 = self._quote8(lots, vwap)
        return (ts, dur, o, h, low, c, lots, taker, q8, self._quote8(taker, vwap), 1 + q8 // _TRADE_Q8)

    def _candle(self, t: tuple, confirm: str = "1") -> Candle:
        ts, dur, o, h, low, c, lots, taker, q8, tq8, trades = t
        fp, fv, fq = self._fp, self._fv, self._fq
        quote = fq(q8)
        return Candle(
            ts,
            fp(o),
            fp(h),
            fp(low),
            fp(c),
            fv(lots),
            ts + dur - 1,
            quote,
            quote,
            trades,
            fv(taker),
            fq(tq8),
            confirm,
        )

    def _lots_for(self, minutes: float, price_ticks: int, noise: float) -> int:
        base_volume = _QUOTE_PER_MINUTE * minutes / (price_ticks * self.tick) * math.exp(0.55 * noise)
        return max(1, round(base_volume * 10**self.lot_decimals))

    def _intraday_block(self, tf: Timeframe, block_start: int) -> tuple[list[Candle | None], list[tuple]]:
        key = (self.exchange, self._symbol_key, self.seed, tf.ms, block_start)
        cached = BLOCK_CACHE.get(key)
        if cached is not None:
            return cached
        n = DAY // tf.ms
        rnd = random.Random(h64(self.seed, self.exchange, self._symbol_key, "blk", tf.ms, block_start))
        rand = rnd.random
        log = math.log
        l0 = self.log_anchor(block_start)
        l1 = self.log_anchor(block_start + DAY)
        sigma = _DAILY_VOL / math.sqrt(n)
        step = sigma * 3.4641016151377544  # uniform(-.5,.5)*sqrt(12) has unit variance
        walk = [0.0] * (n + 1)
        acc = 0.0
        for i in range(1, n + 1):
            acc += (rand() - 0.5) * step
            walk[i] = acc
        drift = (l1 - l0 - acc) / n  # bridge: pin the walk to the next block's anchor
        inv_tick = 1.0 / self.tick
        exp = math.exp
        ticks = [max(1, round(exp(l0 + walk[i] + drift * i) * inv_tick)) for i in range(n + 1)]
        wick = sigma * 0.5
        # lots = vol_k / price_ticks * activity * lognormal noise (see _lots_for)
        vol_k = _QUOTE_PER_MINUTE * (tf.ms / MINUTE) / self.tick * 10**self.lot_decimals
        q_mul, q_div, dur = self._q_mul, self._q_div, tf.ms
        ints = []
        ts = block_start
        for i in range(n):
            o, c = ticks[i], ticks[i + 1]
            if o < c:
                hi, lo = c, o
            else:
                hi, lo = o, c
            h = hi + int(-log(1.0 - rand()) * wick * hi)
            low = lo - int(-log(1.0 - rand()) * wick * lo)
            if low < 1:
                low = 1
            noise = (rand() + rand() + rand() - 1.5) * 2.0  # ~N(0, 1)
            lots = round(vol_k * (1 + 15 * (hi - lo) / o) / o * exp(0.55 * noise)) or 1
            taker = lots * (35 + int(rand() * 30)) // 100
            vwap = (o + h + low + c) >> 2
            if q_div > 1:
                q8 = (lots * vwap + (q_div >> 1)) // q_div
                tq8 = (taker * vwap + (q_div >> 1)) // q_div
            else:
                q8 = lots * vwap * q_mul
                tq8 = taker * vwap * q_mul
            ints.append((ts, dur, o, h, low, c, lots, taker, q8, tq8, 1 + q8 // _TRADE_Q8))
            ts += dur
        # candles are formatted lazily (see _complete): a page rarely needs a whole block
        block: tuple[list[Candle | None], list[tuple]] = ([None] * n, ints)
        BLOCK_CACHE.put(key, block)
        return block

    def _daily_ints(self, day_start: int) -> tuple:
        hit = self._days.get(day_start)
        if hit is not None:
            return hit
        rnd = random.Random(h64(self.seed, self.exchange, self._symbol_key, "day", day_start))
        o = self._ticks(self.log_anchor(day_start))
        c = self._ticks(self.log_anchor(day_start + DAY))
        hi, lo = max(o, c), min(o, c)
        h = hi + int(abs(rnd.gauss(0.0, _DAILY_VOL * 0.8)) * hi)
        low = max(1, lo - int(abs(rnd.gauss(0.0, _DAILY_VOL * 0.8)) * lo))
        lots = self._lots_for(1440 * (1 + 3 * (hi - lo) / o), o, rnd.gauss(0.0, 1.0))
        taker = lots * (35 + int(rnd.random() * 30)) // 100
        value = self._ints(day_start, DAY, o, h, low, c, lots, taker)
        with self._lock:
            if len(self._days) > 100_000:
                self._days.clear()
            self._days[day_start] = value
        return value

    def _multi_day_ints(self, start: int, end: int) -> tuple:
        """Exact roll-up of the daily candles in [start, end)."""
        days = [self._daily_ints(d) for d in range(start, end, DAY)]
        return (
            start,
            end - start,
            days[0][2],
            max(d[3] for d in days),
            min(d[4] for d in days),
            days[-1][5],
            sum(d[6] for d in days),
            sum(d[7] for d in days),
            sum(d[8] for d in days),
            sum(d[9] for d in days),
            sum(d[10] for d in days),
        )

    def _complete(self, tf: Timeframe, starts: list[int]) -> tuple[list[Candle], tuple | None]:
        """Candles for ``starts`` plus the int tuple of the last one (for the in-progress copy)."""
        if not starts:
            return [], None
        if tf.is_intraday:
            day_anchor = tf.anchor % DAY
            out: list[Candle] = []
            block: tuple[list[Candle | None], list[tuple]] = ([], [])
            block_start = None
            for ts in starts:
                b = (ts - day_anchor) // DAY * DAY + day_anchor
                if b != block_start:
                    block_start = b
                    block = self._intraday_block(tf, b)
                i = (ts - b) // tf.ms
                c = block[0][i]
                if c is None:  # benign race: two threads may format the same candle
                    c = block[0][i] = self._candle(block[1][i])
                out.append(c)
            return out, block[1][(starts[-1] - block_start) // tf.ms]  # type: ignore[operator]
        day_anchor = tf.anchor % DAY
        ints = []
        for ts in starts:
            end = tf.end(ts)
            if (end - ts) % DAY or ts % DAY != day_anchor:
                raise ValueError(f"unsupported synthetic timeframe {tf.name}")
            ints.append(self._daily_ints(ts) if end - ts == DAY else self._multi_day_ints(ts, end))
        return [self._candle(t) for t in ints], ints[-1]

    def _partial(self, t: tuple, now_ms: int) -> Candle:
        """In-progress copy of candle ``t`` at ``now_ms``: close/volumes scaled by the elapsed fraction."""
        ts, dur, o, h, low, c, lots, taker, q8, tq8, trades = t
        num, den = now_ms - ts, dur
        cp = o + (c - o) * num // den
        # wicks grow with time too; stays OHLC-consistent: hp >= max(o, cp), lp <= min(o, cp), lp >= low
        hp = max(o, cp) + (h - max(o, c)) * num // den
        lp = min(o, cp) - (min(o, c) - low) * num // den
        partial = (
            ts,
            dur,
            o,
            hp,
            lp,
            cp,
            lots * num // den,
            taker * num // den,
            q8 * num // den,
            tq8 * num // den,
            trades * num // den,
        )
        return self._candle(partial, "0")

    # ---- public query -----------------------------------------------------------------
    def first_open(self, tf: Timeframe) -> int:
        return tf.ceil(self.listing_ms)

    def candles(self, tf: Timeframe, lo: int, hi: int, limit: int, newest: bool, now_ms: int) -> list[Candle]:
        """Up to ``limit`` ascending candles with lo <= open <= hi, up to the in-progress one.

        ``newest`` picks the last ``limit`` of the window instead of the first.
        """
        current = tf.floor(now_ms)
        lo = max(lo, self.first_open(tf))
        hi = min(hi, current)
        if lo > hi or limit <= 0:
            return []
        if tf.ms:
            first = tf.ceil(lo)
            last = tf.floor(hi)
            if first > last:
                return []
            if newest:
                first = max(first, last - (limit - 1) * tf.ms)
            else:
                last = min(last, first + (limit - 1) * tf.ms)
            starts = list(range(first, last + 1, tf.ms))
        else:
            starts = tf.starts(lo, hi)
            starts = starts[-limit:] if newest else starts[:limit]
        out, last_ints = self._complete(tf, starts)
        if out and out[-1].ts == current and last_ints is not None:
            out = list(out)
            out[-1] = self._partial(last_ints, now_ms)
        day_anchor = tf.anchor % DAY
        if (tf.is_intraday and len(starts) >= 100
                and (starts[0] - day_anchor) // DAY != (starts[-1] - day_anchor) // DAY):
            # a client paging across a day boundary will most likely want the adjacent day next; a page
            # inside one day (a backfill of a day per market) wants nothing more of this market, and a
            # day made for nobody held the GIL the other requests' threads wait for
            edge = starts[0] - DAY if newest else starts[-1] + DAY
            if edge <= current:
                self._prefetch(tf, edge)
        return out

    def _prefetch(self, tf: Timeframe, ts: int) -> None:
        """Generate the day block holding ``ts`` in the background (overlaps with client work)."""
        day_anchor = tf.anchor % DAY
        block_start = (ts - day_anchor) // DAY * DAY + day_anchor
        key = (self.exchange, self._symbol_key, self.seed, tf.ms, block_start)
        if BLOCK_CACHE.get(key) is not None:
            return
        with self._lock:
            if key in self._inflight or len(self._inflight) >= 2:
                return
            self._inflight.add(key)

        def run() -> None:
            try:
                block = self._intraday_block(tf, block_start)
                for i in range(len(block[0])):  # format too: that is half of the work
                    if block[0][i] is None:
                        block[0][i] = self._candle(block[1][i])
            finally:
                with self._lock:
                    self._inflight.discard(key)

        threading.Thread(target=run, name="emulator-prefetch", daemon=True).start()
