"""The int keys of staging.candle (storage stage 2, docs/storage.md) as the loader writes them.

* ``market_ids``: staging.market's ``market_id`` per (exchange, symbol, timeframe), added when new;
* ``run_keys``: ops.run's ``run_key`` per Airflow run id, added when new;
* ``payload_id_bytes``: a MongoDB payload id as stored (the same encoding as the SQL function
  ``staging.payload_id_bytes`` of include/sql/200_staging_candle.sql, which the view decodes).

Keys are cached per connection (a task's loads share one). Rows of those tables are never deleted,
so a committed key stays valid while the connection lives (a worker holding a connection across a
downgrade and upgrade of revision 0010 would hold stale ids: deploys restart the workers). A key is
cached only when it is known to be committed: new keys are added in a short transaction of their
own when the connection has none open (the loader's entry points), otherwise inside the caller's
transaction and then looked up again next time (a rollback would take them away).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from psycopg2.extensions import TRANSACTION_STATUS_IDLE
from psycopg2.extras import execute_values

Series = tuple[str, str, str]  # (exchange, symbol, timeframe)

_HEX_ID = re.compile(r"[0-9a-f]{32}")


def payload_id_bytes(payload_id: str) -> bytes:
    """16 bytes for a 32-digit lower-case hexadecimal id (marketflow.raw_store's ids); otherwise a NUL byte
    and the UTF-8 text (two NULs when that would be 16 bytes long: length 16 always means hex)."""
    if _HEX_ID.fullmatch(payload_id):
        return bytes.fromhex(payload_id)
    raw = payload_id.encode()
    return (b"\x00\x00" if len(raw) == 15 else b"\x00") + raw


def payload_id_text(stored: bytes) -> str:
    """The inverse of ``payload_id_bytes`` (``staging.payload_id_text`` in SQL)."""
    return stored.hex() if len(stored) == 16 else stored.lstrip(b"\x00").decode()


@dataclass
class _Keys:
    markets: dict[Series, int] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)


_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _keys(conn) -> _Keys:
    keys = _cache.get(conn)
    if keys is None:
        keys = _cache[conn] = _Keys()
    return keys


def market_ids(cur, series: Iterable[Series]) -> dict[Series, int]:
    """market_id of each series, adding the new ones (one round trip for all of them, none when cached)."""
    return _resolve(cur, _keys(cur.connection).markets, series, lambda s: s,
                    "INSERT INTO staging.market (exchange, symbol, timeframe) VALUES %s "
                    "ON CONFLICT ON CONSTRAINT market_series_key DO NOTHING",
                    "SELECT m.exchange, m.symbol, m.timeframe, m.market_id FROM staging.market AS m "
                    "JOIN (VALUES %s) AS w (exchange, symbol, timeframe) USING (exchange, symbol, timeframe)")


def run_keys(cur, run_ids: Iterable[str]) -> dict[str, int]:
    """run_key of each Airflow run id, adding the new ones (as ``market_ids``)."""
    return _resolve(cur, _keys(cur.connection).runs, run_ids, lambda r: (r,),
                    "INSERT INTO ops.run (run_id) VALUES %s ON CONFLICT ON CONSTRAINT run_run_id_key DO NOTHING",
                    "SELECT r.run_id, r.run_key FROM ops.run AS r JOIN (VALUES %s) AS w (run_id) USING (run_id)")


def _resolve(cur, cached: dict, names: Iterable, row: Callable[[Any], tuple], insert_sql: str,
             select_sql: str) -> dict:
    """The int key of each name (a row of ``row(name)`` in the key table), inserting the missing rows
    and selecting their keys (``select_sql`` returns the row's columns, then the key)."""
    conn = cur.connection
    wanted = set(names)
    missing = sorted(n for n in wanted if n not in cached)
    if not missing:
        return {n: cached[n] for n in wanted}
    own_transaction = conn.info.transaction_status == TRANSACTION_STATUS_IDLE
    rows = [row(n) for n in missing]
    # inserted in key order: two loaders adding the same new rows lock them in the same order
    execute_values(cur, insert_sql, rows)
    keys = {tuple(found[:-1]): found[-1] for found in _select(cur, select_sql, rows)}
    resolved = {n: keys[row(n)] for n in missing}
    if own_transaction:
        conn.commit()
        cached.update(resolved)
    return {n: cached.get(n) or resolved[n] for n in wanted}


def _select(cur, query: str, rows: list[tuple]) -> list[tuple]:
    return execute_values(cur, query, rows, page_size=max(len(rows), 1), fetch=True)
