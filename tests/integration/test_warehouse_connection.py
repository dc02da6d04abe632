"""The one warehouse connection path (connections.warehouse_conninfo) through the Airflow connection,
with a password that breaks naive DSN building, against the real test Postgres (scram over TCP, so
a password that arrives altered is refused)."""

from __future__ import annotations

import json
from urllib.parse import quote

import psycopg2
import pytest
from psycopg2 import sql

from marketflow.config import Timeouts
from marketflow.connections import warehouse_connection

ROLE = "mf_odd_password"
PASSWORD = "p@ss:w/rd%41' x\"\\"  # every character that has a meaning in a URI or a conninfo string


@pytest.fixture
def odd_role(pg_server, pg_conn, warehouse_dsn: str):
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    pg_conn.commit()
    database = warehouse_dsn.rsplit("/", 1)[1]  # CONNECT is granted to PUBLIC
    yield database
    with pg_conn.cursor() as cur:
        cur.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))
    pg_conn.commit()


def _who(conn) -> tuple[str, str, str, str]:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, current_setting('application_name'), current_setting('lock_timeout'),"
                    " current_setting('statement_timeout')")
        return cur.fetchone()


def test_password_with_uri_characters_through_the_airflow_uri(pg_server, odd_role: str, monkeypatch) -> None:
    # The URI form of an Airflow connection, percent-encoded as Airflow documents (Connection.get_uri does the same)
    uri = f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@{pg_server.host}:{pg_server.port}/{odd_role}"
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", uri)
    conn = warehouse_connection(timeouts=Timeouts(db_lock=7, db_statement=90))
    try:
        assert _who(conn) == (ROLE, "marketflow", "7s", "90s")
    finally:
        conn.close()


def test_password_through_the_json_connection_form(pg_server, odd_role: str, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES", json.dumps({
        "conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": ROLE,
        "password": PASSWORD, "schema": odd_role}))
    conn = warehouse_connection()
    try:
        assert _who(conn)[0] == ROLE
    finally:
        conn.close()


def test_the_server_checks_the_password(pg_server, odd_role: str, monkeypatch) -> None:
    """Without this, the tests above would also pass against a server that trusts every login."""
    wrong = PASSWORD.replace("%41", "A")  # what a path that percent-decodes twice would send
    monkeypatch.setenv("AIRFLOW_CONN_MARKETFLOW_POSTGRES",
                       f"postgresql://{ROLE}:{quote(wrong, safe='')}@{pg_server.host}:{pg_server.port}/{odd_role}")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        warehouse_connection()
