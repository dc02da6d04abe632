"""The marts of a case: built by real dbt from the case's staging, then counted and checksummed.

``MartBuilder`` keeps one dbt process (faults/dbt_server.py, in dbt's own virtualenv) that parses
the project once; each case then costs one ``dbt run`` of ohlcv_1m and its rollups against the
case's warehouse database. A parsed dbt manifest names its database in every relation, so a builder
serves one database name: the suite's lanes (harness.Lane) reuse theirs, one case at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from faults import REPO
from scripts.warehouse_checks import table_checksum

log = logging.getLogger("faults")

DBT_PROJECT = REPO / "dbt"
DBT_PYTHON = Path(os.environ.get("MARKETFLOW_DBT_PYTHON", str(REPO / ".local" / "dbt-venv" / "bin" / "python")))
SERVER = Path(__file__).resolve().with_name("dbt_server.py")
# dbt's parse state per database name, kept between suite runs (see MartBuilder).
PARSE_CACHE = REPO / ".local" / "faults" / "dbt-parse"
PARTIAL_PARSE = "partial_parse.msgpack"
PARSE_HOST, PARSE_PORT = "faults-dbt-parse.invalid", 5432  # never connected to: only the parse sees it

# The candle marts compared with the fault-free run: 1m and every rollup (each built from the next
# finer one), with whatever they are built from (the + prefix).
MARTS = ("ohlcv_1m", "ohlcv_5m", "ohlcv_15m", "ohlcv_1h", "ohlcv_1d", "ohlcv_1w")
MART_KEY = ("exchange", "symbol", "open_time")
# When a row was written differs legitimately between runs (ohlcv_1m's ingested_at, the rollups'
# last_ingested_at); every other column is the candle or the bucket itself. (ohlcv_1m carries no
# raw_payload_id / run_id since storage stage 3: the view ohlcv_1m_lineage reads them from staging.)
MART_LINEAGE = ("ingested_at", "last_ingested_at")
# Rollup widths in minutes; buckets are UTC with weeks starting Monday (date_bin from 2000-01-03).
ROLLUP_MINUTES = {"ohlcv_5m": 5, "ohlcv_15m": 15, "ohlcv_1h": 60, "ohlcv_1d": 1440, "ohlcv_1w": 10080}
BUCKET_ORIGIN_MS = 946_857_600_000  # 2000-01-03T00:00:00Z, a Monday

MartState = dict[str, tuple[int, str]]  # mart -> (rows, checksum without lineage)


class DbtFailed(RuntimeError):
    """dbt could not build the marts (the message carries dbt's own words; the log has the rest)."""


def profile_env(host: str, port: int | str, user: str, password: str, database: str) -> dict[str, str]:
    """What dbt/profiles.yml reads."""
    return {"MARKETFLOW_PG_HOST": host, "MARKETFLOW_PG_PORT": str(port), "MARKETFLOW_PG_USER": user,
            "MARKETFLOW_PG_PASSWORD": password, "MARKETFLOW_PG_DATABASE": database}


class MartBuilder:
    """A dbt process that builds the candle marts in one database, on request (``build(dsn)``). Start
    it early (``start()``): its start-up and parse (seconds of CPU) need no server, so they overlap
    with whatever runs before the first build.

    dbt parses against a profile that does not change between suite runs (PARSE_HOST, the same
    database name), so its partial parse can start from the partial_parse.msgpack the previous run
    left in PARSE_CACHE; each run connects to the server its request names."""

    def __init__(self, database: str, workdir: Path, user: str = "marketflow", timeout: float = 300.0) -> None:
        if not DBT_PYTHON.exists():
            raise FileNotFoundError(f"dbt's interpreter {DBT_PYTHON} is missing; run `make install` (or set "
                                    "MARKETFLOW_DBT_PYTHON to the python of a virtualenv with dbt-postgres)")
        self.database = database
        self.parse_env = profile_env(PARSE_HOST, PARSE_PORT, user, "", database)
        self.workdir, self.timeout = workdir, timeout
        self.log_path = workdir / "dbt-server.log"
        self.cache = PARSE_CACHE / self.database / PARTIAL_PARSE
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] | None = None
        self.timings: list[float] = []

    def start(self) -> None:
        if self.proc is not None:
            return
        target = self.workdir / "target"
        target.mkdir(parents=True, exist_ok=True)
        if self.cache.exists():
            shutil.copyfile(self.cache, target / PARTIAL_PARSE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETFLOW_PG_", "DBT_", "PG"))}
        env.update(DBT_PROFILES_DIR=str(DBT_PROJECT), DBT_PROJECT_DIR=str(DBT_PROJECT), DBT_TARGET_PATH=str(target),
                   DBT_LOG_PATH=str(self.workdir / "logs"), DBT_SEND_ANONYMOUS_USAGE_STATS="false",
                   DBT_USE_COLORS="false", DBT_VERSION_CHECK="false")
        with self.log_path.open("w") as log_file:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([str(DBT_PYTHON), str(SERVER)], cwd=DBT_PROJECT, env=env,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True)
        self._send({"parse_env": self.parse_env})

    def _send(self, request: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if not ready:  # stuck: its late answer would be taken for the next request's
                self.proc.kill()
            state = f"did not answer within {timeout:.0f} s" if not ready else f"exited ({self.proc.poll()})"
            raise DbtFailed(f"the dbt process {state}; see {self.log_path}:\n{self._tail()}")
        return json.loads(line)

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        self.start()
        if self.ready is None:
            self.ready = self._answer(self.timeout)
            if not self.ready.get("ok"):
                raise DbtFailed(f"{self.ready.get('error')}; see {self.log_path}:\n{self._tail()}")
            log.info("dbt parsed the project for %s in %.1f s", self.database, self.ready["seconds"])
            parsed = self.workdir / "target" / PARTIAL_PARSE
            if parsed.exists():  # for the next suite run; replaced whole, so a concurrent run reads one or the other
                self.cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.cache.with_name(f"{PARTIAL_PARSE}.{os.getpid()}.tmp")
                shutil.copyfile(parsed, tmp)
                os.replace(tmp, self.cache)

    def build(self, dsn: str) -> list[list[str]]:
        """``dbt run`` of MARTS and what they are built from in ``dsn`` (the builder's database);
        returns dbt's [node, status, message] per model."""
        url = urlparse(dsn)
        if url.path.lstrip("/") != self.database:
            raise ValueError(f"this dbt process parsed the project for {self.database!r}, not {url.path[1:]!r}")
        self.wait_ready()
        run_env = profile_env(url.hostname or "localhost", url.port or 5432, unquote(url.username or ""),
                              unquote(url.password or ""), self.database)
        # --no-write-json: the suite reads dbt's answer, not run_results.json / manifest.json
        self._send({"args": ["run", "--no-write-json", "--select", " ".join(f"+{m}" for m in MARTS)], "env": run_env})
        answer = self._answer(self.timeout)
        self.timings.append(answer["seconds"])
        if not answer["ok"]:
            failed = [f"{name}: {status}: {message}" for name, status, message in answer["nodes"]
                      if status not in ("success", "RunStatus.Success")]
            raise DbtFailed("dbt run of the marts failed: " + ("; ".join(failed) or str(answer.get("error")))
                            + f" (log: {self.log_path})")
        return answer["nodes"]

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the server ends at the end of its input
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def mart_state(conn) -> MartState:
    """(rows, checksum) of every mart in MARTS, lineage excluded: equal means the same candles and buckets."""
    state = {m: table_checksum(conn, f"marts.{m}", MART_KEY, exclude=MART_LINEAGE) for m in MARTS}
    conn.commit()
    return state


def expected_mart_rows(candle_keys: Mapping[tuple[str, str], list[int]]) -> dict[str, int]:
    """Rows each mart must hold, counted here from the 1m candles' open times (ms) per (exchange,
    symbol): ohlcv_1m one per candle, a rollup one per UTC bucket holding at least one candle."""
    rows = {"ohlcv_1m": sum(len(times) for times in candle_keys.values())}
    for mart, minutes in ROLLUP_MINUTES.items():
        width = minutes * 60_000
        rows[mart] = sum(len({t - (t - BUCKET_ORIGIN_MS) % width for t in times}) for times in candle_keys.values())
    return rows


def differing_marts(state: MartState, baseline: MartState) -> list[str]:
    """Human-readable differences, one per mart that is not as in the fault-free run."""
    out = []
    for mart in MARTS:
        got, want = state.get(mart), baseline.get(mart)
        if got != want:
            rows = f"{got[0] if got else 'no'} rows vs {want[0] if want else 'no'}"
            out.append(f"{mart} ({rows}{', other values' if got and want and got[0] == want[0] else ''})")
    return out
