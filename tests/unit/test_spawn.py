"""bus/spawn.py: one way to start a process and wait until it is ready, saying why not."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from bus.embedded import free_port, wait_port
from bus.spawn import NotReady, describe_exit, spawn, wait_ready
from tests.waiting import wait_for


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_process_killed_before_it_is_ready_says_the_signal_and_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    proc = spawn(python("import os, signal; print('starting up', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"),
                 log=log)
    with pytest.raises(NotReady) as caught:
        wait_ready(proc, "child", lambda: (False, "not yet"), timeout=30, log=log)
    assert caught.value.returncode == -signal.SIGSEGV
    assert str(caught.value) == "child was killed by SIGSEGV; log: starting up"


def test_one_that_exits_says_its_status_and_a_shells_signal_is_named() -> None:
    proc = spawn(python("raise SystemExit(3)"))
    with pytest.raises(NotReady, match="^child exited with status 3$"):
        wait_ready(proc, "child", lambda: (False, "not yet"), timeout=30)
    assert describe_exit(128 + signal.SIGILL) == "was killed by SIGILL"
    assert describe_exit(-99) == "was killed by signal 99"


def test_ready_when_its_check_passes_else_the_last_answer_after_the_timeout(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn(python(f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); time.sleep(60)"))
    try:
        wait_port(proc, "listener", port, timeout=30)
        with pytest.raises(NotReady, match="^listener never$") as caught:
            wait_ready(proc, "listener", lambda: (False, "never"), timeout=0.1)
        assert caught.value.returncode is None
    finally:
        proc.kill()
        proc.wait()


def test_a_child_started_to_die_with_its_parent_does(tmp_path: Path) -> None:
    """Killing the parent (SIGKILL: no handler runs) leaves no child behind."""
    pid_file = tmp_path / "child.pid"
    parent = spawn(python(
        "import sys, time; from bus.spawn import spawn; "
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(60)'], die_with_parent=True); "
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"),
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the child's pid")
    child = int(pid_file.read_text())
    parent.kill()
    parent.wait()

    def gone() -> bool:
        try:
            return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"  # ended, not yet reaped
        except OSError:
            return True

    wait_for(gone, 30, "the child to end with its parent")
