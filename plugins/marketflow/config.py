"""The markets file: which exchanges, markets and timeframes marketflow extracts.

Read once at DAG parse time (a local file, no network), so a bad file fails the DAG import with a
message naming the file, each wrong key and its fix. ``${VAR}`` and ``${VAR:default}`` are substituted
from the environment before anything else is checked.

Two layers. Pydantic models describe the file as written (``MarketsFile``: types, ranges, allowed keys,
what each key does); the JSON Schema for editors, include/config/markets.schema.json, is generated from
them (``python -m marketflow.config --json-schema``). Frozen dataclasses (``MarketflowConfig``,
``ExchangeConfig``, ``MarketConfig``) hold what the pipeline uses: every market with the timeframes and
history it inherits from its exchange and from ``defaults:`` filled in.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json
import os
import re
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

from marketflow import PROJECT_ROOT
from marketflow.timeframes import SUPPORTED_TIMEFRAMES

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "markets.yml"
SCHEMA_PATH = PROJECT_ROOT / "include" / "config" / "markets.schema.json"
DBT_POOL = "marketflow_dbt"
# The window each exchange counts its published limit over, where ccxt does not say (seconds).
# The window each exchange counts its limit over, where it is longer than a second (Binance: weight per
# minute; OKX: 2 s per endpoint; Bybit: 600 requests per 5 s per IP). It sizes the shared bucket's burst;
# too short a window leaves a bucket smaller than one request (check-config refuses that).
RATE_LIMIT_WINDOWS = {"binance": 60.0, "okx": 2.0, "bybit": 5.0}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_URL = re.compile(r"^https?://[^/\s]+")
_SECRET_KEYS = ("apiKey", "api_key", "secret", "password", "apikey")
# PyYAML's C parser when built with it: the markets file is read at every DAG parse.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- errors ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake: the key path (``exchanges.binance.markets[2].symbol``), what is wrong, how to fix it."""

    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}. Fix: {self.fix}"


class ConfigError(ValueError):
    """The markets file is wrong. The message has one line per mistake, each naming the file, the key
    and how to fix it; ``key``, ``problem`` and ``fix`` are the first mistake's, ``issues`` all of them."""

    def __init__(self, path: Path | str, key: str, problem: str, fix: str, more: Sequence[ConfigIssue] = ()) -> None:
        self.path, self.key, self.problem, self.fix = str(path), key, problem, fix
        self.issues: tuple[ConfigIssue, ...] = (ConfigIssue(key, problem, fix), *more)
        super().__init__("\n".join(f"{path}: {issue}" for issue in self.issues))

    @classmethod
    def of(cls, path: Path | str, issues: Sequence[ConfigIssue]) -> ConfigError:
        first, *more = issues
        return cls(path, first.key, first.problem, first.fix, more)


def _mistake(problem: str, fix: str) -> PydanticCustomError:
    """A validation error that carries marketflow's own words (a validator raises it)."""
    return PydanticCustomError("config", "{problem}. Fix: {fix}", {"problem": problem, "fix": fix})


# Mistakes a check found: (location below the model, the value, the problem, the fix).
_Found = list[tuple[tuple[str | int, ...], Any, str, str]]


def _raise_at(title: str, found: _Found) -> None:
    """Report mistakes a model-level check found, each at its own key below the model (pydantic prefixes
    the model's own location), all at once."""
    if found:
        raise ValidationError.from_exception_data(title, [
            InitErrorDetails(type=_mistake(problem, fix), loc=loc, input=value) for loc, value, problem, fix in found])


# --- field types -------------------------------------------------------------------------------------


def _none_if_empty(value: Any) -> Any:
    # An unset ${VAR:} leaves an empty string: the same as leaving the key out.
    return None if value == "" else value


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:  # a string, or a date YAML read from an unquoted 2024-01-01
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _mistake(f"{value!r} is not an ISO-8601 timestamp", "write e.g. 2024-01-01T00:00:00Z") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def _timeframes(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_timeframes(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise _mistake("expected a non-empty list of timeframes", "e.g. 'timeframes: [1m]'")
    unsupported = [tf for tf in value if tf not in SUPPORTED_TIMEFRAMES]
    if unsupported:
        raise _mistake(f"unsupported timeframe {', '.join(map(repr, unsupported))}",
                       f"use one of {', '.join(SUPPORTED_TIMEFRAMES)}")
    if len(set(value)) != len(value):
        raise _mistake("a timeframe is listed twice", "list each timeframe once")
    return value


def _check_symbol(value: str) -> str:
    if not _SYMBOL.match(value):
        raise _mistake(f"malformed symbol {value!r}", "use ccxt's unified form BASE/QUOTE in upper case, e.g. BTC/USDT")
    return value


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise _mistake("exchange names must be lower-case letters, digits and '_'",
                       "rename the key, e.g. 'binance' or 'okx_eu' (set ccxt_id when it differs)")
    return value


def _check_queue(value: str) -> str:
    if not _QUEUE.match(value):
        raise _mistake(f"{value!r} is not a Celery queue name (letters, digits, '_', '.', '-'; no commas or spaces)",
                       "use e.g. exchange_binance, or leave 'queue' out for exchange_<name>")
    return value


def _check_url(value: str) -> str:
    if not _URL.match(value):
        raise _mistake(f"{value!r} is not an http(s) URL",
                       "use e.g. http://127.0.0.1:8765, or leave it empty for the live exchange")
    return value


def _check_ccxt_id(value: str) -> str:
    if value not in ccxt_exchange_ids():
        close = difflib.get_close_matches(value, ccxt_exchange_ids(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise _mistake(f"unknown ccxt exchange id {value!r}{hint}",
                       "use an id from ccxt.exchanges, e.g. binance or okx")
    return value


_TIMEFRAME_SCHEMA = {"type": "string", "enum": list(SUPPORTED_TIMEFRAMES)}
_TIMESTAMP_SCHEMA = {"type": "string", "format": "date-time", "examples": ["2024-01-01T00:00:00Z"]}
_EMPTY_SCHEMA = {"type": "string", "maxLength": 0}

Timeframes = Annotated[
    tuple[str, ...], BeforeValidator(_timeframes), AfterValidator(_check_timeframes),
    WithJsonSchema({"anyOf": [_TIMEFRAME_SCHEMA, {"type": "array", "items": _TIMEFRAME_SCHEMA, "minItems": 1,
                                                  "uniqueItems": True}]}),
]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp), WithJsonSchema(_TIMESTAMP_SCHEMA)]
# Optional timestamps, URLs and names: empty (an unset ${VAR:}) means "not set".
OptionalTimestamp = Annotated[Timestamp | None, BeforeValidator(_none_if_empty),
                              WithJsonSchema({"anyOf": [_TIMESTAMP_SCHEMA, _EMPTY_SCHEMA, {"type": "null"}]})]
Symbol = Annotated[str, AfterValidator(_check_symbol),
                   WithJsonSchema({"type": "string", "pattern": _SYMBOL.pattern, "examples": ["BTC/USDT"]})]
ExchangeName = Annotated[str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": _NAME.pattern})]
CeleryQueue = Annotated[str, AfterValidator(_check_queue),
                        WithJsonSchema({"type": "string", "pattern": _QUEUE.pattern})]
Url = Annotated[str, AfterValidator(_check_url)]
OptionalUrl = Annotated[Url | None, BeforeValidator(_none_if_empty),
                        WithJsonSchema({"anyOf": [{"type": "string", "pattern": _URL.pattern}, _EMPTY_SCHEMA,
                                                  {"type": "null"}]})]
OptionalText = Annotated[str | None, BeforeValidator(_none_if_empty)]
CcxtId = Annotated[str, AfterValidator(_check_ccxt_id)]
PositiveInt = Annotated[int, Gt(0)]
NonNegativeInt = Annotated[int, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
Share = Annotated[float, Gt(0), Le(1)]


# --- the file's models -------------------------------------------------------------------------------


class _Section(BaseModel):
    """A mapping in the markets file: only its own keys; left empty (``key:`` with nothing) = defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # The problem and fix when the section is not a mapping at all.
    shape: ClassVar[tuple[str, str]] = ("expected a mapping", "indent its keys under it")

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data


class Timeouts(_Section):
    """Seconds. Every task gets an execution_timeout and every DAG a run timeout from here; the waits
    inside a task (rate limiter, database locks and statements) are shorter, so a stuck call ends as
    a classified error and a retry instead of a hung worker slot."""

    shape = ("expected a mapping of seconds", "e.g. 'timeouts: {minute_task: 150}'")

    minute_task: PositiveInt = Field(150, description="Seconds a minute DAG ingest task may run.")
    minute_run: PositiveInt = Field(300, description="Seconds a minute DAG run may take.")
    hourly_task: PositiveInt = Field(1800, description="Seconds an hourly reconcile or repair task may run.")
    hourly_run: PositiveInt = Field(3300, description="Seconds an hourly DAG run may take; under an hour, so a "
                                                      "stuck run cannot block the next one for long.")
    backfill_task: PositiveInt = Field(6 * 3600, description="Seconds a market_backfill task may run.")
    backfill_run: PositiveInt = Field(48 * 3600, description="Seconds a market_backfill run may take.")
    dbt_task: PositiveInt = Field(1200, description="Seconds a dbt model or test task may run.")
    maintenance_task: PositiveInt = Field(3600, description="Seconds a market_maintenance task may run.")
    db_lock: PositiveInt = Field(30, description="lock_timeout of the pipeline's warehouse sessions (s).")
    db_statement: PositiveInt = Field(900, description="statement_timeout of the pipeline's warehouse sessions (s).")

    @model_validator(mode="after")
    def _tasks_fit_their_runs(self) -> Timeouts:
        found: _Found = []
        for task, run in (("minute_task", "minute_run"), ("hourly_task", "hourly_run"),
                          ("backfill_task", "backfill_run")):
            if getattr(self, task) > getattr(self, run):
                found.append(((task,), getattr(self, task),
                              f"{task} ({getattr(self, task)} s) is longer than {run} ({getattr(self, run)} s)",
                              f"make {run} at least as long as {task}"))
        if self.db_lock >= self.minute_task:
            found.append((("db_lock",), self.db_lock, "a lock wait as long as the minute task would end it as a "
                          "task timeout instead of a database error", "keep db_lock well under minute_task"))
        _raise_at("Timeouts", found)
        return self


class HousekeepingConfig(_Section):
    """What the market_maintenance DAG prunes, and after how many days (plugins/marketflow/housekeeping.py)."""

    shape = ("expected a mapping of retentions",
             "e.g. 'housekeeping: {ops_retention_days: 30, airflow_metadata_retention_days: 30}'")

    ops_retention_days: PositiveInt = Field(30, description=(
        "Days kept of ops.api_errors, ops.alerts, ops.rate_limit_metrics, ops.market_task_outcomes, completed "
        "repairs in ops.backfill_tasks and stale ops.market_lists."))
    rejects_body_retention_days: PositiveInt = Field(30, description=(
        "Days a reject keeps its whole body; then a body over 1 KB keeps its reason and first 200 characters."))
    rejects_retention_days: PositiveInt = Field(365, description="Days before the reject row itself goes.")
    airflow_metadata_retention_days: PositiveInt = Field(30, description=(
        "Days kept by `airflow db clean`: runs, task instances, XComs, audit log, jobs."))
    ticker_retention_days: PositiveInt = Field(30, description=(
        "Days of staging.ticker snapshots kept (each market's latest always stays)."))
    batch_size: Annotated[int, Ge(100), Le(1_000_000)] = Field(10_000, description=(
        "Rows per DELETE, each committed on its own; 10,000 keeps each well under a second."))

    @model_validator(mode="after")
    def _bodies_go_first(self) -> HousekeepingConfig:
        if self.rejects_body_retention_days > self.rejects_retention_days:
            _raise_at("HousekeepingConfig", [(
                ("rejects_body_retention_days",), self.rejects_body_retention_days,
                f"{self.rejects_body_retention_days} days is longer than rejects_retention_days "
                f"({self.rejects_retention_days}): the rows would go before their bodies",
                "keep the bodies for at most as long as the rows")])
        return self


class RetentionConfig(_Section):
    """How long the 1m layers keep their history (whole months, dropped by the market_maintenance DAG)."""

    shape = ("expected a mapping of months", "e.g. 'retention: {ohlcv_1m_months: 24}'")

    ohlcv_1m_months: PositiveInt | None = Field(None, description=(
        "Months of marts.ohlcv_1m and marts.indicators_1m kept: the current month and the N-1 before it; older "
        "monthly partitions are dropped whole. Empty = keep everything. The rollups (5m to 1w) and "
        "staging.candle keep everything."))


class Defaults(_Section):
    """Settings of the whole pipeline, and what every exchange and market inherits unless it says otherwise."""

    shape = ("expected a mapping", "e.g. 'defaults: {timeframes: [1m], history_start: \"2024-01-01T00:00:00Z\"}'")

    timeframes: Timeframes = Field(("1m",), description="Candle timeframes every market extracts.")
    history_start: Timestamp = Field(datetime(2024, 1, 1, tzinfo=UTC),
                                     description="Where history (backfills, gap repairs) starts, UTC.")
    raw_retention_days: PositiveInt = Field(30, description="Days MongoDB keeps a raw payload (a TTL index).")
    overlap_minutes: NonNegativeInt = Field(2, description="Earlier minutes each minute run reads again.")
    minute_run_lead_seconds: Annotated[int, Ge(0), Le(45)] = Field(20, description=(
        "A minute run starts this long before its minute closes, so its task is started and connected at "
        "the close, then waits for it (0: runs start at the close)."))
    close_settle_seconds: Annotated[float, Ge(0), Le(10)] = Field(0.5, description=(
        "A live minute run fetches this long after the minute closes, so the exchange has closed the candle."))
    backfill_nice: Annotated[int, Ge(0), Le(19)] = Field(10, description=(
        "CPU niceness of market_backfill's ingest tasks (0-19): under CPU contention the minute DAG's tasks, "
        "at niceness 0, get ~10x their CPU share at 10, so a backfill does not delay the minute feed."))
    schedule_start: OptionalTimestamp = Field(None, description=(
        "First hour of the hourly DAG, which then catches up from there. Empty: the hour it is first deployed."))
    gap_repair_max_tasks: PositiveInt = Field(20, description="Repair chunks queued (and at most pending) per "
                                                              "exchange, most recent first.")
    gap_repair_max_attempts: PositiveInt = Field(3, description="An empty answer this many times = confirmed "
                                                                "empty at the source.")
    gap_repair_chunk_minutes: PositiveInt = Field(1440, description="A longer gap is repaired one chunk of the UTC "
                                                                    "grid at a time, newest first.")
    gap_repair_time_budget_minutes: PositiveInt = Field(15, description="An hourly run's repairs claim no new chunk "
                                                                        "after this.")
    gap_repair_retry_failed_hours: PositiveInt = Field(6, description="A chunk that failed with errors is queued "
                                                                      "again after this.")
    alert_after_failures: PositiveInt = Field(3, description="Transient failures of one market in a row before its "
                                                             "consecutive_failures alert.")
    suspend_after_failures: PositiveInt = Field(3, description="Permanent failures of one market in a row before it "
                                                               "is suspended.")
    dbt_pool_slots: PositiveInt = Field(2, description="dbt tasks at a time (pool marketflow_dbt).")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Task and run timeouts in seconds.")


class MarketFile(_Section):
    """One market of an exchange: ``- symbol: BTC/USDT`` (with settings) or just ``- BTC/USDT``."""

    shape = ("expected a symbol or a mapping with 'symbol'", "write '- symbol: BTC/USDT'")

    symbol: Symbol = Field(description="ccxt's unified symbol BASE/QUOTE.", examples=["BTC/USDT"])
    timeframes: Timeframes | None = Field(None, description="Default: the exchange's timeframes.")
    history_start: Timestamp | None = Field(None, description="Default: the exchange's history_start.")
    history_end: OptionalTimestamp = Field(None, description=(
        "Where this market's history ends, e.g. the end of a recording. Empty: up to now (a live market)."))


def _symbol_only(data: Any) -> Any:
    return {"symbol": data} if isinstance(data, str) else data


MarketEntry = Annotated[MarketFile, BeforeValidator(_symbol_only, json_schema_input_type=Symbol | MarketFile)]


class FactsOverrides(_Section):
    """What marketflow assumes about an exchange's candle endpoint where ccxt does not say, or says
    wrong (plugins/marketflow/exchange_facts.py; `python -m marketflow.exchange_facts <id>` prints what
    it derives). Leave a key out to keep the derived value."""

    shape = ("expected a mapping of facts", "e.g. 'facts: {history_candles: 720}'")

    page_limit: PositiveInt | None = Field(None, description=(
        "Candles per fetchOHLCV call. Default: ccxt's features['spot']['fetchOHLCV']['limit']."))
    history_candles: NonNegativeInt | None = Field(None, description=(
        "How many of the newest candles of each timeframe the exchange serves at all (Kraken 720, Gate 10000); "
        "older windows are reported beyond_exchange_history instead of fetched. 0: no cap. Default: "
        "marketflow's documented table (exchange_facts.HISTORY_CANDLES), else no cap."))
    row_order: Literal["oldest_first", "newest_first"] | None = Field(None, description=(
        "The order of the rows in a candle answer. Default: the parser's documented order."))
    paging: Literal["until", "bounded", "forward"] | None = Field(None, description=(
        "How a page is bounded: until (ccxt maps params.until onto the exchange's end), bounded (ccxt bounds "
        "since + limit itself) or forward (since only; the exchange answers forward from it). Default: what a "
        "dry run of ccxt's fetch_ohlcv shows."))


class ExchangeFile(_Section):
    """One exchange: its markets, how ccxt reaches it and how hard it may be called."""

    shape = ("expected a mapping", "give the exchange a 'markets:' list")

    ccxt_id: CcxtId | None = Field(None, description="ccxt's exchange id, when the key differs (e.g. okx_eu: okx).")
    enabled: bool = Field(True, description="false: no DAG calls this exchange.")
    api_base_url: OptionalUrl = Field(None, description=(
        "Replaces the scheme and host of every ccxt API URL (a mirror, proxy or the emulator). Empty: the live "
        "exchange."))
    options: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        {}, description="ccxt options.", examples=[{"fetchMarkets": {"types": ["spot"]}}])
    pool_slots: PositiveInt = Field(2, description="Slots of the live pool exchange_<name>, and markets fetched at "
                                                   "a time inside a task.")
    hourly_pool_slots: PositiveInt = Field(1, description="Slots of exchange_<name>_hourly (reconcile, repairs).")
    backfill_pool_slots: PositiveInt = Field(2, description="Slots of exchange_<name>_backfill (market_backfill).")
    timeout_ms: PositiveInt = Field(10_000, description="ccxt's HTTP timeout in milliseconds.")
    rate_limit_share: Share = Field(0.9, description="Share of the exchange's published limit all workers together "
                                                     "may spend (ops.rate_limit_buckets).")
    live_rate_reserve: Share = Field(0.3, description="Share of the bucket only the minute (live) path may spend.")
    live_burst_seconds: NonNegativeFloat = Field(3.0, description=(
        "After each minute-path call, history calls (backfills, reconcile, repairs) wait this long before taking "
        "from the shared bucket, so the exchange serves the minute feed first after a close; 0: no wait."))
    rate_limit_window_seconds: PositiveFloat | None = Field(None, description=(
        "The window the exchange counts its limit over. Default: binance 60, okx 2, else 1."))
    rate_limit_jitter_seconds: NonNegativeFloat = Field(0.25, description=(
        "How far apart in time calls may reach the exchange from when the shared bucket granted them "
        "(threads, connection set-up, network); the bucket leaves this much of the window's refill unspent."))
    credentials_conn_id: OptionalText = Field(None, description=(
        "Airflow connection with the API key and secret; keys never go in this file."))
    queue: CeleryQueue | None = Field(None, description=(
        "The Celery queue of the tasks that call this exchange (CeleryExecutor; the LocalExecutor ignores it), so "
        "workers can be placed where their egress IP's limit applies: `airflow celery worker --queues "
        "default,exchange_<name>`. Default: exchange_<name>. dbt and housekeeping tasks stay on the default queue."))
    rate_limit_per_minute: PositiveFloat | None = Field(None, description=(
        "The exchange's limit in ccxt cost units per minute. Default: 60000 / ccxt's rateLimit."))
    timeframes: Timeframes | None = Field(None, description="Default: defaults.timeframes.")
    history_start: Timestamp | None = Field(None, description="Default: defaults.history_start.")
    facts: FactsOverrides = Field(default_factory=FactsOverrides, description=(
        "Overrides of what marketflow derives from ccxt about the exchange's candle endpoint."))
    markets: Annotated[list[MarketEntry], Field(min_length=1)] = Field(
        description="The markets to extract, each once.",
        examples=[["BTC/USDT", {"symbol": "ETH/USDT", "history_start": "2022-08-14T00:00:00Z"}]])

    @model_validator(mode="after")
    def _each_market_once(self) -> ExchangeFile:
        seen: dict[str, int] = {}
        found: _Found = []
        for i, market in enumerate(self.markets):
            if market.symbol in seen:
                found.append((("markets", i, "symbol"), market.symbol,
                              f"duplicate market {market.symbol} (also at markets[{seen[market.symbol]}])",
                              "list each market once per exchange"))
            seen.setdefault(market.symbol, i)
        _raise_at("ExchangeFile", found)
        return self


class MarketsFile(_Section):
    """marketflow's markets file (include/config/markets.yml): which exchanges, markets and timeframes to
    extract. ${VAR} and ${VAR:default} anywhere are taken from the environment when the file is read."""

    model_config = ConfigDict(title="marketflow markets file")
    shape = ("expected a mapping with an 'exchanges' key", "start the file with 'exchanges:'")

    defaults: Defaults = Field(default_factory=Defaults, description="Settings every exchange and market inherits.")
    exchanges: Annotated[dict[ExchangeName, ExchangeFile], Field(min_length=1)] = Field(description=(
        "Exchanges by name: a ccxt id (binance, okx, ...) or any name with ccxt_id set."),
        examples=[{"binance": {"markets": [{"symbol": "BTC/USDT"}]}}],
        json_schema_extra={"additionalProperties": False})  # names outside the key pattern are wrong
    housekeeping: HousekeepingConfig = Field(default_factory=HousekeepingConfig, description=(
        "What the market_maintenance DAG prunes, and after how many days."))
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description=(
        "How many months of 1m history the market_maintenance DAG keeps."))

    @model_validator(mode="wrap")
    @classmethod
    def _whole_file(cls, data: Any, handler: ModelWrapValidatorHandler[MarketsFile]) -> MarketsFile:
        """Checks that need an exchange's name (its key) or what a market inherits, reported together
        with every mistake pydantic finds."""
        found = _exchange_name_checks(data)
        try:
            model = handler(data)
        except ValidationError as exc:
            if not found:
                raise
            taken = {loc for loc, *_ in found}
            rest = [e for e in exc.errors() if e["loc"] not in taken]
            raise ValidationError.from_exception_data(cls.__name__, [
                *(InitErrorDetails(type=_mistake(problem, fix), loc=loc, input=value)
                  for loc, value, problem, fix in found),
                *(_reraisable(e) for e in rest)]) from None
        for name, ex in model.exchanges.items():
            start = ex.history_start or model.defaults.history_start
            for i, m in enumerate(ex.markets):
                if m.history_end is not None and m.history_end <= (m.history_start or start):
                    found.append((("exchanges", name, "markets", i, "history_end"), m.history_end,
                                  "history_end is not after history_start",
                                  "set history_end later than history_start, or remove it for a live market"))
        _raise_at(cls.__name__, found)
        return model


def _exchange_name_checks(data: Any) -> _Found:
    """API keys in the file, and an exchange key that is no ccxt id while ccxt_id is not set."""
    found: _Found = []
    exchanges = data.get("exchanges") if isinstance(data, dict) else None
    if not isinstance(exchanges, dict):
        return found
    for name, node in exchanges.items():
        if not isinstance(name, str) or not _NAME.match(name) or not isinstance(node, dict | None):
            continue  # the models report the name or the node
        node = node or {}
        options = node.get("options") if isinstance(node.get("options"), dict) else {}
        for where, keys in ((("exchanges", name), node), (("exchanges", name, "options"), options)):
            for secret in _SECRET_KEYS:
                if secret in keys:
                    found.append(((*where, secret), "***", "API credentials do not belong in the markets file",
                                  f"put them in an Airflow connection and set credentials_conn_id, or export "
                                  f"MARKETFLOW_{name.upper()}_API_KEY / _SECRET"))
        if "ccxt_id" not in node:
            try:
                _check_ccxt_id(name)
            except PydanticCustomError as exc:
                found.append((("exchanges", name), name, exc.context["problem"], exc.context["fix"]))
    return found


def _reraisable(error: Any) -> InitErrorDetails:
    """A reported error as it is raised again (with marketflow's own words kept)."""
    ctx = error.get("ctx")
    kind = _mistake(ctx["problem"], ctx["fix"]) if error["type"] == "config" else error["type"]
    details = InitErrorDetails(type=kind, loc=error["loc"], input=error["input"])
    if ctx and error["type"] != "config":
        details["ctx"] = ctx
    return details


# --- what the pipeline uses --------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketConfig:
    exchange: str
    symbol: str
    timeframes: tuple[str, ...]
    history_start: datetime
    history_end: datetime | None = None  # None = up to now (live market)

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]


@dataclass(frozen=True)
class ExchangeConfig:
    name: str
    ccxt_id: str
    enabled: bool
    markets: tuple[MarketConfig, ...]
    api_base_url: str | None = None  # replaces the scheme+host of every ccxt API url (mirror, emulator)
    options: dict[str, Any] = field(default_factory=dict)
    pool_slots: int = 2
    timeout_ms: int = 10_000
    rate_limit_share: float = 0.9  # of the exchange's limit, shared by all workers (ops.rate_limit_buckets)
    credentials_conn_id: str | None = None  # Airflow connection with API key/secret; never keys in this file
    # The exchange's limit in ccxt cost units per minute; default 60000 / ccxt's rateLimit, which is the
    # exchange's published limit (Binance: 1200 units = 6000 weight; klines cost 0.4 = weight 2).
    rate_limit_per_minute: float | None = None
    # Share of the bucket that only the minute (live) path may spend: history (the hourly reconcile,
    # gap repairs, backfills) waits once the bucket is this low, so it can never take the last tokens.
    live_rate_reserve: float = 0.3
    # After each live take, history takes wait this many seconds (ops.rate_limit_buckets.live_until): the
    # minute feed's calls after a close come one after another, so the exchange serves them first.
    live_burst_seconds: float = 3.0
    # The window the exchange counts its limit over (Binance: a clock minute of weight; OKX: 2 seconds
    # per endpoint). The shared bucket's burst is sized so that a full burst plus a window's refill
    # stays inside the limit: a sliding 2 s window allows no burst of 2 s of calls on top of the rate.
    rate_limit_window_seconds: float = 1.0
    # Calls reach the exchange up to this much earlier or later than the bucket granted them (thread
    # scheduling, connection set-up, network), so the exchange's window can hold this much more refill.
    rate_limit_jitter_seconds: float = 0.25
    hourly_pool_slots: int = 1  # the hourly reconcile and gap repairs of this exchange
    backfill_pool_slots: int = 2  # market_backfill tasks of this exchange
    # The Celery queue of every task that calls this exchange (minute ingest, hourly reconcile, gap
    # repairs, backfill): workers listening on it are the ones whose egress IP this exchange sees.
    celery_queue: str | None = None
    # The markets file's `facts:` overrides (only the keys it sets), see exchange_facts.exchange_facts.
    facts: dict[str, Any] = field(default_factory=dict)

    def bucket_shape(self, per_minute: float) -> tuple[float, float]:
        """(share, burst seconds) of the shared bucket for an exchange allowing ``per_minute`` cost units.

        A full bucket plus the refill of one window (widened by the jitter) must fit the exchange's
        window: capacity + rate x (window + jitter) <= limit x window. The burst is what
        ``rate_limit_share`` leaves of the window, at most 2 s of refill. Where it leaves less than
        one unit (OKX: 40 candle calls per sliding 2 s at 90 % leaves -0.25 of a unit), the bucket
        keeps one unit and the refill is slowed until it fits (OKX: 84 % of the limit): a full bucket
        at the first second after a close, with every fetcher firing at once, then stays inside the
        window, which at exactly 100 % of it cost a 429 (bench 6c).
        """
        limit = per_minute / 60.0
        window, jitter, share = self.rate_limit_window_seconds, self.rate_limit_jitter_seconds, self.rate_limit_share
        room = limit * window - share * limit * (window + jitter)  # units a full bucket may hold
        if room >= 1.0:
            return share, min(2.0, room / (share * limit))
        fitted = (limit * window - 1.0) / ((window + jitter) * limit)
        if fitted > 0:
            return fitted, 1.0 / (fitted * limit)  # a one-unit bucket: capacity = rate x burst = 1
        # The exchange allows less than one unit per window (Kraken: a page per 3 s against a 1 s window):
        # no bucket fits it; a one-unit bucket's debt keeps the rate, as ccxt's own throttler does.
        return share, window * (1 - share) / share

    @property
    def pool(self) -> str:
        """The live pool: only the minute DAG's ingest task runs in it, so history never takes its slot."""
        return f"exchange_{self.name}"

    @property
    def queue(self) -> str:
        """The Celery queue of the tasks that call this exchange (markets file `queue`, default exchange_<name>)."""
        return self.celery_queue or f"exchange_{self.name}"

    @property
    def hourly_pool(self) -> str:
        return f"exchange_{self.name}_hourly"

    @property
    def backfill_pool(self) -> str:
        return f"exchange_{self.name}_backfill"

    def pools(self) -> dict[str, tuple[int, str]]:
        """Every Airflow pool this exchange needs: name -> (slots, what runs in it)."""
        return {
            self.pool: (self.pool_slots, f"{self.name}: the minute DAG's live ingest only"),
            self.hourly_pool: (self.hourly_pool_slots, f"{self.name}: hourly reconcile and gap repairs"),
            self.backfill_pool: (self.backfill_pool_slots, f"{self.name}: market_backfill"),
        }


@dataclass(frozen=True)
class MarketflowConfig:
    source: Path
    exchanges: tuple[ExchangeConfig, ...]
    raw_retention_days: int = 30
    overlap_minutes: int = 2
    minute_run_lead_seconds: int = 20  # the minute run starts this long before its minute closes
    close_settle_seconds: float = 0.5  # a live minute run fetches this long after the close
    backfill_nice: int = 10  # CPU niceness of market_backfill's ingest tasks (the minute DAG stays at 0)
    # None: the hourly DAG starts at the hour it is first deployed (FirstRunAtDeployTimetable) and
    # never catches up on older hours; history comes from market_backfill.
    schedule_start: datetime | None = None
    gap_repair_max_tasks: int = 20  # chunks queued (and at most pending) per exchange, most recent first
    gap_repair_max_attempts: int = 3  # an empty answer this many times = confirmed empty at the source
    gap_repair_chunk_minutes: int = 1440  # a gap longer than this is repaired one chunk at a time
    gap_repair_time_budget_minutes: int = 15  # an hourly run's repairs claim no new chunk after this
    gap_repair_retry_failed_hours: int = 6  # a chunk that failed with errors is queued again after this
    alert_after_failures: int = 3  # consecutive failed extracts of one market before an alert
    suspend_after_failures: int = 3  # permanent failures in a row that suspend a market
    dbt_pool_slots: int = 2  # dbt tasks at a time (pool marketflow_dbt), so they never fill the executor
    timeouts: Timeouts = field(default_factory=Timeouts)
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    # What the exchanges cannot give (a capped history, no batch tickers, no quote volume...): one line
    # each naming the file and key (check_exchange_capabilities); `marketflow check-config` prints them.
    warnings: tuple[str, ...] = ()

    @property
    def enabled_exchanges(self) -> tuple[ExchangeConfig, ...]:
        return tuple(e for e in self.exchanges if e.enabled)

    def pools(self) -> dict[str, tuple[int, str]]:
        """Every Airflow pool the DAGs use: name -> (slots, what runs in it)."""
        pools = {DBT_POOL: (self.dbt_pool_slots, "marketflow: dbt model and test tasks")}
        for ex in self.exchanges:
            pools.update(ex.pools())
        return pools

    def required_parallelism(self) -> int:
        """Executor slots for every pool at once, plus the second minute run's live tasks. With fewer,
        long history tasks can hold every slot and a live task waits for one: no priority frees a slot."""
        live_runs = 2  # market_candles_1m's max_active_runs
        return sum(slots for slots, _ in self.pools().values()) + (live_runs - 1) * len(self.enabled_exchanges)

    def exchange(self, name: str) -> ExchangeConfig:
        for ex in self.exchanges:
            if ex.name == name:
                return ex
        raise KeyError(f"exchange {name!r} is not in {self.source}")

    def market(self, exchange: str, symbol: str) -> MarketConfig:
        for m in self.exchange(exchange).markets:
            if m.symbol == symbol:
                return m
        raise KeyError(f"market {exchange}:{symbol} is not in {self.source}")

    def markets(self, timeframe: str | None = None) -> list[MarketConfig]:
        """Markets of enabled exchanges, optionally only those that extract ``timeframe``."""
        return [m for ex in self.enabled_exchanges for m in ex.markets
                if timeframe is None or timeframe in m.timeframes]


def _resolve(file: MarketsFile, path: Path) -> MarketflowConfig:
    """The checked file as the pipeline uses it: inherited timeframes and history filled in."""
    d = file.defaults
    exchanges = []
    for name, ex in file.exchanges.items():
        ccxt_id = ex.ccxt_id if ex.ccxt_id is not None else name
        timeframes = ex.timeframes if ex.timeframes is not None else d.timeframes
        start = ex.history_start if ex.history_start is not None else d.history_start
        markets = tuple(MarketConfig(name, m.symbol, m.timeframes if m.timeframes is not None else timeframes,
                                     m.history_start if m.history_start is not None else start, m.history_end)
                        for m in ex.markets)
        window = ex.rate_limit_window_seconds
        exchanges.append(ExchangeConfig(
            name=name, ccxt_id=ccxt_id, enabled=ex.enabled, markets=markets, api_base_url=ex.api_base_url,
            options=dict(ex.options), pool_slots=ex.pool_slots, timeout_ms=ex.timeout_ms,
            rate_limit_share=ex.rate_limit_share, credentials_conn_id=ex.credentials_conn_id,
            rate_limit_per_minute=ex.rate_limit_per_minute, live_rate_reserve=ex.live_rate_reserve,
            live_burst_seconds=ex.live_burst_seconds,
            rate_limit_window_seconds=window if window is not None else RATE_LIMIT_WINDOWS.get(ccxt_id, 1.0),
            rate_limit_jitter_seconds=ex.rate_limit_jitter_seconds,
            hourly_pool_slots=ex.hourly_pool_slots, backfill_pool_slots=ex.backfill_pool_slots, celery_queue=ex.queue,
            facts={k: v for k, v in ex.facts.model_dump().items() if v is not None}))
    return MarketflowConfig(
        source=path, exchanges=tuple(exchanges), raw_retention_days=d.raw_retention_days,
        overlap_minutes=d.overlap_minutes, schedule_start=d.schedule_start,
        minute_run_lead_seconds=d.minute_run_lead_seconds, close_settle_seconds=d.close_settle_seconds,
        backfill_nice=d.backfill_nice,
        gap_repair_max_tasks=d.gap_repair_max_tasks, gap_repair_max_attempts=d.gap_repair_max_attempts,
        gap_repair_chunk_minutes=d.gap_repair_chunk_minutes,
        gap_repair_time_budget_minutes=d.gap_repair_time_budget_minutes,
        gap_repair_retry_failed_hours=d.gap_repair_retry_failed_hours,
        alert_after_failures=d.alert_after_failures, suspend_after_failures=d.suspend_after_failures,
        dbt_pool_slots=d.dbt_pool_slots, timeouts=d.timeouts, housekeeping=file.housekeeping,
        retention=file.retention)


# --- loading -----------------------------------------------------------------------------------------


def config_path() -> Path:
    return Path(os.environ.get("MARKETFLOW_CONFIG") or DEFAULT_CONFIG_PATH)


def load_config(path: Path | str | None = None, env: dict[str, str] | None = None, deep: bool = False
                ) -> MarketflowConfig:
    """Parse and check the markets file. ``deep`` also checks every timeframe against what the
    exchange's ccxt class offers; that imports ccxt (~2 s), so DAG parsing leaves it to the tasks
    and to ``python -m marketflow.cli check-config``."""
    path = Path(path) if path else config_path()
    env = dict(os.environ) if env is None else env
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(path, "<file>", "the markets file does not exist",
                          "create it (see include/config/markets.yml) or point MARKETFLOW_CONFIG at it") from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)  # a safe loader
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<file>", f"not valid YAML ({exc})", "correct the YAML syntax") from None
    missing: list[ConfigIssue] = []
    data = _substitute(data, env, "", missing)
    if missing:
        raise ConfigError.of(path, missing)
    try:
        file = MarketsFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.of(path, [_issue(e) for e in exc.errors(include_url=False)]) from None
    config = _resolve(file, path)
    # warnings never fail a load (nor DAG parsing); check-config prints them
    return dataclasses.replace(config, warnings=tuple(check_exchange_capabilities(config, fields=deep)))


def check_exchange_capabilities(config: MarketflowConfig, fields: bool = False) -> list[str]:
    """Refuse an enabled exchange whose ccxt class cannot fetch candles or a timeframe it does not offer (one
    ConfigError naming every one); return the warnings: what an exchange cannot give (a capped history,
    no batch tickers and, with ``fields``, no quote volume or trade count), each naming the key. Reads
    ccxt's capabilities from the committed snapshot (exchange_facts.capabilities), so DAG parsing does
    not import ccxt; ``fields`` asks the parser, which does."""
    from marketflow.exchange_facts import capability_issues

    issues = capability_issues(config.exchanges, fields=fields)
    fatal = [ConfigIssue(i.key, i.problem, i.fix) for i in issues if i.fatal]
    if fatal:
        raise ConfigError.of(config.source, fatal)
    return [f"{config.source}: {i}" for i in issues]


def _substitute(node: Any, env: dict[str, str], key: str, missing: list[ConfigIssue]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, env, f"{key}.{k}" if key else str(k), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, f"{key}[{i}]", missing) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(ConfigIssue(key, f"environment variable {name} is not set and has no default",
                                   f"export {name}=... or write ${{{name}:default}}"))
        return match.group(0)

    return _VAR.sub(repl, node)


@functools.cache
def ccxt_exchange_ids() -> frozenset[str]:
    """ccxt's exchange ids (``ccxt.exchanges``), read from its package directory: `import ccxt` loads
    every exchange (~1-2 s), too slow for DAG parsing, where this check runs. tests/unit/test_config.py
    checks the two agree."""
    spec = importlib.util.find_spec("ccxt")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("ccxt is not installed; pip install -r requirements.txt")
    return frozenset(p.stem for p in Path(spec.origin).parent.glob("*.py") if not p.stem.startswith("_"))


# --- pydantic's errors in marketflow's words ---------------------------------------------------------


def _key(loc: Iterable[str | int]) -> str:
    key, loc = "", list(loc)
    for i, part in enumerate(loc):
        if part == "[key]":  # pydantic's marker for a mapping's key: the key is already in the path
            continue
        index = isinstance(part, int) and loc[i + 1:i + 2] != ["[key]"]  # a list index, not a YAML key 1:
        key += f"[{part}]" if index else (f".{part}" if key else str(part))
    return key or "<root>"


def _unwrap(tp: Any) -> Any:
    """The type under Annotated[...] and Optional[...]."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in get_args(tp):
            rest = [a for a in get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _at(loc: Sequence[str | int]) -> tuple[Any, FieldInfo | None]:
    """The declared type at ``loc`` in the file's models, and the model field that declares it."""
    tp: Any = MarketsFile
    declared: FieldInfo | None = None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            declared = tp.model_fields.get(part) if isinstance(part, str) else None
            if declared is None:
                return None, None
            tp = declared.annotation
        elif get_origin(tp) is dict:
            if part != "[key]":
                tp = get_args(tp)[1]
        elif get_origin(tp) in (list, tuple):
            tp = get_args(tp)[0]
        else:
            return None, None
    return _unwrap(tp), declared


def _bounds(declared: FieldInfo | None) -> str:
    """The allowed range of a numeric field in words, e.g. 'greater than 0 and at most 1'."""
    if declared is None:
        return ""
    metadata = list(declared.metadata)
    for arg in get_args(declared.annotation):  # constraints inside Optional[Annotated[...]]
        if get_origin(arg) is Annotated:
            metadata += get_args(arg)[1:]
    limits = {}
    for m in metadata:
        for attr, words in (("gt", "greater than"), ("ge", "at least"), ("lt", "less than"), ("le", "at most")):
            if isinstance(m, Gt | Ge | Lt | Le) and hasattr(m, attr):
                limits[attr] = (words, getattr(m, attr))
    if "ge" in limits and "le" in limits:
        return f"from {limits['ge'][1]} to {limits['le'][1]}"
    return " and ".join(f"{words} {limit}" for words, limit in limits.values())


def _explained(declared: FieldInfo | None, fix: str) -> str:
    """A fix with the field's default and what the key does, from its declaration."""
    value = None if declared is None else declared.default
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        fix += f" (default {value})"
    if declared is not None and declared.description:
        fix += f". The key sets: {declared.description[0].lower()}{declared.description[1:]}".rstrip(".")
    return fix


def _example(name: str, declared: FieldInfo | None, otherwise: str) -> str:
    """'e.g. key: value' from the field's examples (YAML flow style, which JSON is)."""
    if declared is None or not declared.examples:
        return otherwise
    flow = json.dumps(declared.examples[0]).replace('"', "")
    return f"e.g. '{name}: {flow}'"


def _issue(error: Any) -> ConfigIssue:
    """One pydantic error in marketflow's words: the key path, what is wrong, how to fix it."""
    loc, kind, value, ctx = error["loc"], error["type"], error["input"], error.get("ctx") or {}
    key = _key(loc)
    if kind == "config":
        return ConfigIssue(key, ctx["problem"], ctx["fix"])
    name = next((part for part in reversed(loc) if isinstance(part, str) and part != "[key]"), "")
    if kind == "extra_forbidden":
        parent, _ = _at(loc[:-1])
        allowed = sorted(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        fix = (f"did you mean '{close[0]}'? Rename it, or remove it" if close
               else f"remove it or use one of: {', '.join(allowed)}")
        return ConfigIssue(key, "unknown key", fix)
    tp, declared = _at(loc)
    if kind in ("missing", "too_short"):
        what = "add at least one" if kind == "too_short" else "add it"
        return ConfigIssue(key, f"no {name} configured", f"{what}, {_example(name, declared, f'as {name}: ...')}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if isinstance(tp, type) and issubclass(tp, _Section):
            return ConfigIssue(key, *tp.shape)
        return ConfigIssue(key, "expected a mapping", _example(name, declared, "indent its keys under it"))
    number = "a whole number" if tp is int else "a number"
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        problem = f"{value!r} is not an integer" if tp is int else f"{value!r} is not a number"
        return ConfigIssue(key, problem, _explained(declared, f"write {number} {_bounds(declared)}".rstrip()))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return ConfigIssue(key, f"{value} is out of range", _explained(declared, f"use {number} {_bounds(declared)}"))
    if kind in ("bool_parsing", "bool_type"):
        return ConfigIssue(key, f"{value!r} is not a boolean", "write true or false")
    if kind == "string_type":
        return ConfigIssue(key, f"expected text, got {type(value).__name__} {value!r}", "write it as text (in quotes)")
    if kind in ("list_type", "tuple_type"):
        return ConfigIssue(key, f"expected a list, got {type(value).__name__} {value!r}",
                           _example(name, declared, f"write e.g. '{name}: [...]'"))
    # Any other pydantic error: its own words, and where every key is described.
    return ConfigIssue(key, error["msg"], f"see {SCHEMA_PATH.relative_to(PROJECT_ROOT)} for what {name or 'it'} takes")


# --- JSON Schema for editors -------------------------------------------------------------------------

_ENV_REFERENCE = {
    "type": "string",
    "pattern": _VAR.pattern,
    "description": "${VAR} or ${VAR:default}: taken from the environment when the file is read.",
}
_SCALARS = ("integer", "number", "boolean")
_STRING_RULES = ("enum", "pattern", "format", "maxLength")
_ANNOTATIONS = ("title", "description", "default", "examples")


def _needs_env(node: dict[str, Any]) -> bool:
    return node.get("type") in _SCALARS or (node.get("type") == "string" and any(r in node for r in _STRING_RULES))


def _env_aware(node: Any, alternative: bool = False) -> Any:
    """Let every scalar with a type or a rule also be a ${VAR} reference, as the loader allows: the schema
    describes the file an editor shows, before substitution."""
    if isinstance(node, list):
        return [_env_aware(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:  # one reference among the alternatives, not one inside each
        alternatives = [_env_aware(a, alternative=True) for a in node["anyOf"]]
        if any(_needs_env(a) for a in node["anyOf"]):
            alternatives.append({"$ref": "#/$defs/EnvReference"})
        return {**node, "anyOf": alternatives}
    if _needs_env(node) and not alternative:
        outer = {k: node[k] for k in _ANNOTATIONS if k in node}
        return {**outer, "anyOf": [{k: v for k, v in node.items() if k not in _ANNOTATIONS},
                                   {"$ref": "#/$defs/EnvReference"}]}
    return {k: (v if k in ("default", "examples") else _env_aware(v)) for k, v in node.items()}


def json_schema() -> dict[str, Any]:
    """The markets file's JSON Schema (draft 2020-12), generated from the models; committed as
    include/config/markets.schema.json for editors (``# yaml-language-server: $schema=...``)."""
    schema = _env_aware(MarketsFile.model_json_schema(mode="validation"))
    schema["$defs"]["EnvReference"] = _ENV_REFERENCE
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _main(argv: Sequence[str]) -> int:
    if list(argv) != ["--json-schema"]:
        print("usage: python -m marketflow.config --json-schema > include/config/markets.schema.json",
              file=sys.stderr)
        return 2
    print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
