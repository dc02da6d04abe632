"""Builds the marts for the fault suite: one dbt process that parses the project once and then runs
``dbt run`` on request, so each case costs its models' run time only, not dbt's start-up (~3.5 s of
imports here) and a parse (~6 s) every time.

Run by faults/marts.py with dbt's own interpreter (``.local/dbt-venv/bin/python``: dbt's pins conflict
with Airflow's), in the dbt project directory. It imports nothing of the suite's. Requests are JSON
lines on stdin; answers one JSON line each on the original stdout (dbt's own console output goes to
stderr, the caller's log file):

1. ``{"parse_env": {...}}``: parse with that environment (what dbt/profiles.yml reads). It can
   stay the same from one suite run to the next (a fixed host and port, never connected to), so
   dbt's partial parse reuses a saved partial_parse.msgpack instead of parsing all over again (2 s
   instead of 7). Answer: ``{"ok": bool, "ready": true, "seconds": float, "error": str|null}``.
2. ``{"args": ["run", "--select", "..."], "env": {...}}``, any number of them: run with the profile
   environment of the real server. It must name the parse's database: the manifest names it in
   every relation. Answer: ``{"ok": bool, "seconds": float, "nodes": [[name, status, message], ...],
   "error": str|null}``.
"""

import json
import os
import sys
import time


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # dbt prints to stdout: keep it out of the answers
    from dbt.cli.main import dbtRunner

    setup = sys.stdin.readline()
    if not setup:
        return 0
    envs = json.loads(setup)
    started = time.monotonic()
    os.environ.update(envs["parse_env"])
    # --no-write-json: no manifest.json to write (the partial parse state is saved all the same)
    parsed = dbtRunner().invoke(["parse", "--quiet", "--no-write-json"])
    if not parsed.success:
        answers.write(json.dumps({"ok": False, "error": f"dbt parse failed: {parsed.exception}"}) + "\n")
        return 1
    runner = dbtRunner(manifest=parsed.result)
    answers.write(json.dumps({"ok": True, "ready": True, "seconds": time.monotonic() - started}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        started = time.monotonic()
        try:
            request = json.loads(line)
            os.environ.update(request.get("env") or {})
            res = runner.invoke(request["args"])
            nodes = [[r.node.name, str(r.status), r.message] for r in getattr(res.result, "results", None) or []]
            answer = {"ok": bool(res.success), "nodes": nodes,
                      "error": None if res.exception is None else f"{type(res.exception).__name__}: {res.exception}"}
        except Exception as exc:  # a request the runner could not even start: say so, keep serving
            answer = {"ok": False, "nodes": [], "error": f"{type(exc).__name__}: {exc}"}
        answer["seconds"] = time.monotonic() - started
        answers.write(json.dumps(answer, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
