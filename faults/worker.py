"""A task process of the fault suite.

Cases that need a real second process (a worker SIGKILLed mid-load, two runs at once) fork one that
runs ``run_spec`` (faults.harness.spawn_worker); ``python -m faults.worker spec.json`` reruns a
spec the suite wrote by hand. It runs the same pipeline code the in-process runner does and writes
its outcome to ``spec["result_path"]`` as JSON. Modes:

  load  one try of one market's load task (``extracted``, ``try_number``, ``app_name``)
  dag   a whole DagRun (every market, extract then load, with retries), optionally after a start
        barrier (``ready_path`` written, then wait for ``go_path``) and followed by claiming and
        running the queued ops.backfill_tasks of every exchange (``claim_backfill``)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faults  # noqa: F401  (puts plugins/ and scripts/ on sys.path)
from faults.harness import DAG_ID, CaseEnv, DagRun
from marketflow.config import load_config
from marketflow.ops import claim_tasks
from marketflow.pipeline import Attempt, repair_gap
from marketflow.raw_store import RawStore


def env_from(spec: dict[str, Any]) -> CaseEnv:
    return CaseEnv(spec["slug"], spec["database"], spec["dsn"], spec["mongo_uri"], Path(spec["config_path"]),
                   load_config(spec["config_path"]), spec.get("tries") or 3)


def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    env = env_from(spec)
    run = DagRun(env, spec["run_id"])
    exchange, n = spec["extracted"]["exchange"], spec["try_number"]
    run.app_names[("load", exchange, n)] = spec["app_name"]
    return {"loaded": run.load_try(exchange, spec["extracted"], n)}


def barrier(spec: dict[str, Any]) -> None:
    if not spec.get("go_path"):
        return
    Path(spec["ready_path"]).write_text("ready")
    deadline = time.monotonic() + 120
    while not Path(spec["go_path"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go signal within 120 s")
        time.sleep(0.01)


def run_dag(spec: dict[str, Any]) -> dict[str, Any]:
    env = env_from(spec)
    run = DagRun(env, spec["run_id"], load_app_name=spec.get("app_name"))
    barrier(spec)
    out: dict[str, Any] = {"started_at": time.time()}
    error = None
    try:
        run.run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    out.update(error=error, records=[asdict(r) for r in run.records], loaded=run.loaded,
               extracted={ex: {k: v for k, v in e.items() if k != "payload_ids"} for ex, e in run.extracted.items()})
    if spec.get("claim_backfill"):
        out["claimed"] = claim_and_repair(env, spec["run_id"])
    out["finished_at"] = time.time()
    return out


def claim_and_repair(env: CaseEnv, run_id: str) -> list[dict[str, Any]]:
    """What the gap_repairs group does: claim an exchange's queued windows, re-fetch each one."""
    claimed = []
    for market in env.config.markets():
        conn = env.connect("marketflow")
        client = env.mongo_client()
        try:
            for task in claim_tasks(conn, market.exchange, 10, run_id):
                state = repair_gap(env.config, task, RawStore(client[env.mongo_db]), conn,
                                   Attempt(DAG_ID, run_id, f"repair_{market.exchange}", task.task_id, 1))
                claimed.append({"task_id": task.task_id, "exchange": task.exchange, "state": state})
        finally:
            conn.close()
            client.close()
    return claimed


def run_spec(spec: dict[str, Any]) -> None:
    """The worker's body (in a forked child, or by hand through main): output to ``log_path``, the
    outcome as JSON to ``result_path``."""
    if spec.get("log_path"):
        fd = os.open(spec["log_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(level=logging.INFO, force=True, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    result = {"load": run_load, "dag": run_dag}[spec["mode"]](spec)
    Path(spec["result_path"]).write_text(json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    run_spec({**spec, "log_path": None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
