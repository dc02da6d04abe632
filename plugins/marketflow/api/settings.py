"""The market-data API's settings, from the environment (MARKETFLOW_API_*)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

API_CONN_ID = "marketflow_api"


class ApiSettings(BaseModel):
    # libpq connection string of a LOGIN role in marketflow_api (analyst: SELECT on marts only); none: the
    # Airflow connection `marketflow_api` (AIRFLOW_CONN_MARKETFLOW_API), resolved at the first request.
    database: str | None = None
    # MongoDB URI for /health's raw-store check; none: not checked.
    mongo_uri: str | None = None
    # Every statement of a request is cut off after this (a runaway range scan never holds a connection).
    statement_timeout_ms: int = Field(default=3000, gt=0)
    # Rows one response may hold; /ohlcv and /indicators page beyond it with a cursor.
    row_cap: int = Field(default=10_000, gt=0)
    # Closed JSON pages of /ohlcv and /indicators kept per API process (api/pages.py); 0: none.
    page_cache_mb: int = Field(default=64, ge=0)
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=10, ge=1)
    # A live market whose latest price is older than this fails /health's freshness check.
    max_staleness_seconds: int = Field(default=300, gt=0)
    # token: bearer tokens of ops.api_tokens (standalone); airflow: Airflow's own login (as a plugin).
    auth: Literal["token", "airflow"] = "token"

    @classmethod
    def from_env(cls, **overrides: object) -> ApiSettings:
        """MARKETFLOW_API_DATABASE (else the warehouse connection's conninfo, as the pipeline reaches
        it), MARKETFLOW_API_MONGO_URI, MARKETFLOW_API_STATEMENT_TIMEOUT_MS, MARKETFLOW_API_ROW_CAP,
        MARKETFLOW_API_POOL_MIN / _MAX, MARKETFLOW_API_PAGE_CACHE_MB, MARKETFLOW_API_MAX_STALENESS_SECONDS."""
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = os.environ.get(f"MARKETFLOW_API_{name.upper()}")
            if raw is not None:
                values[name] = raw
        values.update(overrides)
        return cls.model_validate(values)

    def conninfo(self) -> str:
        if self.database:
            return self.database
        from marketflow.connections import warehouse_conninfo

        try:
            return warehouse_conninfo(API_CONN_ID)
        except Exception as exc:
            raise RuntimeError(f"the API has no database: MARKETFLOW_API_DATABASE is not set and the Airflow "
                               f"connection {API_CONN_ID!r} cannot be read ({exc}). Fix: set either to a login role "
                               f"in marketflow_api, e.g. postgresql://api:...@db:5432/marketflow") from exc
