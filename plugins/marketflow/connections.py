"""Database handles from Airflow connections, opened inside tasks only (never at parse time).

Locally the connections come from the environment (AIRFLOW_CONN_MARKETFLOW_POSTGRES,
AIRFLOW_CONN_MARKETFLOW_MONGO), in production from Airflow's connection store.
"""

from __future__ import annotations

from pymongo.database import Database

from marketflow.config import Timeouts

POSTGRES_CONN_ID = "marketflow_postgres"
MONGO_CONN_ID = "marketflow_mongo"
DEFAULT_MONGO_DATABASE = "marketflow"


def session_options(timeouts: Timeouts | None = None) -> str:
    """libpq ``options`` that bound every wait of a pipeline session: a lock held by someone else
    (lock_timeout), a runaway statement (statement_timeout), and a transaction left open by a worker
    that died (idle_in_transaction_session_timeout). Each ends as a database error, which is
    classified transient and retried, instead of a task that hangs until its execution_timeout."""
    t = timeouts or Timeouts()
    return (f"-c lock_timeout={t.db_lock * 1000} -c statement_timeout={t.db_statement * 1000} "
            f"-c idle_in_transaction_session_timeout={max(t.db_statement, 600) * 1000}")


def warehouse_conninfo(conn_id: str = POSTGRES_CONN_ID, timeouts: Timeouts | None = None) -> str:
    """The libpq connection string of the warehouse, from the Airflow connection ``conn_id`` (an
    AIRFLOW_CONN_* variable, a secrets backend or the metadata DB: Airflow resolves it, its URI form
    percent-decoded), with the session timeouts above. psycopg's ``make_conninfo`` quotes every
    value, so a password with ``@ : / % ' `` or spaces arrives intact. The one way product code
    reaches the warehouse: tasks, callbacks and the ``marketflow`` command alike."""
    from airflow.sdk import BaseHook
    from psycopg.conninfo import make_conninfo

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson
    ssl = {k: extra[k] for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if k in extra}
    # Behind a transaction pooler (extra {"pooler": "transaction"}, e.g. PgBouncer) the libpq `options`
    # startup parameter is refused ("unsupported startup parameter: options") and a session SET would
    # land on whichever server connection runs it: the timeouts are then the pooler's to set on its
    # server connections (connect_query) or the role's (ALTER ROLE ... SET); see README, "PgBouncer".
    pooled = extra.get("pooler") == "transaction"
    options = {} if pooled else {"options": session_options(timeouts)}
    return make_conninfo(host=conn.host, port=conn.port or 5432, user=conn.login, password=conn.password,
                         dbname=conn.schema, application_name="marketflow",
                         connect_timeout=int(extra.get("connect_timeout", 10)), **options, **ssl)


def warehouse_connection(conn_id: str = POSTGRES_CONN_ID, timeouts: Timeouts | None = None):
    """A psycopg2 connection to ``warehouse_conninfo(conn_id, timeouts)`` (``timeouts`` from the
    markets file; defaults otherwise). psycopg2, not the hook's get_conn(): PostgresHook returns
    psycopg 3 when SQLAlchemy 2 is installed, and the loader, rate limiter and ops code use psycopg2."""
    import psycopg2

    return psycopg2.connect(warehouse_conninfo(conn_id, timeouts))


# A MongoDB that does not answer ends a call in seconds, not after pymongo's 30 s server selection,
# and a hung socket does not outlive the task (the connection's extras may set their own values).
MONGO_TIMEOUTS_MS = {"serverSelectionTimeoutMS": 10_000, "connectTimeoutMS": 10_000, "socketTimeoutMS": 120_000}


def raw_database(conn_id: str = MONGO_CONN_ID) -> Database:
    from airflow.providers.mongo.hooks.mongo import MongoHook

    hook = MongoHook(mongo_conn_id=conn_id)
    for key, value in MONGO_TIMEOUTS_MS.items():
        hook.extras.setdefault(key, value)
    return hook.get_conn()[hook.connection.schema or DEFAULT_MONGO_DATABASE]
