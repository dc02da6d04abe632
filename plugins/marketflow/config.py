"""The markets file: which exchanges, markets and timeframes marketflow extracts.

Read once at DAG parse time (a local file, no network), so a bad file fails the DAG import with
one message naming the file, the key and the fix. ``${VAR}`` and ``${VAR:default}`` are
substituted from the environment before anything else is checked.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from marketflow import PROJECT_ROOT
from marketflow.timeframes import SUPPORTED_TIMEFRAMES

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "markets.yml"
DBT_POOL = "marketflow_dbt"
# The window each exchange counts its published limit over, where ccxt does not say (seconds).
RATE_LIMIT_WINDOWS = {"binance": 60.0, "okx": 2.0}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([^}]*))?\}")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class ConfigError(ValueError):
    """The markets file is wrong; the message names the file, the key and how to fix it."""

    def __init__(self, path: Path | str, key: str, problem: str, fix: str) -> None:
        self.path, self.key, self.problem, self.fix = str(path), key, problem, fix
        super().__init__(f"{path}: {key}: {problem}. Fix: {fix}")


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
    # The window the exchange counts its limit over (Binance: a clock minute of weight; OKX: 2 seconds
    # per endpoint). The shared bucket's burst is sized so that a full burst plus a window's refill
    # stays inside the limit: a sliding 2 s window allows no burst of 2 s of calls on top of the rate.
    rate_limit_window_seconds: float = 1.0
    hourly_pool_slots: int = 1  # the hourly reconcile and gap repairs of this exchange
    backfill_pool_slots: int = 2  # market_backfill tasks of this exchange

    @property
    def burst_seconds(self) -> float:
        """Seconds of the bucket's refill it may hold: what ``rate_limit_share`` leaves of the exchange's
        window (capacity + window x rate <= window x limit), at most 2 s."""
        return min(2.0, self.rate_limit_window_seconds * (1 - self.rate_limit_share) / self.rate_limit_share)

    @property
    def pool(self) -> str:
        """The live pool: only the minute DAG's ingest task runs in it, so history never takes its slot."""
        return f"exchange_{self.name}"

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
class Timeouts:
    """Seconds. Every task gets an execution_timeout and every DAG a run timeout from here; the waits
    inside a task (rate limiter, database locks and statements) are shorter, so a stuck call ends as
    a classified error and a retry instead of a hung worker slot."""

    minute_task: int = 150
    minute_run: int = 300
    hourly_task: int = 1800
    hourly_run: int = 3300  # under an hour: a stuck hourly run cannot block the next one for long
    backfill_task: int = 6 * 3600
    backfill_run: int = 48 * 3600
    dbt_task: int = 1200
    maintenance_task: int = 3600
    db_lock: int = 30  # lock_timeout of the pipeline's warehouse sessions
    db_statement: int = 900  # statement_timeout of the pipeline's warehouse sessions


@dataclass(frozen=True)
class MarketflowConfig:
    source: Path
    exchanges: tuple[ExchangeConfig, ...]
    raw_retention_days: int = 30
    overlap_minutes: int = 2
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
    housekeeping: HousekeepingConfig = field(default_factory=lambda: HousekeepingConfig())  # defined below

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
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, "<file>", f"not valid YAML ({exc})", "correct the YAML syntax") from None
    data = _substitute(data, env, path, "")
    config = _parse(data, path)
    if deep:
        check_exchange_timeframes(config)
    return config


def check_exchange_timeframes(config: MarketflowConfig) -> None:
    for ex in config.exchanges:
        for i, m in enumerate(ex.markets):
            offered = _exchange_timeframes(ex.ccxt_id)
            for tf in m.timeframes:
                if tf not in offered:
                    raise ConfigError(config.source, f"exchanges.{ex.name}.markets[{i}].timeframes",
                                      f"timeframe {tf!r} is not offered by {ex.ccxt_id}",
                                      f"use one of {', '.join(t for t in SUPPORTED_TIMEFRAMES if t in offered)}")


def _substitute(node: Any, env: dict[str, str], path: Path, key: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, env, path, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, path, f"{key}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(path, key, f"environment variable {name} is not set and has no default",
                          f"export {name}=... or write ${{{name}:default}}")

    return _VAR.sub(repl, node)


def _parse(data: Any, path: Path) -> MarketflowConfig:
    if not isinstance(data, dict):
        raise ConfigError(path, "<root>", "expected a mapping with an 'exchanges' key",
                          "start the file with 'exchanges:'")
    _only_keys(data, {"defaults", "exchanges", "housekeeping"}, path, "<root>")
    defaults = data.get("defaults") or {}
    _only_keys(defaults, {"timeframes", "history_start", "raw_retention_days", "overlap_minutes",
                          "schedule_start", "gap_repair_max_tasks", "gap_repair_max_attempts",
                          "gap_repair_chunk_minutes", "gap_repair_time_budget_minutes",
                          "gap_repair_retry_failed_hours", "alert_after_failures", "suspend_after_failures",
                          "dbt_pool_slots",
                          "timeouts"}, path, "defaults")
    default_tfs = _timeframes(defaults.get("timeframes", ["1m"]), path, "defaults.timeframes")
    default_start = _timestamp(defaults.get("history_start", "2024-01-01T00:00:00Z"), path, "defaults.history_start")
    retention = _positive_int(defaults.get("raw_retention_days", 30), path, "defaults.raw_retention_days")
    overlap = _positive_int(defaults.get("overlap_minutes", 2), path, "defaults.overlap_minutes", allow_zero=True)
    # Unset or empty (e.g. an unset ${MARKETFLOW_SCHEDULE_START:}): start at the first deploy.
    schedule_start = (_timestamp(defaults["schedule_start"], path, "defaults.schedule_start")
                      if defaults.get("schedule_start") else None)

    exchanges_node = data.get("exchanges")
    if not isinstance(exchanges_node, dict) or not exchanges_node:
        raise ConfigError(path, "exchanges", "no exchanges configured",
                          "add at least one exchange, e.g. 'exchanges: {binance: {markets: [{symbol: BTC/USDT}]}}'")
    exchanges = [
        _exchange(name, node or {}, path, default_tfs, default_start) for name, node in exchanges_node.items()
    ]
    repair_tasks = _positive_int(defaults.get("gap_repair_max_tasks", 20), path, "defaults.gap_repair_max_tasks")
    repair_attempts = _positive_int(defaults.get("gap_repair_max_attempts", 3), path,
                                    "defaults.gap_repair_max_attempts")
    def number(key: str, default: int) -> int:
        return _positive_int(defaults.get(key, default), path, f"defaults.{key}")

    return MarketflowConfig(
        path, tuple(exchanges), retention, overlap, schedule_start, repair_tasks, repair_attempts,
        gap_repair_chunk_minutes=number("gap_repair_chunk_minutes", 1440),
        gap_repair_time_budget_minutes=number("gap_repair_time_budget_minutes", 15),
        gap_repair_retry_failed_hours=number("gap_repair_retry_failed_hours", 6),
        alert_after_failures=number("alert_after_failures", 3),
        suspend_after_failures=number("suspend_after_failures", 3),
        dbt_pool_slots=number("dbt_pool_slots", 2),
        timeouts=_timeouts(defaults.get("timeouts") or {}, path),
        housekeeping=_housekeeping(data.get("housekeeping"), path),
    )


def _timeouts(node: Any, path: Path) -> Timeouts:
    key = "defaults.timeouts"
    if not isinstance(node, dict):
        raise ConfigError(path, key, "expected a mapping of seconds", "e.g. 'timeouts: {minute_task: 150}'")
    names = {f.name for f in dataclasses.fields(Timeouts)}
    _only_keys(node, names, path, key)
    timeouts = Timeouts(**{k: _positive_int(v, path, f"{key}.{k}") for k, v in node.items()})
    for task, run in (("minute_task", "minute_run"), ("hourly_task", "hourly_run"), ("backfill_task", "backfill_run")):
        if getattr(timeouts, task) > getattr(timeouts, run):
            raise ConfigError(path, f"{key}.{task}", f"{task} ({getattr(timeouts, task)} s) is longer than "
                              f"{run} ({getattr(timeouts, run)} s)", f"make {run} at least as long as {task}")
    if timeouts.db_lock >= timeouts.minute_task:
        raise ConfigError(path, f"{key}.db_lock", "a lock wait as long as the minute task would end it as a "
                          "task timeout instead of a database error", "keep db_lock well under minute_task")
    return timeouts


def _exchange(name: Any, node: Any, path: Path, default_tfs: tuple[str, ...], default_start: datetime
              ) -> ExchangeConfig:
    key = f"exchanges.{name}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(path, key, "exchange names must be lower-case letters, digits and '_'",
                          "rename the key, e.g. 'binance' or 'okx_eu' (set ccxt_id when it differs)")
    if not isinstance(node, dict):
        raise ConfigError(path, key, "expected a mapping", "give the exchange a 'markets:' list")
    for secret_key in ("apiKey", "api_key", "secret", "password", "apikey"):
        if secret_key in node or secret_key in (node.get("options") or {}):
            raise ConfigError(path, f"{key}.{secret_key}", "API credentials do not belong in the markets file",
                              f"put them in an Airflow connection and set credentials_conn_id, or export "
                              f"MARKETFLOW_{name.upper()}_API_KEY / _SECRET")
    _only_keys(node, {"ccxt_id", "enabled", "api_base_url", "options", "pool_slots", "hourly_pool_slots",
                      "backfill_pool_slots", "timeout_ms", "rate_limit_share", "live_rate_reserve",
                      "rate_limit_window_seconds", "credentials_conn_id", "rate_limit_per_minute", "timeframes",
                      "history_start", "markets"}, path, key)
    ccxt_id = str(node.get("ccxt_id", name))
    _check_ccxt_id(ccxt_id, path, f"{key}.ccxt_id" if "ccxt_id" in node else key)
    enabled = _bool(node.get("enabled", True), path, f"{key}.enabled")
    tfs = _timeframes(node.get("timeframes", default_tfs), path, f"{key}.timeframes")
    start = _timestamp(node.get("history_start", default_start), path, f"{key}.history_start")
    base_url = node.get("api_base_url") or None
    if base_url is not None and not re.match(r"^https?://[^/\s]+", str(base_url)):
        raise ConfigError(path, f"{key}.api_base_url", f"{base_url!r} is not an http(s) URL",
                          "use e.g. http://127.0.0.1:8765, or leave it empty for the live exchange")
    options = node.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(path, f"{key}.options", "expected a mapping of ccxt options",
                          "e.g. 'options: {fetchMarkets: {types: [spot]}}'")

    markets_node = node.get("markets")
    if not isinstance(markets_node, list) or not markets_node:
        raise ConfigError(path, f"{key}.markets", "no markets listed", "add e.g. '- symbol: BTC/USDT'")
    markets: list[MarketConfig] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(markets_node):
        mkey = f"{key}.markets[{i}]"
        if isinstance(m, str):
            m = {"symbol": m}
        if not isinstance(m, dict) or "symbol" not in m:
            raise ConfigError(path, mkey, "expected a symbol or a mapping with 'symbol'", "write '- symbol: BTC/USDT'")
        _only_keys(m, {"symbol", "timeframes", "history_start", "history_end"}, path, mkey)
        symbol = str(m["symbol"])
        if not _SYMBOL.match(symbol):
            raise ConfigError(path, f"{mkey}.symbol", f"malformed symbol {symbol!r}",
                              "use ccxt's unified form BASE/QUOTE in upper case, e.g. BTC/USDT")
        if symbol in seen:
            raise ConfigError(path, f"{mkey}.symbol", f"duplicate market {symbol} (also at markets[{seen[symbol]}])",
                              "list each market once per exchange")
        seen[symbol] = i
        m_start = _timestamp(m.get("history_start", start), path, f"{mkey}.history_start")
        m_end = _timestamp(m["history_end"], path, f"{mkey}.history_end") if m.get("history_end") else None
        if m_end is not None and m_end <= m_start:
            raise ConfigError(path, f"{mkey}.history_end", "history_end is not after history_start",
                              "set history_end later than history_start, or remove it for a live market")
        m_tfs = _timeframes(m.get("timeframes", tfs), path, f"{mkey}.timeframes")
        markets.append(MarketConfig(name, symbol, m_tfs, m_start, m_end))

    return ExchangeConfig(
        name=name, ccxt_id=ccxt_id, enabled=enabled, markets=tuple(markets), api_base_url=base_url,
        options=options, pool_slots=_positive_int(node.get("pool_slots", 2), path, f"{key}.pool_slots"),
        timeout_ms=_positive_int(node.get("timeout_ms", 10_000), path, f"{key}.timeout_ms"),
        rate_limit_share=_share(node.get("rate_limit_share", 0.9), path, f"{key}.rate_limit_share"),
        live_rate_reserve=_share(node.get("live_rate_reserve", 0.3), path, f"{key}.live_rate_reserve"),
        rate_limit_window_seconds=_positive_float(
            node.get("rate_limit_window_seconds", RATE_LIMIT_WINDOWS.get(ccxt_id, 1.0)), path,
            f"{key}.rate_limit_window_seconds"),
        hourly_pool_slots=_positive_int(node.get("hourly_pool_slots", 1), path, f"{key}.hourly_pool_slots"),
        backfill_pool_slots=_positive_int(node.get("backfill_pool_slots", 2), path, f"{key}.backfill_pool_slots"),
        credentials_conn_id=node.get("credentials_conn_id") or None,
        rate_limit_per_minute=float(_positive_int(node["rate_limit_per_minute"], path, f"{key}.rate_limit_per_minute"))
        if node.get("rate_limit_per_minute") else None,
    )


def _only_keys(node: dict, allowed: set[str], path: Path, key: str) -> None:
    unknown = sorted(set(map(str, node)) - allowed)
    if unknown:
        raise ConfigError(path, f"{key}.{unknown[0]}" if key != "<root>" else unknown[0], "unknown key",
                          f"remove it or use one of: {', '.join(sorted(allowed))}")


@functools.cache
def ccxt_exchange_ids() -> frozenset[str]:
    """ccxt's exchange ids, read from its package directory: `import ccxt` loads every exchange
    (~2 s), too slow for DAG parsing, where this check runs."""
    spec = importlib.util.find_spec("ccxt")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("ccxt is not installed; pip install -r requirements.txt")
    return frozenset(p.stem for p in Path(spec.origin).parent.glob("*.py") if not p.stem.startswith("_"))


def _check_ccxt_id(ccxt_id: str, path: Path, key: str) -> None:
    if ccxt_id not in ccxt_exchange_ids():
        close = sorted(e for e in ccxt_exchange_ids() if e.startswith(ccxt_id[:3]))[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(path, key, f"unknown ccxt exchange id {ccxt_id!r}{hint}",
                          "use an id from ccxt.exchanges, e.g. binance or okx")


def _timeframes(value: Any, path: Path, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(path, key, "expected a non-empty list of timeframes", "e.g. 'timeframes: [1m]'")
    for tf in value:
        if tf not in SUPPORTED_TIMEFRAMES:
            raise ConfigError(path, key, f"unsupported timeframe {tf!r}",
                              f"use one of {', '.join(SUPPORTED_TIMEFRAMES)}")
    if len(set(value)) != len(value):
        raise ConfigError(path, key, "a timeframe is listed twice", "list each timeframe once")
    return tuple(value)


@functools.cache
def _exchange_timeframes(ccxt_id: str) -> frozenset[str]:
    import ccxt

    return frozenset(getattr(ccxt, ccxt_id)().timeframes or {})


def _timestamp(value: Any, path: Path, key: str) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(path, key, f"{value!r} is not an ISO-8601 timestamp",
                              "write e.g. 2024-01-01T00:00:00Z") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def _positive_int(value: Any, path: Path, key: str, allow_zero: bool = False) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(path, key, f"{value!r} is not an integer", "write a whole number") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(path, key, f"{number} is out of range", "use a positive number")
    return number


def _positive_float(value: Any, path: Path, key: str) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ConfigError(path, key, f"{value!r} is not a number", "write a number of seconds, e.g. 60") from None
    if not number > 0:
        raise ConfigError(path, key, f"{number} is out of range", "use a positive number of seconds")
    return number


def _share(value: Any, path: Path, key: str) -> float:
    try:
        share = float(str(value))
    except ValueError:
        raise ConfigError(path, key, f"{value!r} is not a number", "write a fraction such as 0.9") from None
    if not 0 < share <= 1:
        raise ConfigError(path, key, f"{share} is outside (0, 1]",
                          "use the fraction of the exchange's rate limit to spend, e.g. 0.9")
    return share


def _bool(value: Any, path: Path, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1", "on"}:
        return True
    if text in {"false", "no", "0", "off"}:
        return False
    raise ConfigError(path, key, f"{value!r} is not a boolean", "write true or false")


@dataclass(frozen=True)
class HousekeepingConfig:
    """What the market_maintenance DAG prunes, and after how many days (plugins/marketflow/housekeeping.py)."""

    ops_retention_days: int = 30  # ops.api_errors, ops.alerts, ops.rate_limit_metrics, done repairs, old market lists
    rejects_body_retention_days: int = 30  # then a reject keeps its reason and the body's first 200 characters
    rejects_retention_days: int = 365  # then the reject row itself goes
    airflow_metadata_retention_days: int = 30  # `airflow db clean`: runs, task instances, XComs, logs, jobs
    ticker_retention_days: int = 30  # staging.ticker snapshots (each market's latest always stays)
    batch_size: int = 10_000  # rows per DELETE, each committed on its own


def _housekeeping(node: Any, path: Path) -> HousekeepingConfig:
    key = "housekeeping"
    if node is None:
        return HousekeepingConfig()
    if not isinstance(node, dict):
        raise ConfigError(path, key, "expected a mapping of retentions",
                          "e.g. 'housekeeping: {ops_retention_days: 30, airflow_metadata_retention_days: 30}'")
    names = {f.name for f in dataclasses.fields(HousekeepingConfig)}
    _only_keys(node, names, path, key)
    config = HousekeepingConfig(**{k: _positive_int(v, path, f"{key}.{k}") for k, v in node.items()})
    if config.rejects_body_retention_days > config.rejects_retention_days:
        raise ConfigError(path, f"{key}.rejects_body_retention_days",
                          f"{config.rejects_body_retention_days} days is longer than rejects_retention_days "
                          f"({config.rejects_retention_days}): the rows would go before their bodies",
                          "keep the bodies for at most as long as the rows")
    if not 100 <= config.batch_size <= 1_000_000:
        raise ConfigError(path, f"{key}.batch_size", f"{config.batch_size} rows is out of range",
                          "use 100 to 1,000,000 rows per batch (10,000 keeps each DELETE well under a second)")
    return config
