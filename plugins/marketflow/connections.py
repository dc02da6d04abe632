"""Database handles from Airflow connections, opened inside tasks only (never at parse time).

Locally the connections come from the environment (AIRFLOW_CONN_MARKETFLOW_POSTGRES,
AIRFLOW_CONN_MARKETFLOW_MONGO), in production from Airflow's connection store.
"""

from __future__ import annotations

from pymongo.database import Database

POSTGRES_CONN_ID = "marketflow_postgres"
MONGO_CONN_ID = "marketflow_mongo"
DEFAULT_MONGO_DATABASE = "marketflow"


def warehouse_connection(conn_id: str = POSTGRES_CONN_ID):
    """A psycopg2 connection to the warehouse described by the Airflow connection ``conn_id``.

    The hook resolves the connection (env, secrets backend, metadata DB); psycopg2 is opened
    explicitly because PostgresHook.get_conn() returns psycopg 3 when SQLAlchemy 2 is installed,
    and the loader's COPY path is written for psycopg2.
    """
    import psycopg2
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook.get_connection(conn_id)
    extra = conn.extra_dejson
    params = {k: extra[k] for k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout") if k in extra}
    return psycopg2.connect(host=conn.host, port=conn.port or 5432, user=conn.login, password=conn.password,
                            dbname=conn.schema, application_name="marketflow", **params)


def raw_database(conn_id: str = MONGO_CONN_ID) -> Database:
    from airflow.providers.mongo.hooks.mongo import MongoHook

    hook = MongoHook(mongo_conn_id=conn_id)
    return hook.get_conn()[hook.connection.schema or DEFAULT_MONGO_DATABASE]
