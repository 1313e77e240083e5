"""Starting a child process and waiting until it is ready: the one way relayctl does it
(the embedded nats-server and redis-server, bus/embedded.py; llama-server under the local
model's `serve`, bus/local_model.py; every service `relayctl up` runs, cli/services.py).

`spawn` starts it: its output appended to a log file, discarded or inherited; detached
into its own session (it outlives us: `up --detach`) or dying with us (PR_SET_PDEATHSIG:
killing the parent leaves no child behind). `wait_ready` then checks it until it is ready,
and says why when it is not: when the process ended first, how it ended - the status it
exited with or the signal that killed it (`describe_exit`) - with the end of its log.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Literal

DISCARD: Literal["discard"] = "discard"
INHERIT: Literal["inherit"] = "inherit"

Check = Callable[[], "tuple[bool, str]"]


class NotReady(RuntimeError):
    """A process that did not become ready: `detail` says why; `returncode` is how it ended
    when it ended first (None: it runs, but never passed its check in time)."""

    def __init__(self, name: str, detail: str, returncode: int | None = None) -> None:
        super().__init__(f"{name} {detail}")
        self.name, self.detail, self.returncode = name, detail, returncode


def spawn(cmd: list[str], *, log: Path | Literal["discard", "inherit"] = DISCARD, detach: bool = False,
          die_with_parent: bool = False, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` with no stdin; stdout and stderr appended to `log` (a path), discarded or
    inherited; in a session of its own with `detach`; sent SIGTERM when this process dies
    with `die_with_parent`; with `env` as its whole environment (default: ours)."""
    opened = open(log, "ab") if isinstance(log, Path) else None  # noqa: SIM115 - the child keeps its own
    out: IO[bytes] | int | None = opened or (subprocess.DEVNULL if log == DISCARD else None)
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out is not None else None,
                                stdin=subprocess.DEVNULL, start_new_session=detach,
                                preexec_fn=_die_with_parent if die_with_parent else None,
                                env=dict(env) if env is not None else None)
    finally:
        if opened is not None:
            opened.close()


def exit_signal(returncode: int) -> int | None:
    """The signal that ended a process, from Popen's returncode (negative: the signal) or a
    shell's (128 + the signal); None when it exited."""
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    return signum or None


def describe_exit(returncode: int) -> str:
    """How a process ended, from Popen's returncode (negative: the signal that killed it)
    or a shell's (128 + the signal)."""
    signum = exit_signal(returncode)
    if signum is None:
        return f"exited with status {returncode}"
    try:
        return f"was killed by {signal.Signals(signum).name}"
    except ValueError:
        return f"was killed by signal {signum}"


def log_tail(path: Path | None, lines: int = 5) -> str:
    """The last lines of a log, on one line ("" when there is none)."""
    if path is None:
        return ""
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], name: str, check: Check, *, timeout: float,
               interval: float = 0.05, explain: Callable[[int], str] | None = None,
               log: Path | None = None) -> None:
    """Run `check` (ready?, what it saw) every `interval` seconds until it passes, or raise
    `NotReady`: after `timeout` seconds with the last thing it saw, at once when `proc` ends
    with how it ended (`explain(returncode)`, default `describe_exit`) and the end of `log`."""
    deadline = time.monotonic() + timeout
    last = "not checked"
    while time.monotonic() < deadline:
        returncode = proc.poll()
        if returncode is not None:
            detail = (explain or describe_exit)(returncode)
            tail = log_tail(log)
            raise NotReady(name, f"{detail}; log: {tail}" if tail else detail, returncode)
        ok, last = check()
        if ok:
            return
        time.sleep(interval)
    raise NotReady(name, last)


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own SIGTERM handling has to reach the child
