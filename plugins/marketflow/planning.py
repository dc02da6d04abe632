"""Which windows a run or a backfill covers: its time window, each market's share of it, and a
``market_backfill`` request cut into mapped work units. No exchange client here (``marketflow.pipeline``
imports ccxt, ~0.4 s on a quiet machine and 4-10 s at load 20), so market_backfill's plan task starts
fast; ``marketflow.pipeline`` re-exports these names."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from marketflow.config import MarketConfig, MarketflowConfig
from marketflow.logs import get_logger
from marketflow.timeframes import Window, ceil_ms, floor_ms, iso, timeframe_ms, to_ms

log = get_logger(__name__)

def parse_time(value: Any, name: str) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an ISO-8601 time; pass e.g. 2024-01-01T00:00:00Z") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def plan_window(timeframe: str, interval_start: datetime | None, interval_end: datetime | None,
                conf: dict[str, Any] | None, overlap_minutes: int, now: datetime | None = None) -> Window:
    """The window a run extracts.

    ``dag_run.conf`` start/end win (reprocess any window from the UI); else the run's data
    interval widened by the overlap (late corrections of the last minutes are re-read); a run
    without a logical date takes the last closed interval before now.
    """
    conf = conf or {}
    step = timeframe_ms(timeframe)
    if conf.get("start") or conf.get("end"):
        if not (conf.get("start") and conf.get("end")):
            raise ValueError("dag_run.conf needs both 'start' and 'end' (ISO-8601, UTC) to override the window")
        start = floor_ms(to_ms(parse_time(conf["start"], "start")), timeframe)
        end = ceil_ms(to_ms(parse_time(conf["end"], "end")), timeframe)  # weeks open on Monday, not epoch-aligned
        if end <= start:
            raise ValueError(f"dag_run.conf end {conf['end']} is not after start {conf['start']}")
        return Window(start, end)
    overlap = overlap_minutes * 60_000
    if interval_start is not None and interval_end is not None and interval_end > interval_start:
        return Window(floor_ms(to_ms(interval_start) - overlap, timeframe), floor_ms(to_ms(interval_end), timeframe))
    end = floor_ms(to_ms(now or datetime.now(UTC)), timeframe)
    if interval_end is not None:  # a zero-length interval (trigger timetable): up to its point in time
        end = floor_ms(to_ms(interval_end), timeframe)
    return Window(floor_ms(end - step - overlap, timeframe), end)


def market_window(market: MarketConfig, timeframe: str, window: Window, now_ms: int) -> Window:
    """Clip a run's window to the market's configured history and to closed candles."""
    end_bound = floor_ms(now_ms, timeframe)
    if market.history_end is not None:
        end_bound = min(end_bound, to_ms(market.history_end))
    return window.clip(floor_ms(to_ms(market.history_start), timeframe), end_bound)


def selected(market: MarketConfig, conf: dict[str, Any] | None) -> bool:
    """``dag_run.conf`` may narrow a run to some exchanges and/or symbols."""
    conf = conf or {}
    exchanges, symbols = conf.get("exchanges") or [], conf.get("symbols") or []
    return (not exchanges or market.exchange in exchanges) and (not symbols or market.symbol in symbols)


def _backfill_request(config: MarketflowConfig, exchange: str, params: dict[str, Any], now_ms: int | None
                      ) -> tuple[str, int, list[dict[str, Any]]]:
    """A backfill request checked: (timeframe, chunk ms, each selected market's window clipped to its
    history and to closed candles, the empty ones left out)."""
    timeframe = params.get("timeframe") or "1m"
    chunk_ms = int(params.get("chunk_hours") or 24) * 3_600_000
    if chunk_ms <= 0:
        raise ValueError("chunk_hours must be a positive number of hours")
    if not params.get("start") or not params.get("end"):
        raise ValueError("a backfill needs 'start' and 'end' (ISO-8601, UTC), e.g. 2024-01-01T00:00:00Z")
    window = plan_window(timeframe, None, None, {"start": params["start"], "end": params["end"]}, 0)
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    markets = []
    for market in config.exchange(exchange).markets:
        if timeframe not in market.timeframes or not selected(market, params):
            continue
        clipped = market_window(market, timeframe, window, now_ms)
        if not clipped.empty:
            markets.append({"symbol": market.symbol, "window_start_ms": clipped.start_ms,
                            "window_end_ms": clipped.end_ms})
    return timeframe, chunk_ms, markets


def plan_chunks(config: MarketflowConfig, exchange: str, params: dict[str, Any], now_ms: int | None = None
                ) -> list[dict[str, Any]]:
    """Split a backfill request into per-market windows of ``chunk_hours`` (each clipped to the
    market's history and to closed candles), oldest first."""
    timeframe, chunk_ms, markets = _backfill_request(config, exchange, params, now_ms)
    unit = {"chunk_ms": chunk_ms}
    chunks = [{"exchange": exchange, "symbol": m["symbol"], "timeframe": timeframe,
               "window_start_ms": w.start_ms, "window_end_ms": w.end_ms}
              for m in markets for w in market_chunks(unit, m)]
    for i, chunk in enumerate(chunks, 1):
        chunk["chunk"], chunk["chunks"] = i, len(chunks)
    return chunks


def request_span(config: MarketflowConfig, params: dict[str, Any], now_ms: int | None = None
                 ) -> tuple[datetime, datetime] | None:
    """The time a backfill request writes, over every enabled exchange: from the earliest selected
    market's clipped window start to the latest end (None: nothing to write). Storage preparation
    creates its month partitions before the ingest tasks load into them."""
    windows = [(m["window_start_ms"], m["window_end_ms"]) for exchange in config.enabled_exchanges
               for m in _backfill_request(config, exchange.name, params, now_ms)[2]]
    if not windows:
        return None
    return (datetime.fromtimestamp(min(w[0] for w in windows) / 1000, UTC),
            datetime.fromtimestamp(max(w[1] for w in windows) / 1000, UTC))


# A mapped backfill task's share of the request, in candles. Measured under Airflow (bench figure 11,
# bench/README.md): a task costs ~4-8 s of scheduling, process start and DAG parsing beside its
# work, and the backfill path moves ~5-10k candles/s per task here, so 1,000,000 candles (~2-3 min
# of work) keeps that cost under 10 % of the run; a year of 1,000 markets is then ~530 tasks, well
# inside max_map_length, and a retry redoes at most one task's share (its complete chunks skipped).
BACKFILL_TASK_CANDLES = 1_000_000
# Below this many candles a request is one task: a second task would cost more than it saves.
BACKFILL_MIN_SPLIT_CANDLES = BACKFILL_TASK_CANDLES // 10


def plan_backfill(config: MarketflowConfig, exchange: str, params: dict[str, Any], max_tasks: int,
                  now_ms: int | None = None) -> list[dict[str, Any]]:
    """A backfill request as mapped work units of about ``task_candles`` candles each (default
    ``BACKFILL_TASK_CANDLES``), at most ``max_tasks`` of them (Airflow's max_map_length).

    The markets' windows are laid end to end (market by market, oldest first) and cut into equal
    shares on ``chunk_hours`` boundaries, so a unit holds many small markets (a day of 1,000 markets
    is a few tasks, not 1,000 task start-ups) or a slice of one long market (a year of 20 markets is
    ~12 tasks, not 20 of uneven length); every candle of the request is in exactly one unit. At least
    the exchange's backfill pool slots of units when the request is worth splitting, so every slot
    works, and past that a multiple of them where the limits allow, so the last wave fills the pool.
    A unit carries windows, not chunks, so a year of 1,000 markets stays a small XCom; the task works
    through the chunks itself."""
    if max_tasks < 1:
        raise ValueError(f"max_tasks must be at least 1, got {max_tasks}")
    task_candles = int(params.get("task_candles") or BACKFILL_TASK_CANDLES)
    if task_candles < 1:
        raise ValueError(f"task_candles must be a positive number of candles, got {task_candles}")
    timeframe, chunk_ms, markets = _backfill_request(config, exchange, params, now_ms)
    if not markets:
        return []
    sizes = [Window(m["window_start_ms"], m["window_end_ms"]).candles(timeframe) for m in markets]
    total = sum(sizes)
    chunks = sum(-(-(m["window_end_ms"] - m["window_start_ms"]) // chunk_ms) for m in markets)
    slots = config.exchange(exchange).backfill_pool_slots
    wanted = -(-total // task_candles)
    if wanted < slots:
        wanted = min(slots, max(1, total // min(BACKFILL_MIN_SPLIT_CANDLES, task_candles)))
    n = max(1, min(max_tasks, wanted, chunks))
    whole_waves = -(-n // slots) * slots
    if n > slots and whole_waves <= min(max_tasks, chunks):
        # Whole waves: with 11 tasks on 2 slots the 11th ran alone, one slot idle for its ~90 s (8 % of
        # a year of 20 markets' run, bench figure 11b); 12 slightly smaller tasks end together.
        n = whole_waves
    share = -(-total // n)
    if wanted > max_tasks:
        log.warning("%s: %d candles in %d tasks (max_map_length) of ~%d, more than task_candles %d each", exchange,
                    total, n, share, task_candles, exchange=exchange, candles=total, tasks=n)
    units: list[dict[str, Any]] = [{"exchange": exchange, "timeframe": timeframe, "chunk_ms": chunk_ms,
                                    "markets": []} for _ in range(n)]
    # The markets' chunks laid end to end: a chunk goes to unit (candles before it) // share. Found by
    # bisecting each market's chunk grid at the unit boundaries, so a year of 1,000 markets plans in
    # milliseconds, not by walking its 365,000 chunks.
    offset = 0
    for m, size in zip(markets, sizes, strict=True):
        start, end = m["window_start_ms"], m["window_end_ms"]
        n_chunks = -(-(end - start) // chunk_ms)

        def before(i: int, start: int = start, end: int = end) -> int:
            """Candles of the market's window before its chunk i."""
            return Window(start, min(start + i * chunk_ms, end)).candles(timeframe)

        first, unit = 0, min(offset // share, n - 1)
        while first < n_chunks:
            stop = n_chunks
            if unit < n - 1:  # the first chunk that belongs to a later unit
                target, lo, hi = (unit + 1) * share - offset, first + 1, n_chunks
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if before(mid) >= target else (mid + 1, hi)
                stop = lo
            units[unit]["markets"].append({
                "symbol": m["symbol"], "window_start_ms": start + first * chunk_ms,
                "window_end_ms": min(start + stop * chunk_ms, end),
                # the market's whole requested window, for progress in words ("x% of the market's window")
                "market_start_ms": start, "market_end_ms": end})
            first = stop
            unit = min((offset + before(first)) // share, n - 1)
        offset += size
    units = [u for u in units if u["markets"]]
    for i, u in enumerate(units, 1):
        u["unit"], u["units"] = i, len(units)
        u["candles"] = sum(Window(s["window_start_ms"], s["window_end_ms"]).candles(timeframe) for s in u["markets"])
        specs = u["markets"]
        u["label"] = (f"{specs[0]['symbol']} {iso(specs[0]['window_start_ms'])}..{iso(specs[0]['window_end_ms'])}"
                      if len(specs) == 1 else f"{specs[0]['symbol']} .. {specs[-1]['symbol']} ({len(specs)} markets)")
    return units


def market_chunks(unit: dict[str, Any], market: dict[str, Any]) -> list[Window]:
    chunk_ms, end = unit["chunk_ms"], market["window_end_ms"]
    return [Window(start, min(start + chunk_ms, end)) for start in range(market["window_start_ms"], end, chunk_ms)]
