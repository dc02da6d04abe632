"""The CeleryExecutor deployment: one definition read by the local stack (scripts/stack.py,
`make demo EXECUTOR=celery`, the Celery-path test) and checked against docker-compose.yaml
(tests/compose/test_celery_topology.py), so the compose file that is validated is the topology that ran.
"""

from __future__ import annotations

# Compose service -> the `airflow` command it runs; locally each is a process group of its own.
AIRFLOW_SERVICES: dict[str, tuple[str, ...]] = {
    "airflow-apiserver": ("api-server",),
    "airflow-scheduler": ("scheduler",),
    "airflow-dag-processor": ("dag-processor",),
    "airflow-triggerer": ("triggerer",),
    "airflow-worker": ("celery", "worker"),
}
WORKER_SERVICE = "airflow-worker"
# Local Celery workers (compose scales its one worker service with `--scale airflow-worker=N`).
LOCAL_WORKERS = 2

# Queues: every task that calls an exchange goes to that exchange's queue (ExchangeConfig.queue,
# exchange_<name>); dbt, planning and housekeeping to Airflow's [operators] default_queue. A worker
# listens on `--queues`; compose takes the list from MARKETFLOW_WORKER_QUEUES (default: every queue of
# the shipped markets files), a worker per egress IP can be given only the exchanges it should call.
DEFAULT_QUEUE = "default"
QUEUES_OPTION = "--queues"
QUEUES_VAR = "MARKETFLOW_WORKER_QUEUES"
# The worker's egress identity: workers with one value share a rate-limit bucket per exchange
# (plugins/marketflow/rate_limit.py); compose passes it through, default "default".
EGRESS_VAR = "MARKETFLOW_EGRESS_ID"
# Compose's markets files: the worker's default --queues must cover the exchanges of each.
COMPOSE_MARKETS_FILES = ("markets.yml", "markets.demo.yml")


def worker_queues(*configs) -> str:
    """``--queues`` of a worker that serves every exchange of ``configs`` (MarketflowConfig), comma-separated."""
    queues = sorted({ex.queue for config in configs for ex in config.exchanges})
    return ",".join([DEFAULT_QUEUE, *queues])


def worker_command(queues: str) -> tuple[str, ...]:
    return (*AIRFLOW_SERVICES[WORKER_SERVICE], QUEUES_OPTION, queues)


# Settings every Airflow process of the topology has, here and in compose, word for word.
SHARED_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
}
# Set in both, to values of their own network (redis://redis:6379/0 in compose, a local port here).
BROKER_SETTING = "AIRFLOW__CELERY__BROKER_URL"
BROKER_SCHEME = "redis://"
# Unset in both: the Celery provider then keeps task results in the metadata database ("db+" +
# sql_alchemy_conn), so Redis holds only the queue.
UNSET_SETTINGS = ("AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__RESULT_BACKEND_CMD")
# Per-process settings the local stack must give every process the same value of, or tasks fail
# (tokens signed by one process are checked by another).
SAME_IN_EVERY_PROCESS = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                         "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__CORE__FERNET_KEY")
