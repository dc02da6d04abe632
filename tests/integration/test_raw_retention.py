"""Changing raw_retention_days changes the TTL of the raw collections' indexes in place.

MongoDB (mongod 7) refuses a ``createIndexes`` whose index name or key already exists with other
options (IndexOptionsConflict, code 85), which is what re-running ``prepare_storage`` with a new
retention used to send. The nx-27017 wire-protocol server of the test session does not enforce
that rule (it silently replaces the index) and acknowledges ``collMod`` without applying it, so the
rule is checked here by a pymongo command listener against the server's real indexes at the
moment each ``createIndexes`` starts, and the TTL is read back from the server after each change.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from marketflow.raw_store import INGESTION_LOG, PAYLOADS, RawStore

DAY = 86_400
_OPTIONS = ("expireAfterSeconds", "unique", "sparse", "partialFilterExpression")


class MongodIndexRule(monitoring.CommandListener):
    """Records each createIndexes that mongod would refuse: an index that exists under the same
    name or key with other options (names are not compared by key: nx-27017 names indexes itself)."""

    def __init__(self, observer: pymongo.MongoClient) -> None:
        self.observer = observer
        self.violations: list[str] = []
        self.commands: list[str] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self.lock:
            self.commands.append(event.command_name)
        if event.command_name != "createIndexes":
            return
        existing = list(self.observer[event.database_name][event.command["createIndexes"]].list_indexes())
        for spec in event.command["indexes"]:
            for index in existing:
                same = index["name"] == spec["name"] or dict(index["key"]) == dict(spec["key"])
                if same and _options(index) != _options(spec):
                    with self.lock:
                        self.violations.append(f"createIndexes {spec} while {dict(index)} exists")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _options(index: Any) -> dict[str, Any]:
    return {k: index[k] for k in _OPTIONS if k in index}


@pytest.fixture
def watched(mongo_uri: str, mongo_db) -> Iterator[tuple[RawStore, MongodIndexRule]]:
    observer = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    rule = MongodIndexRule(observer)
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10_000, event_listeners=[rule])
    yield RawStore(client[mongo_db.name]), rule
    client.close()
    observer.close()


def ttl_of(db, collection: str, field: str) -> list[int | None]:
    """expireAfterSeconds of every index on ``field`` (one expected)."""
    return [ix.get("expireAfterSeconds") for ix in db[collection].list_indexes() if list(ix["key"]) == [field]]


def test_changed_retention_changes_the_ttl_in_place(watched, mongo_db) -> None:
    raw, rule = watched
    raw.ensure_indexes(30)
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [30 * DAY]
    assert ttl_of(mongo_db, INGESTION_LOG, "started_at") == [30 * DAY]
    raw.payloads.insert_one({"_id": "kept", "body": "[]"})  # the index change keeps the data

    raw.ensure_indexes(7)
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [7 * DAY]
    assert ttl_of(mongo_db, INGESTION_LOG, "started_at") == [7 * DAY]
    assert rule.violations == []
    assert "collMod" in rule.commands  # the way mongod changes a TTL

    rule.commands.clear()
    raw.ensure_indexes(7)  # unchanged: nothing to modify
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [7 * DAY]
    assert "collMod" not in rule.commands and "dropIndexes" not in rule.commands
    raw.ensure_indexes(45)  # and back up
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [45 * DAY]
    assert rule.violations == []
    assert raw.payloads.count_documents({"_id": "kept"}) == 1


def test_concurrent_tasks_with_the_new_retention_all_succeed(watched, mongo_db) -> None:
    raw, rule = watched
    raw.ensure_indexes(30)
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def prepare(days: int) -> None:
        try:
            start.wait()
            raw.ensure_indexes(days)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(7,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [7 * DAY]
    assert ttl_of(mongo_db, INGESTION_LOG, "started_at") == [7 * DAY]
    assert rule.violations == []


def test_a_deploy_with_old_and_new_retention_at_once_ends_with_one_of_them(watched, mongo_db) -> None:
    """Tasks of the old and the new config overlapping during a deploy: no task fails, one index remains."""
    raw, _ = watched
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def prepare(days: int) -> None:
        try:
            start.wait()
            raw.ensure_indexes(days)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(days,)) for days in (30, 7, 30, 7, 30, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    (ttl,) = ttl_of(mongo_db, PAYLOADS, "last_fetched_at")
    assert ttl in (7 * DAY, 30 * DAY)
    raw.ensure_indexes(7)  # the next run of the new config settles it
    assert ttl_of(mongo_db, PAYLOADS, "last_fetched_at") == [7 * DAY]
