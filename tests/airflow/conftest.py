"""Real Airflow for the tests in this folder: one migrated metadata database (SQLite) for the session,
the repository's DAG files plus a consumer DAG scheduled on a mart asset (support.airflow_cli)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from support.airflow_cli import AIRFLOW, MART_CONSUMER, MART_CONSUMER_DAG_ID, REPO, VENV_BIN


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory, pg_server, mongo_uri, emulator_url) -> Iterator[dict[str, str]]:
    manifest = REPO / "dbt" / "target" / "manifest.json"
    assert manifest.exists(), "run `make dbt-parse` first (make test does)"
    name = f"mf_airflow_{os.getpid()}"
    pg_server.drop_database(name)
    pg_server.create_database(name)
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    for dag_file in (REPO / "dags").glob("*.py"):
        (dags / dag_file.name).symlink_to(dag_file)
    (dags / f"{MART_CONSUMER_DAG_ID}.py").write_text(MART_CONSUMER)
    mongo = urlsplit(mongo_uri)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
        "PYTHONPATH": str(REPO / "plugins"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "AIRFLOW_CONN_MARKETFLOW_POSTGRES": pg_server.dsn(name),
        "AIRFLOW_CONN_MARKETFLOW_MONGO": f"mongo://{mongo.netloc}/mf_airflow_{os.getpid()}",
        "MARKETFLOW_CONFIG": str(REPO / "include" / "config" / "markets.demo.yml"),
        "MARKETFLOW_EXCHANGE_URL": emulator_url,
        "MARKETFLOW_DBT_EXECUTABLE": str(REPO / ".local" / "dbt-venv" / "bin" / "dbt"),
    }
    subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
    # Every DAG in the metadata database, the consumer's asset schedule included (`dags test` stores only
    # the DAG it runs).
    subprocess.run([AIRFLOW, "dags", "reserialize"], env=env, check=True, capture_output=True, timeout=600)
    yield env
    pg_server.drop_database(name)
