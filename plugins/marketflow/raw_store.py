"""MongoDB raw layer: what the exchange said, when, and what each task attempt did.

``raw_market_payload`` holds one document per API response, body untouched. Its ``_id`` is
derived from the request and the content hash, so fetching the same answer twice (a retry, an
overlapping run) updates ``last_fetched_at`` instead of storing a copy, and staging lineage
(``raw_payload_id``) stays stable across re-runs. A changed answer is a new document.
``raw_ingestion_log`` holds one document per task attempt.

A batch ticker answer (one ``fetch_tickers`` call for every market of a task) is one document
whose ``symbol`` is the list of the markets it was asked for (a MongoDB query on one market's
symbol finds it) and whose ``markets`` holds each of them as ccxt loaded it, for replay.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

from marketflow.exchanges import HttpExchange
from marketflow.logs import get_logger
from marketflow.timeframes import Window, from_ms, utc_ms

log = get_logger(__name__)

PAYLOADS = "raw_market_payload"
INGESTION_LOG = "raw_ingestion_log"
# Headers worth keeping: rate-limit state and request ids; the rest is noise. By pattern, so every
# exchange's own names are kept: Binance X-MBX-USED-WEIGHT-1M, Bybit X-Bapi-Limit-Status, KuCoin
# gw-ratelimit-remaining, Gate X-Gate-RateLimit-*, Bitget x-mbx-used-remain-limit, the IETF RateLimit-*
# and X-RateLimit-*, request and trace ids.
_KEPT_HEADERS = re.compile(r"^(content-type|date|retry-after)$|limit|used-weight|order-count|request-?id|trace-?id",
                           re.IGNORECASE)


def kept_headers(headers: dict[str, str]) -> dict[str, str]:
    """The response headers raw keeps (``_KEPT_HEADERS``)."""
    return {k: v for k, v in headers.items() if _KEPT_HEADERS.search(k)}


@dataclass(frozen=True)
class PayloadContext:
    """Who asked for a response and why; stored beside the body."""

    exchange: str
    ccxt_id: str
    symbol: str
    timeframe: str | None
    kind: str  # "ohlcv" | "ticker"
    window: Window | None
    run_id: str
    try_number: int
    market: dict[str, Any]
    # A batch answer: every market the call asked for (market_info of each); ``symbol`` is then unused.
    markets: tuple[dict[str, Any], ...] = ()

    @property
    def stored_symbol(self) -> str | list[str]:
        return [m["symbol"] for m in self.markets] if self.markets else self.symbol


def content_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def payload_id(ctx: PayloadContext, response: HttpExchange) -> str:
    identity = json.dumps([ctx.exchange, ctx.stored_symbol, ctx.timeframe, ctx.kind, response.method, response.endpoint,
                           sorted(response.params.items()), response.status, content_hash(response.body)])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


# MongoDB's codes for "an index with this name or key already exists with other options" and "no such index".
_INDEX_CONFLICT = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict
_INDEX_NOT_FOUND = 27


def _index_on(collection: Collection, field: str) -> dict[str, Any] | None:
    """The single-field ascending index on ``field``, whatever its name."""
    return next((ix for ix in collection.list_indexes() if list(ix["key"].items()) == [(field, 1)]), None)


def ensure_ttl_index(collection: Collection, field: str, seconds: int, name: str = "retention_ttl") -> None:
    """A TTL index on ``field`` expiring documents ``seconds`` after it; an existing one gets the new TTL.

    MongoDB refuses ``createIndexes`` for a name or key that exists with other options
    (IndexOptionsConflict), so a changed ``raw_retention_days`` is applied with ``collMod``, which
    changes expireAfterSeconds in place, without a rebuild and without a moment with no index.
    Idempotent, and safe when several tasks run it at once: a create that loses a race to another
    task's create looks again and modifies, a modify whose index was just replaced looks again.
    A server that acknowledges ``collMod`` without applying it (the nx-27017 wire-protocol server of
    the tests answers ok and changes nothing) gets the index dropped and created anew instead.
    """
    where = f"{collection.full_name}.{field}"
    for _ in range(5):
        current = _index_on(collection, field)
        if current is None:
            try:
                collection.create_index(field, name=name, expireAfterSeconds=seconds)
            except OperationFailure as exc:
                if exc.code in _INDEX_CONFLICT:
                    continue  # another task created it meanwhile with other options: modify that one
                raise
            return
        old = current.get("expireAfterSeconds")
        if old == seconds:
            return
        try:
            reply = collection.database.command(
                "collMod", collection.name, index={"name": current["name"], "expireAfterSeconds": seconds})
        except OperationFailure as exc:
            if exc.code == _INDEX_NOT_FOUND:
                continue  # replaced by another task meanwhile: look again
            raise
        now = _index_on(collection, field)
        if "expireAfterSeconds_new" in reply or (now is not None and now.get("expireAfterSeconds") == seconds):
            log.info("raw retention of %s changed from %s s to %s s (collMod)", where, old, seconds)
            return
        log.warning("the MongoDB server acknowledged collMod on %s without changing its TTL; re-creating the "
                    "index with expireAfterSeconds=%s", where, seconds)
        try:
            collection.drop_index(current["name"])
        except OperationFailure as exc:
            if exc.code != _INDEX_NOT_FOUND:  # another task dropped it first: fine
                raise
    raise RuntimeError(f"could not set the TTL index on {where} to {seconds} s: other tasks kept changing it. "
                       "Fix: give every deployment the same raw_retention_days, then run prepare_storage again")


class RawStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.payloads = db[PAYLOADS]
        self.attempts = db[INGESTION_LOG]

    def ensure_indexes(self, retention_days: int) -> None:
        self.payloads.create_index([("exchange", ASCENDING), ("symbol", ASCENDING), ("window_start", ASCENDING)],
                                   name="market_window")
        self.attempts.create_index([("exchange", ASCENDING), ("symbol", ASCENDING), ("started_at", ASCENDING)],
                                   name="market_started")
        # Raw is a short-term system of record; staging and marts keep the typed data.
        ensure_ttl_index(self.payloads, "last_fetched_at", retention_days * 86_400)
        ensure_ttl_index(self.attempts, "started_at", retention_days * 86_400)

    def save_responses(self, ctx: PayloadContext, responses: Iterable[HttpExchange],
                       request: dict[str, Any] | None = None, error: str | None = None,
                       keep: dict[str, dict[str, Any]] | None = None) -> list[str]:
        """Store responses (one document each); returns their ids in order.

        ``keep``: gets each document this call inserted, as MongoDB now holds it, so a load in the
        same task reads its own writes without a round trip. Documents that were already stored
        (same request, same body) are not kept: the stored one, from the first fetch, is what
        counts, and the load reads it."""
        ops, ids, updates = [], [], []
        for response in responses:
            pid = payload_id(ctx, response)
            fetched_at = from_ms(response.received_at_ms)
            doc = {
                "exchange": ctx.exchange, "ccxt_id": ctx.ccxt_id, "symbol": ctx.stored_symbol,
                "timeframe": ctx.timeframe, "kind": ctx.kind, "market": ctx.market,
                **({"markets": list(ctx.markets)} if ctx.markets else {}),
                "endpoint": response.endpoint, "method": response.method, "url": response.url,
                "request_params": response.params, "request": request or {},
                "window_start": from_ms(ctx.window.start_ms) if ctx.window else None,
                "window_end": from_ms(ctx.window.end_ms) if ctx.window else None,
                "http_status": response.status,
                "headers": kept_headers(response.headers),
                "body": response.body, "content_hash": content_hash(response.body), "body_bytes": len(response.body),
                "fetched_at": fetched_at, "run_id": ctx.run_id, "try_number": ctx.try_number, "error": error,
                "superseded": response.superseded,
            }
            # last_fetched_ms orders the replay from raw (find_payload_ids): an integer, and $max so that a
            # late write of an older fetch (a slow retry) never moves it back. last_fetched_at feeds the TTL.
            update = {"$setOnInsert": doc, "$set": {"last_fetched_at": fetched_at, "last_run_id": ctx.run_id},
                      "$max": {"last_fetched_ms": response.received_at_ms}, "$inc": {"fetch_count": 1}}
            ops.append(UpdateOne({"_id": pid}, update, upsert=True))
            ids.append(pid)
            updates.append(update)
        if ops:
            self._write_payloads(ops, ids, updates, keep)
        return ids

    def _write_payloads(self, ops: list[UpdateOne], ids: list[str], updates: list[dict[str, Any]],
                        keep: dict[str, dict[str, Any]] | None) -> None:
        written = self.payloads.bulk_write(ops, ordered=True)
        if keep is not None:
            for index in written.upserted_ids:
                # what the upsert inserted: its three parts, the counter from 0
                update = updates[index]
                keep[ids[index]] = {"_id": ids[index], **update["$setOnInsert"], **update["$set"], **update["$max"],
                                    **update["$inc"]}

    def get_payloads(self, ids: list[str], batch: int = 50, known: dict[str, dict[str, Any]] | None = None
                     ) -> list[dict[str, Any]]:
        """Fetch documents by id in batches, returned in the order of ``ids``; a missing id is an error.

        ``known``: documents this task wrote itself (``save_responses(keep=...)``), not read again."""
        found: dict[str, dict[str, Any]] = {i: known[i] for i in ids if known and i in known}
        wanted = [i for i in dict.fromkeys(ids) if i not in found]
        for i in range(0, len(wanted), batch):
            for doc in self.payloads.find({"_id": {"$in": wanted[i:i + batch]}}):
                found[doc["_id"]] = doc
        missing = [i for i in ids if i not in found]
        if missing:
            raise LookupError(f"{len(missing)} raw payload(s) not found in {self.db.name}.{PAYLOADS}, e.g. "
                              f"{missing[0]}; they may have expired (raw_retention_days) — re-extract the window")
        return [found[i] for i in ids]

    def find_payload_ids(self, exchange: str, symbol: str, timeframe: str, window: Window) -> list[str]:
        """Ids of the successful candle responses stored for a window, in the order to replay them.

        By last fetch, not first: the loader lets later payloads win, and an answer the exchange
        gave again (A, then a correction B, then A again) is one document whose last fetch moved
        past B's. Ordered by first fetch, the replay ended on B while live loading had ended on A."""
        cursor = self.payloads.find(
            {"exchange": exchange, "symbol": symbol, "timeframe": timeframe, "kind": "ohlcv", "http_status": 200,
             "window_start": {"$lt": from_ms(window.end_ms)}, "window_end": {"$gt": from_ms(window.start_ms)}},
            {"_id": 1, "fetched_at": 1, "last_fetched_ms": 1},
        )
        # Documents stored before last_fetched_ms existed keep their first-fetch place.
        keys = {d["_id"]: (int(d.get("last_fetched_ms") or utc_ms(d["fetched_at"])), utc_ms(d["fetched_at"]))
                for d in cursor}
        return sorted(keys, key=lambda i: (*keys[i], i))

    def log_attempt(self, attempt_id: str, fields: dict[str, Any]) -> None:
        """Create or update the ingestion-log document of one task attempt."""
        self.attempts.update_one({"_id": attempt_id}, {"$set": {**fields, "updated_at": datetime.now(UTC)}},
                                 upsert=True)


class BufferedRawStore(RawStore):
    """A RawStore whose writes wait in memory until ``flush``: one ``bulk_write`` of every response
    and one of every ingestion-log document for many markets, instead of several round trips per
    market (the minute path's ~1,000 markets a minute). What a market's load reads must be flushed
    first; reads go to MongoDB as usual."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._ops: list[UpdateOne] = []
        self._ids: list[str] = []
        self._updates: list[dict[str, Any]] = []
        self._keeps: list[dict[str, dict[str, Any]] | None] = []
        self._log: dict[str, dict[str, Any]] = {}

    def _write_payloads(self, ops: list[UpdateOne], ids: list[str], updates: list[dict[str, Any]],
                        keep: dict[str, dict[str, Any]] | None) -> None:
        self._ops += ops
        self._ids += ids
        self._updates += updates
        self._keeps += [keep] * len(ops)

    def log_attempt(self, attempt_id: str, fields: dict[str, Any]) -> None:
        # the document's state after every update so far, as MongoDB's $set would leave it
        self._log.setdefault(attempt_id, {}).update({**fields, "updated_at": datetime.now(UTC)})

    def take(self, other: BufferedRawStore) -> None:
        """Move ``other``'s pending writes into this buffer (one flush for many markets)."""
        self._ops += other._ops
        self._ids += other._ids
        self._updates += other._updates
        self._keeps += other._keeps
        for attempt_id, fields in other._log.items():
            self._log.setdefault(attempt_id, {}).update(fields)
        other._ops, other._ids, other._updates, other._keeps, other._log = [], [], [], [], {}

    def flush(self) -> None:
        """Write what is pending: the responses (in order, so a later fetch's $max wins), then the log."""
        ops, ids, updates, keeps = self._ops, self._ids, self._updates, self._keeps
        log_docs, self._log = self._log, {}
        self._ops, self._ids, self._updates, self._keeps = [], [], [], []
        if ops:
            written = self.payloads.bulk_write(ops, ordered=True)
            for index in written.upserted_ids:
                keep = keeps[index]
                if keep is not None:
                    update = updates[index]
                    keep[ids[index]] = {"_id": ids[index], **update["$setOnInsert"], **update["$set"],
                                        **update["$max"], **update["$inc"]}
        if log_docs:
            self.attempts.bulk_write([UpdateOne({"_id": attempt_id}, {"$set": fields}, upsert=True)
                                      for attempt_id, fields in log_docs.items()], ordered=False)
