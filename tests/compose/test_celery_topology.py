"""docker-compose.yaml and the local Celery stack (`make demo EXECUTOR=celery`, tests/airflow/
test_celery_path.py) run the same topology: the same Airflow services with the same commands, the
same shared settings, a Redis broker and results in the metadata database (scripts/topology.py)."""

from __future__ import annotations

from pathlib import Path

from test_docker_compose import command_list, raw_compose, service_env, services

from marketflow.config import load_config
from scripts import stack, topology


def local_env(tmp_path: Path) -> dict[str, str]:
    pg = stack.PostgresServer(tmp_path / "pg", 5432)
    env = stack.service_env(pg, "mongodb://127.0.0.1:27017/marketflow", "http://127.0.0.1:8765")
    env |= stack.airflow_env(tmp_path / "airflow", pg, 8080)
    return stack.celery_env(env, tmp_path, 6379, 8080, stack.PgBouncer(tmp_path / "bouncer", 6432, pg))


def shipped_configs() -> list:
    """The markets files compose can run (MARKETFLOW_MARKETS_FILE), every exchange in them."""
    env = {"MARKETFLOW_EXCHANGE_URL": "http://emulator:8765", "MARKETFLOW_DEMO_BYBIT": "true"}
    return [load_config(stack.REPO / "include" / "config" / name, env=env) for name in topology.COMPOSE_MARKETS_FILES]


def test_compose_runs_the_airflow_services_and_commands_of_the_local_topology() -> None:
    airflow = {name for name, spec in services().items() if name.startswith("airflow-") and "command" in spec
               and name != "airflow-init"}
    assert airflow == set(topology.AIRFLOW_SERVICES)
    for name, command in topology.AIRFLOW_SERVICES.items():
        if name == topology.WORKER_SERVICE:
            # by default a worker listens on the default queue and every exchange's queue of the shipped files
            command = topology.worker_command(topology.worker_queues(*shipped_configs()))
        assert tuple(command_list(name)) == command, name
    assert "redis" in services()


def test_a_compose_worker_takes_its_queues_and_egress_identity_from_the_environment() -> None:
    raw = raw_compose()["services"][topology.WORKER_SERVICE]
    default = topology.worker_queues(*shipped_configs())
    assert raw["command"].endswith(f"{topology.QUEUES_OPTION} ${{{topology.QUEUES_VAR}:-{default}}}")
    assert service_env(topology.WORKER_SERVICE, raw=True)[topology.EGRESS_VAR] == f"${{{topology.EGRESS_VAR}:-default}}"
    # every exchange's queue of each shipped file is served: no task waits for a worker that never comes
    for config in shipped_configs():
        assert {ex.queue for ex in config.exchanges} <= set(default.split(","))


def test_compose_and_the_local_stack_share_the_celery_settings(tmp_path: Path) -> None:
    local = local_env(tmp_path)
    for name in topology.AIRFLOW_SERVICES:
        compose = service_env(name)
        for key, value in topology.SHARED_SETTINGS.items():
            assert compose.get(key) == value == local[key], (name, key)
        assert compose[topology.BROKER_SETTING].startswith(topology.BROKER_SCHEME), name
        assert local[topology.BROKER_SETTING].startswith(topology.BROKER_SCHEME)
        for key in topology.UNSET_SETTINGS:
            assert key not in compose and key not in local, (name, key)
        # Set in every compose container (one anchor), and once for every local process.
        for key in topology.SAME_IN_EVERY_PROCESS:
            assert compose.get(key) and local.get(key), (name, key)


def test_the_local_processes_are_one_per_compose_service_and_two_workers(tmp_path: Path) -> None:
    procs = stack.celery_airflow(tmp_path, local_env(tmp_path), 8080)
    commands = [tuple(p.argv[1:1 + len(c)]) for p in procs for c in [topology.AIRFLOW_SERVICES.get(
        "airflow-worker" if p.name.startswith("worker") else f"airflow-{p.name}")]]
    assert sorted(commands) == sorted([*(c for s, c in topology.AIRFLOW_SERVICES.items()
                                         if s != topology.WORKER_SERVICE),
                                       *[topology.AIRFLOW_SERVICES[topology.WORKER_SERVICE]] * 2])
    # Each worker serves its logs on a port of its own: two on one host must not collide.
    ports = [p.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] for p in procs if p.name.startswith("worker")]
    assert len(set(ports)) == 2


def test_local_workers_listen_on_every_queue_of_the_markets_file_with_their_egress_identity(tmp_path: Path) -> None:
    env = local_env(tmp_path)
    config = load_config(stack.REPO / "include" / "config" / "markets.demo.yml",
                         env={"MARKETFLOW_EXCHANGE_URL": "http://127.0.0.1:8765", "MARKETFLOW_DEMO_BYBIT": "true"})
    queues = topology.worker_queues(config)
    assert queues == "default,exchange_binance,exchange_bybit,exchange_okx"
    procs = stack.celery_airflow(tmp_path, env, 8080, queues=queues, egress=("ip-a", "ip-b"))
    workers = [p for p in procs if p.name.startswith("worker")]
    for worker in workers:
        i = worker.argv.index(topology.QUEUES_OPTION)
        assert worker.argv[i + 1] == queues
    assert [w.env[topology.EGRESS_VAR] for w in workers] == ["ip-a", "ip-b"]
