"""The CeleryExecutor topology for tests (scripts/topology.py), started with the code `make demo
EXECUTOR=celery` uses (scripts/stack.py, scripts/demo.py): Redis, PgBouncer in transaction pooling in front
of a fresh warehouse, and Airflow's api-server, scheduler, dag-processor, triggerer and Celery workers,
each a process in a session of its own, stopped by it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from marketflow.config import load_config
from marketflow.connections import session_options
from scripts import demo, stack, topology


@dataclass
class CeleryStack:
    env: dict[str, str]
    services: list[stack.ManagedProcess]  # redis, pgbouncer, then Airflow's processes

    @property
    def redis(self) -> stack.ManagedProcess:
        return self.services[0]

    @property
    def pgbouncer(self) -> stack.ManagedProcess:
        return self.services[1]

    @property
    def workers(self) -> list[stack.ManagedProcess]:
        return [p for p in self.services if p.name.startswith("worker")]

    def worker_running(self, pid: int) -> stack.ManagedProcess | None:
        """The worker whose session holds the process ``pid`` (a task process it started)."""
        for worker in self.workers:
            leader = worker.pid()
            if leader is not None and (pid == leader or pid in stack.session_tree(leader)):
                return worker
        return None


def kill_worker(worker: stack.ManagedProcess) -> list[int]:
    """SIGKILL every process of the worker's session at once, as when its host is lost: the Celery
    worker, its pool processes and the task processes they supervise (in process groups of their own),
    with no chance to ack, requeue or report anything. Returns the pids killed."""
    leader = worker.pid()
    assert leader is not None, f"{worker.name} is not running"
    pids = sorted({leader, *stack.session_tree(leader)})
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(stack._alive(p) for p in pids):
        for pid in pids:
            stack._reap(pid)
        time.sleep(0.1)
    return pids


@contextlib.contextmanager
def celery_stack(root: Path, pg_server: stack.PostgresServer, mongo_uri: str, emulator_url: str, config: Path,
                 admin_password: str, *, extra_env: dict[str, str] | None = None,
                 egress: tuple[str, ...] | None = None, concurrency: int = 2,
                 parallelism: int = 4) -> Iterator[CeleryStack]:
    run_dir, home = root / "run", root / "airflow"
    tag = f"{os.getpid()}_{root.name}".replace("-", "_").lower()
    warehouse, meta = f"mf_celery_{tag}", f"mf_celery_airflow_{tag}"
    for name in (warehouse, meta):
        pg_server.drop_database(name)
        pg_server.create_database(name)
    timeouts = load_config(str(config), env={**os.environ, "MARKETFLOW_EXCHANGE_URL": emulator_url}).timeouts
    redis = stack.redis_server(root, run_dir, stack.free_port())
    bouncer = stack.PgBouncer(root / "pgbouncer", stack.free_port(), pg_server, (warehouse,),
                              session_options=session_options(timeouts))
    api_port = stack.free_port()
    env = stack.service_env(pg_server, f"{mongo_uri}/mf_celery_{tag}", emulator_url, warehouse)
    env |= stack.airflow_env(home, pg_server, api_port, metadata_db=meta, parallelism=parallelism)
    env = stack.celery_env(env, root, redis.port, api_port, bouncer, warehouse, concurrency=concurrency)
    env |= {"MARKETFLOW_CONFIG": str(config), "PYTHONPATH": str(stack.REPO / "plugins"),
            "MARKETFLOW_DBT_PROJECT_DIR": str(stack.REPO / "dbt"),
            # No scheduled run of the current hour beside the triggered ones (`make demo` has one).
            "MARKETFLOW_SCHEDULE_START": "2099-01-01T00:00:00Z", **(extra_env or {})}
    home.mkdir(parents=True)
    (home / "passwords.json").write_text(json.dumps({stack.ADMIN_USER: admin_password}))
    services = [redis, bouncer.process(run_dir)]
    try:
        for proc in services:
            proc.start()
        demo.prepare(env, home)
        airflow = stack.celery_airflow(run_dir, env, api_port, topology.LOCAL_WORKERS, concurrency=concurrency,
                                       egress=egress)
        services += airflow
        started = [(proc, proc.spawn()) for proc in airflow]
        for proc, popen in started:
            proc.wait_ready(popen)
        yield CeleryStack(env, services)
    finally:
        stack.stop_together(services[2:], 10)  # Airflow's processes, then the broker and the pooler
        for proc in services[:2]:
            proc.stop(10)
        for name in (warehouse, meta):
            pg_server.drop_database(name)


def metadata_rows(env: dict[str, str], query: str, *params) -> list[tuple]:
    with psycopg2.connect(demo.metadata_dsn(env)) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def warehouse_rows(env: dict[str, str], query: str, *params) -> list[tuple]:
    with psycopg2.connect(demo.warehouse_dsn(env)) as conn, conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()
