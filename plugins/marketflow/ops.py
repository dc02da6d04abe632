"""Postgres ops tables: the configured markets, and the queue of windows to re-fetch.

ops.backfill_tasks is a small work queue. Tasks are claimed with FOR UPDATE SKIP LOCKED, so
overlapping runs never take the same window; a task left `running` by a worker that died is
claimable again after ``STALE_AFTER``. Every transition is one UPDATE, so a crash between two
of them leaves a state the next run can continue from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from psycopg2.extras import execute_values

from marketflow.config import MarketflowConfig
from marketflow.logs import get_logger
from marketflow.timeframes import Window, to_ms

log = get_logger(__name__)

STALE_AFTER = "30 minutes"


def sync_market_config(conn, config: MarketflowConfig) -> int:
    """Mirror the markets file into ops.market_config; markets no longer configured are disabled."""
    rows = [(m.exchange, m.symbol, tf, ex.ccxt_id, m.history_start, m.history_end, ex.enabled)
            for ex in config.exchanges for m in ex.markets for tf in m.timeframes]
    with conn.cursor() as cur:
        execute_values(cur, """
            INSERT INTO ops.market_config (exchange, symbol, timeframe, ccxt_id, history_start, history_end, enabled)
            VALUES %s
            ON CONFLICT (exchange, symbol, timeframe) DO UPDATE SET
                ccxt_id = EXCLUDED.ccxt_id, history_start = EXCLUDED.history_start,
                history_end = EXCLUDED.history_end, enabled = EXCLUDED.enabled, synced_at = now()
            WHERE (market_config.ccxt_id, market_config.history_start, market_config.history_end,
                   market_config.enabled)
                IS DISTINCT FROM (EXCLUDED.ccxt_id, EXCLUDED.history_start, EXCLUDED.history_end, EXCLUDED.enabled)
            """, rows)
        cur.execute(
            "UPDATE ops.market_config SET enabled = false, synced_at = now() "
            "WHERE enabled AND (exchange, symbol, timeframe) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[], "
            "%s::text[]))",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )
    conn.commit()
    return len(rows)


@dataclass(frozen=True)
class BackfillTask:
    task_id: int
    exchange: str
    symbol: str
    timeframe: str
    window_start_ms: int
    window_end_ms: int
    attempts: int
    max_attempts: int

    @property
    def window(self) -> Window:
        return Window(self.window_start_ms, self.window_end_ms)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# A live market's trailing gap that ends this recently is the minutes the minute DAG has not
# loaded yet (dbt computed it up to its build time), not a hole: it is left to that DAG.
TRAILING_GRACE_MINUTES = 10


def schedule_gap_repairs(conn, limit: int, max_attempts: int, run_id: str, chunk_minutes: int = 1440,
                         retry_failed_hours: int = 6, history_floors: Sequence[tuple[str, str, int]] = ()) -> int:
    """Queue re-fetches for open gaps in marts.data_quality_gaps, newest first; returns how many.

    ``history_floors``: (exchange, timeframe, oldest open time it serves, ms) of exchanges with a capped
    history (exchange_facts.history_floors). Every chunk of an open gap that ends at or before it is
    recorded completed / beyond_exchange_history at once, however many (no request could fill it), so
    the gap mart reports it at its next build instead of the queue working through it run after run.

    A gap longer than ``chunk_minutes`` is queued as chunks on a fixed UTC grid (the newest first), so
    a market missing two years of history costs each hourly run at most ``limit`` chunks, never the
    whole gap in one task: history fills chunk by chunk, run after run. Per exchange at most ``limit``
    chunks are pending at a time. A chunk is not queued again while one overlapping it is pending or
    running, once confirmed empty at the source or beyond the exchange's history, or (after failing
    with errors ``max_attempts`` times) until ``retry_failed_hours`` have passed; such chunks do not
    take the slots of others. A trailing gap ending within TRAILING_GRACE_MINUTES of now is not queued
    (a longer one, e.g. after downtime, is).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('marts.data_quality_gaps') IS NOT NULL")
        if not cur.fetchone()[0]:
            log.info("marts.data_quality_gaps does not exist yet (dbt has not run); nothing to schedule")
            return 0
        if history_floors:
            _record_beyond_history(cur, history_floors, max_attempts, run_id, chunk_minutes)
        cur.execute(
            """
            WITH open_gaps AS (
                SELECT exchange, symbol, timeframe, gap_start, gap_end
                FROM marts.data_quality_gaps
                WHERE status = 'open'
                  AND NOT (gap_kind = 'trailing' AND gap_end > now() - make_interval(mins => %(grace)s))
            ),
            candidates AS (
                -- per gap the grid cells it touches, newest first, skipping cells that must not be queued
                -- (so cells confirmed empty near a gap's end never hide the older ones), at most `limit`
                SELECT g.exchange, g.symbol, g.timeframe, cell.window_start, cell.window_end,
                       row_number() OVER (PARTITION BY g.exchange
                                          ORDER BY cell.window_end DESC, g.symbol) AS rank
                FROM open_gaps AS g
                CROSS JOIN LATERAL (
                    SELECT greatest(g.gap_start, to_timestamp(n * %(chunk)s * 60)) AS window_start,
                           least(g.gap_end, to_timestamp((n + 1) * %(chunk)s * 60)) AS window_end
                    FROM generate_series(
                        floor((extract(epoch FROM g.gap_end) - 0.001) / (%(chunk)s * 60))::bigint,
                        floor(extract(epoch FROM g.gap_start) / (%(chunk)s * 60))::bigint, -1) AS n
                    WHERE NOT EXISTS (
                        SELECT 1 FROM ops.backfill_tasks AS t
                        WHERE t.exchange = g.exchange AND t.symbol = g.symbol AND t.timeframe = g.timeframe
                          AND t.window_start < least(g.gap_end, to_timestamp((n + 1) * %(chunk)s * 60))
                          AND t.window_end > greatest(g.gap_start, to_timestamp(n * %(chunk)s * 60))
                          AND (t.status IN ('pending', 'running')
                               OR (t.status = 'completed' AND t.outcome IN ('confirmed_empty',
                                                                            'beyond_exchange_history')
                                   AND t.window_start <= greatest(g.gap_start, to_timestamp(n * %(chunk)s * 60))
                                   AND t.window_end >= least(g.gap_end, to_timestamp((n + 1) * %(chunk)s * 60)))
                               OR (t.status = 'failed'
                                   AND t.updated_at > now() - make_interval(hours => %(retry_failed)s)))
                    )
                    ORDER BY n DESC
                    LIMIT %(limit)s
                ) AS cell
            ),
            room AS (
                -- queued chunks per exchange stay under `limit`, whatever earlier runs left pending
                SELECT c.exchange, %(limit)s - count(t.task_id) AS free
                FROM (SELECT DISTINCT exchange FROM candidates) AS c
                LEFT JOIN ops.backfill_tasks AS t
                    ON t.exchange = c.exchange AND t.reason = 'gap' AND t.status IN ('pending', 'running')
                GROUP BY c.exchange
            )
            INSERT INTO ops.backfill_tasks AS t (exchange, symbol, timeframe, window_start, window_end, reason,
                                                 priority, max_attempts, last_run_id)
            SELECT c.exchange, c.symbol, c.timeframe, c.window_start, c.window_end, 'gap',
                   (extract(epoch FROM c.window_end) * 1000)::bigint, %(max_attempts)s, %(run_id)s
            FROM candidates AS c
            JOIN room USING (exchange)
            WHERE c.rank <= room.free
            ON CONFLICT (exchange, symbol, timeframe, window_start, window_end) DO UPDATE
                SET status = 'pending', attempts = 0, outcome = NULL, last_error = NULL, reason = 'gap',
                    max_attempts = EXCLUDED.max_attempts, last_run_id = EXCLUDED.last_run_id, updated_at = now()
            RETURNING task_id
            """,
            {"limit": limit, "max_attempts": max_attempts, "run_id": run_id, "grace": TRAILING_GRACE_MINUTES,
             "chunk": chunk_minutes, "retry_failed": retry_failed_hours},
        )
        scheduled = cur.rowcount
    conn.commit()
    return scheduled


def _record_beyond_history(cur, floors: Sequence[tuple[str, str, int]], max_attempts: int, run_id: str,
                           chunk_minutes: int) -> None:
    cur.execute(
        """
        WITH floors AS (
            SELECT f.exchange, f.timeframe, to_timestamp(f.floor_ms / 1000.0) AS edge
            FROM unnest(%(exchanges)s::text[], %(timeframes)s::text[], %(floors)s::bigint[])
                AS f (exchange, timeframe, floor_ms)
        ),
        cells AS (
            -- the grid cells of each open gap that end at or before the exchange's history edge
            SELECT g.exchange, g.symbol, g.timeframe,
                   greatest(g.gap_start, to_timestamp(n * %(chunk)s * 60)) AS window_start,
                   least(g.gap_end, to_timestamp((n + 1) * %(chunk)s * 60)) AS window_end, f.edge
            FROM marts.data_quality_gaps AS g
            JOIN floors AS f USING (exchange, timeframe)
            CROSS JOIN LATERAL generate_series(
                floor(extract(epoch FROM g.gap_start) / (%(chunk)s * 60))::bigint,
                floor((extract(epoch FROM least(g.gap_end, f.edge)) - 0.001) / (%(chunk)s * 60))::bigint) AS n
            WHERE g.status = 'open' AND g.gap_start < f.edge
        )
        INSERT INTO ops.backfill_tasks AS t (exchange, symbol, timeframe, window_start, window_end, reason, priority,
                                             status, outcome, attempts, max_attempts, candles_found, last_run_id)
        SELECT c.exchange, c.symbol, c.timeframe, c.window_start, c.window_end, 'gap',
               (extract(epoch FROM c.window_end) * 1000)::bigint, 'completed', 'beyond_exchange_history', 0,
               %(max_attempts)s, 0, %(run_id)s
        FROM cells AS c
        WHERE c.window_end <= c.edge
          AND NOT EXISTS (
              SELECT 1 FROM ops.backfill_tasks AS p
              WHERE p.exchange = c.exchange AND p.symbol = c.symbol AND p.timeframe = c.timeframe
                AND p.status IN ('pending', 'running')
                AND p.window_start < c.window_end AND p.window_end > c.window_start)
        ON CONFLICT (exchange, symbol, timeframe, window_start, window_end) DO UPDATE
            SET status = 'completed', outcome = 'beyond_exchange_history', last_error = NULL,
                last_run_id = EXCLUDED.last_run_id, updated_at = now()
            WHERE t.status = 'failed'
        """,
        {"exchanges": [f[0] for f in floors], "timeframes": [f[1] for f in floors],
         "floors": [f[2] for f in floors], "chunk": chunk_minutes, "max_attempts": max_attempts, "run_id": run_id})
    if cur.rowcount:
        log.info("%d gap chunk(s) older than their exchange serves recorded beyond_exchange_history, not queued",
                 cur.rowcount)


def pending_repairs(conn, exchange: str) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM ops.backfill_tasks WHERE exchange = %s AND reason = 'gap' "
                    "AND status = 'pending'", (exchange,))
        count = int(cur.fetchone()[0])
    conn.commit()
    return count


def claim_tasks(conn, exchange: str, limit: int, run_id: str) -> list[BackfillTask]:
    """Mark up to ``limit`` pending tasks of one exchange running (most recent window first)."""
    with conn.cursor() as cur:
        cur.execute(
            f"""
            UPDATE ops.backfill_tasks SET status = 'running', attempts = attempts + 1, last_run_id = %(run_id)s,
                                          updated_at = now()
            WHERE task_id IN (
                SELECT task_id FROM ops.backfill_tasks
                WHERE exchange = %(exchange)s AND reason = 'gap'
                  AND (status = 'pending' OR (status = 'running' AND updated_at < now() - interval '{STALE_AFTER}'))
                ORDER BY priority DESC, task_id
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED
            )
            RETURNING task_id, exchange, symbol, timeframe, window_start, window_end, attempts, max_attempts
            """,
            {"exchange": exchange, "limit": limit, "run_id": run_id},
        )
        tasks = [BackfillTask(tid, ex, sym, tf, to_ms(ws), to_ms(we), att, mx)
                 for tid, ex, sym, tf, ws, we, att, mx in cur.fetchall()]
    conn.commit()
    return sorted(tasks, key=lambda t: -t.window_end_ms)


def finish_task(conn, task: BackfillTask, present: int, error: str | None = None,
                beyond_history: bool = False) -> str:
    """Record an attempt's outcome from the candles now present in the (formerly empty) window.

    candles landed                -> completed / repaired (what the exchange still lacks inside the
                                     window shows up as a new, smaller gap)
    the whole window is older than the exchange serves (``beyond_history``, its history depth)
                                  -> completed / beyond_exchange_history at once: asking again cannot help
    the exchange returned nothing -> pending again, or completed / confirmed_empty after max_attempts
    an error                      -> pending again, or failed after max_attempts
    Returns the new status (and outcome) in words.
    """
    exhausted = task.attempts >= task.max_attempts
    if error is not None:
        status, outcome = ("failed" if exhausted else "pending"), None
    elif present > 0:
        status, outcome = "completed", "repaired"
    elif beyond_history:
        status, outcome = "completed", "beyond_exchange_history"
    else:
        status, outcome = ("completed", "confirmed_empty") if exhausted else ("pending", None)
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE ops.backfill_tasks SET status = %s, outcome = %s, candles_found = %s, last_error = %s, "
            "updated_at = now() WHERE task_id = %s",
            (status, outcome, present, error, task.task_id),
        )
    conn.commit()
    return f"{status}/{outcome}" if outcome else status


def count_present(conn, exchange: str, symbol: str, timeframe: str, window: Window) -> int:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM staging.candle WHERE market_id = (SELECT m.market_id FROM staging.market AS m "
            "WHERE m.exchange = %s AND m.symbol = %s AND m.timeframe = %s) "
            "AND open_time >= to_timestamp(%s / 1000.0) AND open_time < to_timestamp(%s / 1000.0)",
            (exchange, symbol, timeframe, window.start_ms, window.end_ms),
        )
        return int(cur.fetchone()[0])
