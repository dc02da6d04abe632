"""What every figure gets: the bench's own services on free ports, sizes, progress logging.

The bench never touches the demo stack (.local/state) or the test services: it runs its own
PostgreSQL, MongoDB and exchange emulators under .local/bench and stops them at the end.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from marketflow.schema import apply_ddl
from scripts import stack

REPO = Path(__file__).resolve().parent.parent

# MARKETFLOW_BENCH_DIR: another directory for the bench's services and files, so two runs (e.g. of
# single figures while developing) never share, and wipe, one PostgreSQL data directory.
BENCH_DIR = Path(os.environ.get("MARKETFLOW_BENCH_DIR") or stack.LOCAL / "bench")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Sizes:
    """Workload sizes; QUICK=1 shrinks them so the whole run fits in 10 minutes."""

    load_rows: int  # figure 1: rows per upsert measurement
    backfill_days: int  # figure 2 / 3: days of 1m candles per market
    backfill_markets: int
    dbt_markets: int  # figure 4: markets in the incremental minute run
    big_rows: int  # figure 4 / 5: rows of 1m candles for the full rebuild and the queries
    freshness_minutes: int  # figure 6

    @classmethod
    def for_mode(cls, quick: bool) -> Sizes:
        if quick:
            return cls(load_rows=200_000, backfill_days=3, backfill_markets=10, dbt_markets=100,
                       big_rows=1_000_000, freshness_minutes=2)
        return cls(load_rows=1_000_000, backfill_days=30, backfill_markets=10, dbt_markets=100,
                   big_rows=10_000_000, freshness_minutes=10)


@dataclass
class BenchContext:
    quick: bool
    root: Path = BENCH_DIR
    sizes: Sizes = field(init=False)
    pg: stack.PostgresServer = field(init=False)
    mongo_uri: str = field(init=False)
    _stops: list = field(default_factory=list)
    # Results one figure hands to another (e.g. the backfill's run for the peer comparison).
    shared: dict = field(default_factory=dict)
    # Running services by name -> root PID, for the memory sampler.
    services: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sizes = Sizes.for_mode(self.quick)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def start(self) -> None:
        """PostgreSQL and MongoDB for the whole bench run (fresh data directories)."""
        import shutil

        # MARKETFLOW_BENCH_KEEP=1 (developing a figure): the PostgreSQL data directory, and the histories a
        # figure keeps in it (figure 12), survive to the next run instead of being built again.
        keep = os.environ.get("MARKETFLOW_BENCH_KEEP") not in (None, "", "0")
        for sub in ("mongo", "run") if keep else ("postgres", "mongo", "run"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pg = stack.PostgresServer(self.root / "postgres", stack.free_port())
        self.pg.start()
        self._stops.append(self.pg.stop)
        port = stack.free_port()
        mongo = stack.mongo_server(self.root, self.run_dir, port)
        mongo.start()
        self._stops.append(mongo.stop)
        self.mongo_proc = mongo
        self.services["mongodb"] = mongo.pid()
        self.mongo_uri = f"mongodb://127.0.0.1:{port}"

    def stop(self) -> None:
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()

    def new_database(self, name: str) -> str:
        """A fresh warehouse database with include/sql applied; returns its DSN."""
        with contextlib.suppress(Exception):
            self.pg.drop_database(name)
        self.pg.create_database(name)
        dsn = self.pg.dsn(name)
        conn = psycopg2.connect(dsn)
        try:
            apply_ddl(conn)
        finally:
            conn.close()
        return dsn

    @contextlib.contextmanager
    def emulator(self, *args: str, name: str = "emulator", data_dir: Path | None = None) -> Iterator[str]:
        """An exchange emulator on a free port with the given CLI flags; yields its base URL.

        By default it has no recordings, only synthetic markets: a recorded market wins over a
        synthetic one of the same symbol (the bundled binance ETH/USDT covers just 2022-08-14/15).
        ``data_dir`` serves recordings from there instead."""
        port = stack.free_port()
        if data_dir is None:
            data_dir = self.root / "no-recordings"
            data_dir.mkdir(parents=True, exist_ok=True)
        proc = stack.emulator_server(self.run_dir / name, port, data_dir, list(args))
        proc.run_dir.mkdir(parents=True, exist_ok=True)
        proc.start()
        self.services[name] = proc.pid()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            self.services.pop(name, None)
            proc.stop()

    def memory_roots(self) -> dict[str, int]:
        """Root PIDs of everything running for the bench now; the bench process itself last."""
        roots: dict[str, int] = {}
        pid_file = self.pg.data_dir / "postmaster.pid"
        if pid_file.exists():
            roots["postgres"] = int(pid_file.read_text().split()[0])
        roots.update({k: v for k, v in self.services.items() if v})
        roots["bench driver (pipeline workers)"] = os.getpid()
        return roots

    def memory_sampler(self, interval: float = 1.0) -> MemorySampler:
        return MemorySampler(self.memory_roots, interval)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each process tree of memory_roots(), the
        processes that have exited included; the difference of two calls is what a phase cost."""
        return {name: sum(_cpu_seconds(pid) for pid in pids) for name, pids in _trees(self.memory_roots()).items()}

    def service_env(self, dsn: str, emulator_url: str, config_file: Path, database: str) -> dict[str, str]:
        """The environment the pipeline code (and dbt) reads, pointed at the bench services."""
        mongo_uri = f"{self.mongo_uri}/{database}"
        env = stack.service_env(self.pg, mongo_uri, emulator_url, database)
        env["MARKETFLOW_CONFIG"] = str(config_file)
        return env

    def dbt(self, env: dict[str, str], *args: str) -> float:
        """Run dbt in its own virtualenv; returns wall seconds. Raises with dbt's output on failure."""
        import subprocess

        started = time.monotonic()
        res = subprocess.run([env["MARKETFLOW_DBT_EXECUTABLE"], *args, "--profiles-dir", "."],
                             cwd=env["MARKETFLOW_DBT_PROJECT_DIR"], env={**os.environ, **env},
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"dbt {' '.join(args)} failed (exit {res.returncode}):\n{res.stdout[-4000:]}"
                               f"\n{res.stderr[-2000:]}")
        return time.monotonic() - started


class MemorySampler:
    """Peak PSS (MiB) of a set of process trees, sampled every ``interval`` seconds in a thread.

    PSS counts shared pages once overall, so forked Postgres backends and Airflow workers add
    only what they own. ``roots`` is a callable returning the root PIDs to follow (each with all
    of its descendants), so processes started mid-run are counted too.
    """

    def __init__(self, roots, interval: float = 1.0) -> None:
        self.roots, self.interval = roots, interval
        self.peak_total = 0.0
        self.peak_by_part: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            parts = {name: sum(stack._pss_kib(p) for p in pids) / 1024 for name, pids in _trees(self.roots()).items()}
            total = sum(parts.values())
            self.samples += 1
            if total > self.peak_total:
                self.peak_total, self.peak_by_part = total, parts
            self._stop.wait(self.interval)


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None once the process is gone. Split after
    the last ')', since the command name in field 2 may hold spaces and parentheses."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _cpu_seconds(pid: int) -> float:
    """A process's own CPU time plus that of its exited (reaped) descendants.

    Summed over every live process of a tree, this counts each process once, dead or alive: an
    exited process's time moves into its parent's cumulative fields when the parent reaps it.
    """
    fields = _stat_fields(pid)
    # utime, stime, cutime, cstime: fields 14-17 of proc(5)
    return sum(int(v) for v in fields[11:15]) / _CLOCK_TICKS if fields else 0.0


def _trees(roots: dict[str, int]) -> dict[str, list[int]]:
    """Each named root PID with all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(entry.name)):
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # field 4: the parent's PID
    out: dict[str, list[int]] = {}
    claimed: set[int] = set()
    for name, root in roots.items():  # in order: a PID belongs to the first root whose tree holds it
        seen, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in claimed:
                continue
            claimed.add(pid)
            seen.append(pid)
            todo.extend(children.get(pid, []))
        out[name] = seen
    return out
