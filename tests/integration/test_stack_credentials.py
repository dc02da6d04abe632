"""The local stack's credentials (scripts/stack.py): random tokens kept with the stack's state.

Airflow's secret masker replaces every occurrence of a connection's password in the task logs. With
the demo's database password `marketflow`, every logger name and database name in the demo's logs
read `***` (`"logger":"***.pipeline"`). The passwords are now tokens that occur nowhere else, the
same across restarts of one stack, and a stack created with the old password gets its token on the
next start without losing its data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg2
import pytest

from scripts import stack

REPO = Path(__file__).resolve().parents[2]
NAMES = {"marketflow", "airflow", "admin", "postgres", stack.DB_USER, stack.WAREHOUSE_DB, stack.AIRFLOW_DB,
         stack.ADMIN_USER}
# What a demo task logs, in Airflow's JSON log format: nothing in it may be masked.
DEMO_LOG_LINE = ('{"timestamp":"2026-11-02T10:00:01Z","level":"info","logger":"marketflow.pipeline",'
                 '"event":"binance BTC/USDT: 60 candles into staging.ohlcv (database marketflow, user marketflow, '
                 'airflow metadata in airflow, admin user admin, server postgres)"}')


def _repo_text() -> str:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    texts = []
    for name in files:
        path = REPO / name
        if path.is_file() and path.stat().st_size < 2_000_000:
            texts.append(path.read_bytes().decode("utf-8", "ignore"))
    return "\n".join(texts)


def _credentials(st: stack.Stack) -> dict[str, str]:
    return {"postgres": st.postgres.password, "airflow admin": st.admin_password()}


def test_passwords_are_random_tokens_that_appear_nowhere_else(tmp_path: Path) -> None:
    creds = _credentials(stack.Stack(state_dir=tmp_path / "a"))
    repo_text = _repo_text()
    for what, password in creds.items():
        assert password not in NAMES, f"{what} password is the word {password!r}"
        assert len(password) >= 24, f"{what} password is short: {password!r}"
        # nothing the pipeline writes (code, SQL, configs, docs) contains it, so the masker hides only it
        assert password.lower() not in repo_text.lower(), f"{what} password occurs in the repository"
    assert len(set(creds.values())) == len(creds), "two credentials share one token"
    # another stack (another state directory) has its own tokens
    other = _credentials(stack.Stack(state_dir=tmp_path / "b"))
    assert not set(other.values()) & set(creds.values())


def test_passwords_are_stable_across_calls_and_restarts(tmp_path: Path) -> None:
    first = stack.Stack(state_dir=tmp_path)
    creds = _credentials(first)
    assert _credentials(first) == creds
    assert _credentials(stack.Stack(state_dir=tmp_path)) == creds  # a new process on the same state
    env = first.env()
    assert env["MARKETFLOW_PG_PASSWORD"] == creds["postgres"]
    for key in ("AIRFLOW_CONN_MARKETFLOW_POSTGRES", "AIRFLOW_CONN_MARKETFLOW_AIRFLOW_DB",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        url = urlsplit(env[key])
        assert (unquote(url.username or ""), unquote(url.password or "")) == (stack.DB_USER, creds["postgres"]), key
    assert (tmp_path / "postgres" / f"{stack.DB_USER}.password").stat().st_mode & 0o077 == 0, "readable by others"


def test_the_secret_masker_hides_the_password_and_nothing_else(tmp_path: Path) -> None:
    """Airflow's own masker, fed the demo connection's password as Airflow feeds it when a task reads
    the connection: the demo's log line keeps every name, and the password itself is masked."""
    env = stack.Stack(state_dir=tmp_path / "state").env()
    password = unquote(urlsplit(env["AIRFLOW_CONN_MARKETFLOW_POSTGRES"]).password or "")
    script = (
        "import json, sys\n"
        "from airflow.sdk._shared.secrets_masker import SecretsMasker\n"
        "password, line = sys.argv[1], sys.argv[2]\n"
        "masker = SecretsMasker()\n"
        "masker.add_mask(password)\n"
        "print('RESULT=' + json.dumps([masker.redact(line), masker.redact(line + ' ' + password)]))\n"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")} | {"AIRFLOW_HOME": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", script, password, DEMO_LOG_LINE], env=child_env, capture_output=True,
                         text=True, timeout=120, check=True)
    masked_line, masked_password = json.loads(
        next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT="))[len("RESULT="):])
    assert masked_line == DEMO_LOG_LINE
    assert masked_password == DEMO_LOG_LINE + " ***"


def _can_login(server: stack.PostgresServer, password: str) -> bool:
    try:
        psycopg2.connect(host=server.host, port=server.port, user=stack.DB_USER, password=password,
                         dbname=stack.WAREHOUSE_DB, connect_timeout=10).close()
    except psycopg2.OperationalError:
        return False
    return True


@pytest.fixture
def fresh_server(tmp_path: Path):
    server = stack.PostgresServer(tmp_path / "postgres", stack.free_port())
    yield server
    server.stop()


def test_a_stack_from_before_the_tokens_gets_one_and_keeps_its_data(fresh_server: stack.PostgresServer) -> None:
    server = fresh_server
    server.start()
    with psycopg2.connect(server.dsn()) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (v numeric); INSERT INTO kept VALUES (1983.55000000)")
    # what a stack started by the earlier stack.py looks like: role password `marketflow`, no token file
    server.psql_admin(f"ALTER ROLE {stack.DB_USER} PASSWORD 'marketflow'")
    (server.root / f"{stack.DB_USER}.password").unlink()
    server.stop()

    server.start()
    token = server.password
    assert token != "marketflow" and _can_login(server, token) and not _can_login(server, "marketflow")
    with psycopg2.connect(server.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT v::text FROM kept")
        assert cur.fetchall() == [("1983.55000000",)]
    server.stop()
    server.start()  # a plain restart keeps the token
    assert server.password == token and _can_login(server, token)
