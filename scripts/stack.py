"""Start and stop marketflow's local services: PostgreSQL, MongoDB, the exchange emulator, Airflow.

Used by the Makefile (``make demo`` / ``make down``) and by the test suite, which starts its own
throwaway instances on free ports. Every server runs in its own process session and is stopped
by the PID recorded when it was started, never by name.

    python scripts/stack.py up        # postgres + mongodb + emulator (+ airflow with --airflow)
    python scripts/stack.py down      # stop what `up` started, keep the data
    python scripts/stack.py env       # print the environment the services are reachable with
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from scripts import topology

REPO = Path(__file__).resolve().parent.parent
LOCAL = Path(os.environ.get("MARKETFLOW_LOCAL_DIR", REPO / ".local"))
VENV_BIN = LOCAL / "venv" / "bin"

DB_USER = "marketflow"
WAREHOUSE_DB = "marketflow"
AIRFLOW_DB = "airflow"
ADMIN_USER = "admin"


def stored_secret(path: Path, make: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """A random token kept in ``path`` (0600), created on first use and the same on every later call.

    The local stack's passwords are such tokens, never a word: Airflow's secret masker replaces every
    occurrence of a connection's password in the task logs, so a password like `marketflow` turned
    each `marketflow` in the logs (logger names, database names) into `***`. Kept with the stack's
    state, so a restarted stack reaches the data it already has.
    """
    with contextlib.suppress(FileNotFoundError):
        if token := path.read_text().strip():
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(make() + "\n")  # URL-safe by default: it goes into connection URIs as it is
    try:
        os.link(tmp, path)  # atomic and never replaces: two processes starting at once agree on one token
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie that still looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]; None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot): tells a pid apart from a later reuse of it."""
    fields = _stat(pid)
    return fields[19] if fields else None


def _alive(pid: int) -> bool:
    """Running, not a zombie: orphans' zombies can linger here (init does not always reap them)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def session_tree(leader: int) -> dict[int, str]:
    """Every live process of the session ``leader`` started, with its start time.

    The session's members (Airflow's task processes put themselves in process groups of their own,
    but stay in the session) and every descendant of them, also one that left the session (setsid).
    Never this process itself."""
    children: dict[int, list[int]] = {}
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid, fields = int(entry.name), _stat(int(entry.name))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        children.setdefault(int(fields[1]), []).append(pid)
        if int(fields[3]) == leader:
            members.append(pid)
    found: dict[int, str] = {}
    todo = list(members)
    while todo:
        pid = todo.pop()
        if pid in found or pid == os.getpid():
            continue
        if (started := _start_time(pid)) is not None:
            found[pid] = started
        todo += children.get(pid, [])
    return found


def stop_session(leader: int, grace: float = 30.0) -> list[int]:
    """SIGTERM every process of ``leader``'s session (see session_tree), SIGKILL what is left after
    ``grace`` seconds; returns the pids signalled. By pid and start time, never by name: a pid that
    was reused by another process meanwhile is not touched."""
    seen: dict[int, str] = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        seen.update(session_tree(leader))  # also what was started since the SIGTERM
        targets = [p for p, started in seen.items() if _alive(p) and _start_time(p) == started]
        if not targets:
            break
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 10.0)
        while time.monotonic() < deadline:
            for pid in targets:
                _reap(pid)
            if not any(_alive(p) and _start_time(p) == seen[p] for p in targets) and not session_tree(leader):
                break
            time.sleep(0.1)
    return sorted(seen)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; these machines run everything as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _pg_bindir() -> Path:
    return Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())


def _make_traversable(path: Path) -> None:
    """The postgres user must be able to reach its data directory through every parent."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class PostgresServer:
    root: Path
    port: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def password(self) -> str:
        """The password of the DB_USER role: a random token kept beside the server's data."""
        return stored_secret(self.root / f"{DB_USER}.password")

    def dsn(self, database: str = WAREHOUSE_DB) -> str:
        return f"postgresql://{DB_USER}:{self.password}@{self.host}:{self.port}/{database}"

    def _pg(self, tool: str) -> str:
        return str(_pg_bindir() / tool)

    def initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.data_dir, "postgres", "postgres")
            _make_traversable(self.root)
        subprocess.run(
            _as_postgres_user([self._pg("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                               "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                               "--locale=C.UTF-8"]),
            check=True, stdout=subprocess.DEVNULL,
        )

    def is_running(self) -> bool:
        res = subprocess.run(_as_postgres_user([self._pg("pg_ctl"), "status", "-D", str(self.data_dir)]),
                             capture_output=True)
        return res.returncode == 0

    def start(self) -> None:
        self.initdb()
        if not self.is_running():
            opts = (f"-p {self.port} -c listen_addresses={self.host} -k {self.data_dir} "
                    "-c max_connections=200 -c shared_buffers=256MB")
            subprocess.run(
                _as_postgres_user([self._pg("pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.data_dir),
                                   "-l", str(self.log_file), "-o", opts]),
                check=True, stdout=subprocess.DEVNULL,
            )
        self._bootstrap()

    def psql_admin(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            _as_postgres_user([self._pg("psql"), "-h", str(self.data_dir), "-p", str(self.port), "-U", "postgres",
                               "-d", database, "-v", "ON_ERROR_STOP=1", "-Atqc", sql]),
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def create_database(self, name: str) -> None:
        if not self.psql_admin(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.psql_admin(f'CREATE DATABASE "{name}" OWNER {DB_USER}')

    def drop_database(self, name: str) -> None:
        self.psql_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _bootstrap(self) -> None:
        verb = "ALTER" if self.psql_admin(f"SELECT 1 FROM pg_roles WHERE rolname = '{DB_USER}'") else "CREATE"
        # ALTER on every start: a stack created before the passwords were tokens gets its token too.
        self.psql_admin(f"{verb} ROLE {DB_USER} LOGIN CREATEDB CREATEROLE PASSWORD '{self.password}'")
        for db in (WAREHOUSE_DB, AIRFLOW_DB):
            self.create_database(db)

    def stop(self) -> None:
        if self.data_dir.exists() and self.is_running():
            subprocess.run(_as_postgres_user([self._pg("pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                                              "-w"]), check=True, stdout=subprocess.DEVNULL)


@dataclass
class ManagedProcess:
    """A server we start in its own session and stop, with every process of that session, by its recorded pid."""

    name: str
    run_dir: Path
    argv: list[str]
    port: int | None  # None: a server without a port of its own (the DAG processor); alive for a few seconds = up
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def _recorded(self) -> int | None:
        """The session leader's pid from the pid file, unless the pid now belongs to another process
        (the file also holds the leader's start time)."""
        try:
            pid, *started = self.pid_file.read_text().split()
            pid_number = int(pid)
        except (FileNotFoundError, ValueError):
            return None
        now = _start_time(pid_number)
        if started and now is not None and now != started[0]:
            return None  # reused: our session is gone (a live session id is never handed out again)
        return pid_number

    def pid(self) -> int | None:
        pid = self._recorded()
        return pid if pid is not None and _alive(pid) else None

    def start(self) -> None:
        self.wait_ready(self.spawn())

    def spawn(self) -> subprocess.Popen | None:
        """Start the process unless it runs already (None then); wait_ready waits for it to serve."""
        if self.pid() is not None:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **self.env}, start_new_session=True, cwd=REPO)
        finally:
            log.close()
        self.pid_file.write_text(f"{proc.pid} {_start_time(proc.pid) or ''}".strip())
        return proc

    def wait_ready(self, proc: subprocess.Popen | None) -> None:
        if proc is None:
            return
        try:
            if self.port is None:
                time.sleep(3)
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with code {proc.returncode}")
            else:
                wait_for_port(self.port, self.name, self.ready_timeout, proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"{self.name} failed to start; see {self.log_file}") from None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every process of the session we started: SIGTERM, SIGKILL after ``timeout`` seconds.

        Not only the leader's process group: a running Airflow task process sits in a group of its
        own in the same session, and outlived a group kill, re-parented to init. Also when the
        leader itself already died and left its session's processes behind."""
        leader = self._recorded()
        if leader is not None:
            stop_session(leader, timeout)
            _reap(leader)
        self.pid_file.unlink(missing_ok=True)


def stop_together(procs: list[ManagedProcess], grace: float = 30.0) -> None:
    """Stop several managed processes at once: each waits up to ``grace`` for its own session, so
    seven Airflow processes take one grace period, not seven."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
        for future in [pool.submit(proc.stop, grace) for proc in procs]:
            future.result()


def mongo_server(state_dir: Path, run_dir: Path, port: int) -> ManagedProcess:
    """Real mongod when it is installed, else the nx-27017 wire-protocol emulator."""
    data = state_dir / "mongo"
    data.mkdir(parents=True, exist_ok=True)
    mongod = shutil.which("mongod")
    if mongod:
        argv = [mongod, "--dbpath", str(data), "--port", str(port), "--bind_ip", "127.0.0.1", "--quiet"]
    else:
        nx = str(VENV_BIN / "nx-27017") if (VENV_BIN / "nx-27017").exists() else "nx-27017"
        argv = [nx, "--data-dir", str(data), "--port", str(port), "--host", "127.0.0.1",
                "--log-file", str(run_dir / "nx-27017.internal.log"), "--pid-file", str(run_dir / "nx-27017.pid")]
    return ManagedProcess("mongodb", run_dir, argv, port)


def emulator_server(run_dir: Path, port: int, data_dir: Path, extra: list[str] | None = None) -> ManagedProcess:
    python = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
    argv = [python, "-m", "exchange_emulator", "--data-dir", str(data_dir), "--port", str(port),
            "--host", "127.0.0.1", *(extra or [])]
    return ManagedProcess("emulator", run_dir, argv, port)


def redis_server(state_dir: Path, run_dir: Path, port: int) -> ManagedProcess:
    """Debian's redis-server: the Celery broker. Append-only file in its own directory, so queued
    tasks survive a restart of Redis; no RDB snapshots."""
    data = state_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data), "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning"]
    return ManagedProcess("redis", run_dir, argv, port)


@dataclass
class PgBouncer:
    """Debian's PgBouncer in front of the warehouse, in transaction pooling as managed Postgres
    services run it. Each database is also reachable as ``<name>_session`` in session pooling, for
    the components that keep session state (README, "PgBouncer")."""

    root: Path
    port: int
    pg: PostgresServer
    databases: tuple[str, ...] = (WAREHOUSE_DB,)
    pool_size: int = 20
    # libpq options the pipeline's sessions run with (connections.session_options); a transaction pooler
    # refuses them from clients, so the pooler sets them on each server connection it opens instead.
    session_options: str = ""

    def dsn(self, database: str = WAREHOUSE_DB, session: bool = False) -> str:
        name = f"{database}_session" if session else database
        return f"postgresql://{DB_USER}:{self.pg.password}@127.0.0.1:{self.port}/{name}"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        server = f"host={self.pg.host} port={self.pg.port}"
        if sets := [f"SET {opt.strip()}" for opt in self.session_options.split("-c") if opt.strip()]:
            server += " connect_query='" + "; ".join(sets) + "'"
        dbs = "".join(f"{db} = {server} dbname={db}\n{db}_session = {server} dbname={db} pool_mode=session\n"
                      for db in self.databases)
        ini = self.root / "pgbouncer.ini"
        users = self.root / "userlist.txt"
        # The pooler logs in to Postgres (scram-sha-256) with the role's password, so it keeps it in clear.
        users.write_text(f'"{DB_USER}" "{self.pg.password}"\n')
        ini.write_text(f"""[databases]
{dbs}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = transaction
default_pool_size = {self.pool_size}
max_client_conn = 1000
server_reset_query =
; psycopg2 and libpq send these at connect; the pooler keeps the first client's value per server connection
ignore_startup_parameters = extra_float_digits
logfile =
pidfile =
""")
        for path in (self.root, ini, users):
            path.chmod(0o700 if path.is_dir() else 0o600)
            if os.geteuid() == 0:
                shutil.chown(path, "postgres", "postgres")
        return ini

    def process(self, run_dir: Path) -> ManagedProcess:
        ini = self.write_config()
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        # PgBouncer refuses to run as root: -u drops to the postgres user after reading its files.
        argv = [binary, *(["-u", "postgres"] if os.geteuid() == 0 else []), str(ini)]
        if os.geteuid() == 0:
            _make_traversable(self.root)
        return ManagedProcess("pgbouncer", run_dir, argv, self.port)


def celery_airflow(run_dir: Path, env: dict[str, str], api_port: int, workers: int = topology.LOCAL_WORKERS,
                   concurrency: int = 4, queues: str | None = None,
                   egress: tuple[str, ...] | None = None) -> list[ManagedProcess]:
    """The Airflow processes of the CeleryExecutor topology (scripts/topology.py), each a managed
    process in a session of its own. ``env`` is the shared environment (celery_env); each process
    gets free ports for its health / log server, which also tell when it is up.

    Each worker listens on ``queues`` (default: the default queue and every exchange's queue of the
    markets file in ``env``) with its egress identity ``egress[i]`` (default: one for all, as workers
    on one host share its IP), so they share one rate-limit bucket per exchange."""
    airflow = str(VENV_BIN / "airflow")
    if queues is None:
        queues = topology.worker_queues(_load_config(env["MARKETFLOW_CONFIG"], env))
    egress = egress or (env.get(topology.EGRESS_VAR) or "default",) * workers
    if len(egress) != workers:
        raise ValueError(f"{workers} workers need {workers} egress identities, got {egress}")
    procs: list[ManagedProcess] = []
    for service, command in topology.AIRFLOW_SERVICES.items():
        name = service.removeprefix("airflow-")
        if service == topology.WORKER_SERVICE:
            for i in range(1, workers + 1):
                port = free_port()
                procs.append(ManagedProcess(
                    f"worker{i}", run_dir,
                    [airflow, *topology.worker_command(queues), "--celery-hostname", f"worker{i}@%h",
                     "--concurrency", str(concurrency)],
                    port, env={**env, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(port),
                               topology.EGRESS_VAR: egress[i - 1]}, ready_timeout=240))
            continue
        extra: dict[str, str] = {}
        port: int | None = None
        if command == ("api-server",):
            port = api_port
        elif command == ("scheduler",):
            port = free_port()
            extra["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(port)
        elif command == ("triggerer",):
            port = free_port()
            extra["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(port)
        procs.append(ManagedProcess(name, run_dir, [airflow, *command], port, env={**env, **extra},
                                    ready_timeout=240))
    return procs


def celery_env(env: dict[str, str], state_dir: Path, redis_port: int, api_port: int, pooler: PgBouncer,
               database: str = WAREHOUSE_DB, concurrency: int = 4) -> dict[str, str]:
    """``env`` (service_env | airflow_env) turned into the CeleryExecutor topology's: the shared
    settings, the broker, secrets every process must agree on, and the warehouse through PgBouncer
    (transaction pooling). The Airflow metadata database stays a direct connection: the scheduler
    holds row locks and session state there, and the Airflow docs ask for session pooling at least."""
    from cryptography.fernet import Fernet

    pooled = urlsplit(pooler.dsn(database))
    return {
        **env,
        **topology.SHARED_SETTINGS,
        topology.BROKER_SETTING: f"{topology.BROKER_SCHEME}127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": stored_secret(state_dir / "airflow-jwt.secret"),
        "AIRFLOW__API__SECRET_KEY": stored_secret(state_dir / "airflow-api.secret"),
        "AIRFLOW__CORE__FERNET_KEY": stored_secret(state_dir / "airflow-fernet.key",
                                                   lambda: Fernet.generate_key().decode()),
        # The extra tells the pipeline it sits behind a transaction pooler (connections.warehouse_conninfo).
        "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pooler.dsn(database) + "?pooler=transaction",
        "MARKETFLOW_PG_HOST": str(pooled.hostname),
        "MARKETFLOW_PG_PORT": str(pooled.port),
    }


@dataclass
class Stack:
    """The demo stack: fixed ports, state under .local/ (git-ignored)."""

    pg_port: int = int(os.environ.get("MARKETFLOW_PG_PORT", "55432"))
    mongo_port: int = int(os.environ.get("MARKETFLOW_MONGO_PORT", "27027"))
    emulator_port: int = int(os.environ.get("MARKETFLOW_EMULATOR_PORT", "8765"))
    airflow_port: int = int(os.environ.get("MARKETFLOW_AIRFLOW_PORT", "8080"))
    emulator_data_dir: Path = Path(os.environ.get("EMULATOR_DATA_DIR", REPO / "include" / "sample_data"))
    state_dir: Path = LOCAL / "state"
    emulator_args: list[str] = field(default_factory=list)
    # "local": airflow standalone (LocalExecutor); "celery": the compose topology (scripts/topology.py)
    # with Redis, PgBouncer in front of the warehouse and Celery workers (make demo EXECUTOR=celery).
    executor: str = os.environ.get("MARKETFLOW_EXECUTOR", "local")
    redis_port: int = int(os.environ.get("MARKETFLOW_REDIS_PORT", "6389"))
    pgbouncer_port: int = int(os.environ.get("MARKETFLOW_PGBOUNCER_PORT", "6442"))

    def __post_init__(self) -> None:
        if self.executor not in ("local", "celery"):
            raise SystemExit(f"EXECUTOR={self.executor!r}: use local (airflow standalone) or celery")

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def postgres(self) -> PostgresServer:
        return PostgresServer(self.state_dir / "postgres", self.pg_port)

    @property
    def mongo(self) -> ManagedProcess:
        return mongo_server(self.state_dir, self.run_dir, self.mongo_port)

    @property
    def emulator(self) -> ManagedProcess:
        return emulator_server(self.run_dir, self.emulator_port, self.emulator_data_dir, self.emulator_args)

    @property
    def airflow_home(self) -> Path:
        return self.state_dir / "airflow"

    @property
    def airflow(self) -> ManagedProcess:
        return ManagedProcess("airflow", self.run_dir, [str(VENV_BIN / "airflow"), "standalone"],
                              self.airflow_port, env=self.env(), ready_timeout=240)

    @property
    def redis(self) -> ManagedProcess:
        return redis_server(self.state_dir, self.run_dir, self.redis_port)

    @property
    def pgbouncer(self) -> PgBouncer:
        from marketflow.connections import session_options

        config = os.environ.get("MARKETFLOW_CONFIG", str(REPO / "include/config/markets.demo.yml"))
        timeouts = _load_config(config, {"MARKETFLOW_DEMO_BYBIT": "true",
                                         "MARKETFLOW_EXCHANGE_URL": f"http://127.0.0.1:{self.emulator_port}"}).timeouts
        return PgBouncer(self.state_dir / "pgbouncer", self.pgbouncer_port, self.postgres,
                         session_options=session_options(timeouts))

    def celery_processes(self) -> list[ManagedProcess]:
        """The Airflow processes of the Celery topology (new free ports on each call: start these)."""
        env = self.env()
        workers = topology.LOCAL_WORKERS
        return celery_airflow(self.run_dir, env, self.airflow_port, workers,
                              int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]))

    def all_processes(self) -> list[ManagedProcess]:
        """Every managed process either executor may have started, by name (for stop and status)."""
        names = ["airflow", *(n.removeprefix("airflow-") for n in topology.AIRFLOW_SERVICES
                              if n != topology.WORKER_SERVICE),
                 *(f"worker{i}" for i in range(1, topology.LOCAL_WORKERS + 1))]
        return [ManagedProcess(n, self.run_dir, [], None) for n in names] + [
            self.emulator, self.mongo, self.redis, ManagedProcess("pgbouncer", self.run_dir, [], self.pgbouncer_port)]

    def admin_password(self) -> str:
        """The Airflow UI password of ADMIN_USER: a random token kept in the stack's state."""
        return stored_secret(self.state_dir / "airflow-admin.password")

    def env(self) -> dict[str, str]:
        pg, mongo_uri = self.postgres, f"mongodb://127.0.0.1:{self.mongo_port}/marketflow"
        env = service_env(pg, mongo_uri, f"http://127.0.0.1:{self.emulator_port}")
        env["MARKETFLOW_CONFIG"] = os.environ.get("MARKETFLOW_CONFIG", str(REPO / "include/config/markets.demo.yml"))
        # the demo file's synthetic Bybit market (the emulator serves it on the same port as the recordings)
        env["MARKETFLOW_DEMO_BYBIT"] = os.environ.get("MARKETFLOW_DEMO_BYBIT", "true")
        parallelism = _parallelism(env["MARKETFLOW_CONFIG"], env)
        env |= airflow_env(self.airflow_home, pg, self.airflow_port, parallelism=parallelism)
        if self.executor == "celery":
            # The same slots as standalone's LocalExecutor, split across the workers.
            per_worker = -(-parallelism // topology.LOCAL_WORKERS)
            env = celery_env(env, self.state_dir, self.redis_port, self.airflow_port, self.pgbouncer,
                             concurrency=per_worker)
        return env


def _load_config(config_path: str, env: dict[str, str]):
    from marketflow.config import load_config

    return load_config(config_path, env={**os.environ, **env})


def _parallelism(config_path: str, env: dict[str, str]) -> int:
    """Executor slots for every pool of the markets file at once (MarketflowConfig.required_parallelism)."""
    return _load_config(config_path, env).required_parallelism()


def service_env(pg: PostgresServer, mongo_uri: str, emulator_url: str, database: str = WAREHOUSE_DB) -> dict[str, str]:
    """Environment through which every component reaches the services (no code reads ports directly)."""
    host, _, rest = mongo_uri.removeprefix("mongodb://").partition("/")
    return {
        "MONGO_URI": mongo_uri,
        "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg.dsn(database),
        "AIRFLOW_CONN_MARKETFLOW_MONGO": f"mongo://{host}/{rest or 'marketflow'}",
        "MARKETFLOW_PG_HOST": pg.host,
        "MARKETFLOW_PG_PORT": str(pg.port),
        "MARKETFLOW_PG_USER": DB_USER,
        "MARKETFLOW_PG_PASSWORD": pg.password,
        "MARKETFLOW_PG_DATABASE": database,
        "MARKETFLOW_EXCHANGE_URL": emulator_url,
        "MARKETFLOW_DBT_EXECUTABLE": str(LOCAL / "dbt-venv" / "bin" / "dbt"),
        "MARKETFLOW_DBT_PROJECT_DIR": str(REPO / "dbt"),
        "MARKETFLOW_CONFIG": os.environ.get("MARKETFLOW_CONFIG", str(REPO / "include" / "config" / "markets.yml")),
        # No phoning home from an offline stack.
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "SCARF_ANALYTICS": "false",
    }


def airflow_env(home: Path, pg: PostgresServer, port: int, metadata_db: str = AIRFLOW_DB,
                parallelism: int = 12) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        # standalone starts its components as `airflow ...` subprocesses, found on PATH.
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # The default of 32 costs ~1.8 GiB here. Enough for every pool at once (live, hourly, backfill, dbt;
        # check-config prints the figure): with fewer, long history tasks could hold every executor slot
        # while a minute ingest waits, and no priority frees a running slot.
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Each task process re-parses its DAG file; on a busy 2-core machine that can pass 30 s.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",  # user:role
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.dsn(metadata_db).replace("postgresql://", "postgresql+psycopg2://"),
        # For market_maintenance's `airflow db clean`: Airflow 3 blocks task processes from the metadata
        # database, so that task reaches it through this connection (plugins/marketflow/housekeeping.py).
        "AIRFLOW_CONN_MARKETFLOW_AIRFLOW_DB": pg.dsn(metadata_db),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # Re-parse each DAG file every 2 minutes, not Airflow's 30 s: a parse costs ~5-20 s of CPU here
        # (ccxt, cosmos), so at 30 s with 2 parsers the DAG processor kept a core of the 2-core machine
        # busy and slowed the minute DAG's task (bench figure 6). DAG edits show within 2 minutes.
        # (The former AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL is no longer read by Airflow 3.)
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # cosmos' Airflow plugin serves the generated dbt docs under Browse > "dbt docs".
        "AIRFLOW__COSMOS__DBT_DOCS_PROJECTS": json.dumps(
            {"marketflow": {"dir": str(home.parent / "dbt-docs"), "index": "index.html", "name": "dbt docs"}}),
    }


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (Postgres buffers, forked workers) counted once overall."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def stack_pids(stack: Stack) -> dict[str, list[int]]:
    """Every process of the stack, by service: each managed process's session (task processes in
    groups of their own included), and the postmaster's tree."""
    groups: dict[str, list[int]] = {}
    for proc in stack.all_processes():
        pid = proc.pid()
        if pid:
            groups[proc.name] = sorted(session_tree(pid)) or [pid]
    pg_pid_file = stack.postgres.data_dir / "postmaster.pid"
    if pg_pid_file.exists():
        postmaster = int(pg_pid_file.read_text().split()[0])
        children = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if (fields := _stat(pid)) is not None and int(fields[1]) == postmaster]
        groups["postgres"] = [postmaster, *children]
    return groups


def memory_mib(stack: Stack) -> dict[str, float]:
    return {name: sum(_pss_kib(p) for p in pids) / 1024 for name, pids in stack_pids(stack).items()}


def up(stack: Stack, with_airflow: bool) -> None:
    stack.run_dir.mkdir(parents=True, exist_ok=True)
    pg = stack.postgres
    print(f"postgres   {'running' if pg.data_dir.exists() and pg.is_running() else 'starting'} on "
          f"127.0.0.1:{stack.pg_port} (data {pg.data_dir})", flush=True)
    pg.start()
    procs = [(stack.mongo, f"({Path(stack.mongo.argv[0]).name})"),
             (stack.emulator, f"(data {stack.emulator_data_dir})")]
    if stack.executor == "celery":
        procs += [(stack.redis, "(Celery broker)"),
                  (stack.pgbouncer.process(stack.run_dir), f"(transaction pooling, in front of :{stack.pg_port})")]
    for proc, what in procs:
        state = f"running (pid {proc.pid()})" if proc.pid() else "starting"
        print(f"{proc.name:<10} {state} on 127.0.0.1:{proc.port} {what}", flush=True)
        proc.start()
    if not with_airflow:
        return
    stack.airflow_home.mkdir(parents=True, exist_ok=True)
    (stack.airflow_home / "passwords.json").write_text(json.dumps({ADMIN_USER: stack.admin_password()}))
    airflow = [stack.airflow] if stack.executor == "local" else stack.celery_processes()
    # Started together, then waited for: each Airflow process needs tens of seconds to come up here.
    started = []
    for proc in airflow:
        state = f"running (pid {proc.pid()})" if proc.pid() else "starting"
        where = f"on 127.0.0.1:{proc.port}" if proc.port else ""
        print(f"{proc.name:<13} {state} {where} (airflow {' '.join(proc.argv[1:3])})", flush=True)
        started.append((proc, proc.spawn()))
    for proc, popen in started:
        proc.wait_ready(popen)


def down(stack: Stack, grace: float = 30.0) -> None:
    """Stop every service, each with every process of its session (Airflow's running task processes
    too): SIGTERM, then SIGKILL after ``grace`` seconds. Postgres stops with pg_ctl."""
    procs = stack.all_processes()
    for proc in procs:
        if proc.pid() is not None:
            print(f"stopping {proc.name} (pid {proc.pid()})", flush=True)
    airflow = [p for p in procs if p.name not in ("emulator", "mongodb", "redis", "pgbouncer")]
    stop_together(airflow, grace)  # Airflow first, then what it uses; Postgres last
    for proc in procs:
        if proc not in airflow:
            proc.stop(grace)
    pg = stack.postgres
    if pg.data_dir.exists() and pg.is_running():
        print("stopping postgres", flush=True)
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start the services (idempotent)")
    p_up.add_argument("--airflow", action="store_true", help="also start airflow standalone")
    sub.add_parser("down", help="stop every service this script started; data is kept")
    sub.add_parser("env", help="print shell exports for the running stack")
    sub.add_parser("status", help="which services are running")
    mem = sub.add_parser("memory", help="memory (PSS) of the running stack; --watch N samples for N s, prints the peak")
    mem.add_argument("--watch", type=float, default=0)
    args = parser.parse_args(argv)
    stack = Stack()
    if args.cmd == "up":
        up(stack, args.airflow)
    elif args.cmd == "down":
        down(stack)
    elif args.cmd == "status":
        pg = stack.postgres
        print(f"postgres      {'running' if pg.data_dir.exists() and pg.is_running() else 'stopped'}  "
              f"127.0.0.1:{pg.port}")
        for proc in stack.all_processes():
            pid = proc.pid()
            if pid or proc.name in ("airflow", "mongodb", "emulator"):
                print(f"{proc.name:<13} {f'running (pid {pid})' if pid else 'stopped'}")
    elif args.cmd == "memory":
        peak: dict[str, float] = {}
        peak_total = 0.0
        deadline = time.monotonic() + args.watch
        while True:
            now = memory_mib(stack)
            peak_total = max(peak_total, sum(now.values()))
            for name, mib in now.items():
                peak[name] = max(peak.get(name, 0.0), mib)
            if time.monotonic() >= deadline:
                break
            time.sleep(1)
        for name, mib in sorted(peak.items()):
            print(f"{name:<13} {mib:8.1f} MiB")
        print(f"{'total':<13} {peak_total:8.1f} MiB{' (peak)' if args.watch else ''}")
    elif args.cmd == "env":
        for key, value in stack.env().items():
            print(f"export {key}='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
