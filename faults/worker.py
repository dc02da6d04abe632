"""A task process of the fault suite.

Cases that need a real second process (a worker SIGKILLed mid-load, two runs at once) fork one that
runs ``run_spec`` (faults.harness.spawn_worker); ``python -m faults.worker spec.json`` reruns a
spec the suite wrote by hand. It runs the same pipeline code the in-process runner does and writes
its outcome to ``spec["result_path"]`` as JSON. Modes:

  task  one try of one exchange's task (``exchange``, ``try_number``, ``app_name``)
  dag   a whole DagRun (every exchange's task, with retries), optionally after a start barrier
        (``ready_path`` written, then wait for ``go_path``) and followed by working through the
        queued gap repairs of every exchange as the hourly DAG's gap_repairs tasks do (``repair_gaps``)
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

from faults.harness import DAG_ID, CaseEnv, DagRun, fresh_task_process
from marketflow.config import load_config
from marketflow.pipeline import Attempt, run_gap_repairs
from marketflow.raw_store import RawStore


def env_from(spec: dict[str, Any]) -> CaseEnv:
    return CaseEnv(spec["slug"], spec["database"], spec["dsn"], spec["mongo_uri"], Path(spec["config_path"]),
                   load_config(spec["config_path"]), spec.get("tries"), spec["mongo_db"])


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    env = env_from(spec)
    run = DagRun(env, spec["run_id"])
    exchange, n = spec["exchange"], spec["try_number"]
    run.app_names[(exchange, n)] = spec["app_name"]
    fresh_task_process()
    return {"result": run.try_task(exchange, n)}


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
    run = DagRun(env, spec["run_id"], app_name=spec.get("app_name"))
    barrier(spec)
    out: dict[str, Any] = {"started_at": time.time()}
    error = None
    try:
        run.run()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    out.update(error=error, records=[asdict(r) for r in run.records], results=run.results)
    if spec.get("repair_gaps"):
        out["repairs"] = repair_gaps(env, spec["run_id"])
    out["finished_at"] = time.time()
    return out


def repair_gaps(env: CaseEnv, run_id: str) -> dict[str, dict[str, int]]:
    """What the hourly DAG's gap_repairs tasks do: per exchange, work through its queued windows."""
    out = {}
    client = env.mongo_client()
    try:
        for exchange in dict.fromkeys(m.exchange for m in env.config.markets()):
            fresh_task_process()
            out[exchange] = run_gap_repairs(env.config, exchange, RawStore(client[env.mongo_db]),
                                            lambda: env.pipeline_connect("marketflow"),
                                            Attempt(DAG_ID, run_id, f"gap_repairs.repair_{exchange}", -1, 1),
                                            threads=env.config.exchange(exchange).pool_slots, budget_seconds=120)
    finally:
        client.close()
    return out


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
    result = {"task": run_task, "dag": run_dag}[spec["mode"]](spec)
    Path(spec["result_path"]).write_text(json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    run_spec({**spec, "log_path": None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
