"""`stack.py down` stops every process of a managed service's session, not only its process group.

Airflow's task processes (`airflow worker -- <id>`) put themselves in process groups of their own,
in the session of `airflow standalone`; a group kill of standalone left a running gap-repair task
behind, re-parented to init. Here real processes do the same: the managed process forks a child
that calls setpgrp() and keeps running (and, in the second case, ignores SIGTERM and starts a
grandchild that leaves the session with setsid()).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from scripts import stack

# argv[1]: file for the helper pids; argv[2]: port to listen on (ManagedProcess.start waits for it);
# argv[3]: "stubborn" = the child ignores SIGTERM and starts a grandchild in a session of its own.
SERVICE = textwrap.dedent(
    """
    import os, signal, socket, sys, time

    pids_file, port, stubborn = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stubborn"
    child = os.fork()
    if child == 0:
        os.setpgrp()  # like an Airflow task process: its own group, the same session
        if stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            grandchild = os.fork()
            if grandchild == 0:
                os.setsid()  # left the session too
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(1)
            with open(pids_file + ".grandchild", "w") as fh:
                fh.write(str(grandchild))
        while True:
            time.sleep(1)
    with open(pids_file, "w") as fh:
        fh.write(str(child))
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen()
    while True:
        time.sleep(1)
    """
)


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (this machine's init does not reap orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_for(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise TimeoutError(f"{path} was not written")


def start_service(tmp_path: Path, name: str, mode: str) -> tuple[stack.ManagedProcess, list[int]]:
    port = stack.free_port()
    pids = tmp_path / f"{name}.helpers"
    proc = stack.ManagedProcess(name, tmp_path / "state" / "run", [sys.executable, "-c", SERVICE, str(pids),
                                                                   str(port), mode], port, ready_timeout=20)
    proc.start()
    helpers = [wait_for(pids)] + ([wait_for(Path(f"{pids}.grandchild"))] if mode == "stubborn" else [])
    leader = proc.pid()
    assert leader is not None and all(alive(p) for p in [leader, *helpers])
    return proc, [leader, *helpers]


def gone_within(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def test_down_stops_a_task_process_in_its_own_group(tmp_path: Path) -> None:
    proc, pids = start_service(tmp_path, "airflow", "plain")  # the run dir and name `down` stops
    try:
        stack.down(stack.Stack(state_dir=tmp_path / "state"))
        assert gone_within(pids, 5) == [], "left running after down"
        assert not proc.pid_file.exists()
    finally:
        _cleanup(pids)


def test_stop_kills_what_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    proc, pids = start_service(tmp_path, "emulator", "stubborn")
    try:
        started = time.monotonic()
        proc.stop(timeout=1.0)
        assert gone_within(pids, 5) == [], "left running after stop"
        assert time.monotonic() - started < 10
    finally:
        _cleanup(pids)


def test_stop_of_a_service_that_is_not_running_is_a_no_op(tmp_path: Path) -> None:
    proc = stack.ManagedProcess("mongodb", tmp_path / "run", [sys.executable, "-c", "pass"], stack.free_port())
    proc.stop(timeout=1.0)
    (tmp_path / "run").mkdir()
    proc.pid_file.write_text("999999999")  # a stale pid file naming no process
    proc.stop(timeout=1.0)
    assert not proc.pid_file.exists()


def _cleanup(pids: list[int]) -> None:
    """Never leave the helpers behind if the code under test did (only the pids this test started)."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _isolated_local(monkeypatch, tmp_path):
    """Stack() must not touch the real .local state: everything it derives goes under tmp_path."""
    monkeypatch.setenv("MARKETFLOW_SCHEDULE_START", "2026-01-01T00:00:00Z")
