"""What a foreground `up` does while it runs: a service it started that dies is started
again, with a growing delay while it keeps dying, and `up` says so on stderr."""

from __future__ import annotations

import subprocess
import time

import click

from bus import local_model
from bus.spawn import describe_exit
from cli.services import Orchestrator


class Supervisor:
    """A service this `up` started that dies is started again, after 1 s, then 2, 4 ... up
    to 60 s while it keeps dying. One stopped on purpose by another command (`down`) is no
    longer watched; one restarted by another `up` is watched under its new pid."""

    MAX_DELAY = 60.0
    # Running this long counts as recovered: the next death waits 1 s again.
    STABLE = 60.0

    def __init__(self, orch: Orchestrator, names: list[str], bind: str, env: dict[str, str]) -> None:
        self.orch, self.names, self.bind, self.env = orch, names, bind, env
        self.failures: dict[str, int] = {}
        self.due: dict[str, float] = {}
        self.restarted: dict[str, float] = {}

    def check(self) -> bool:
        """One round; False once nothing is left to supervise (`down` elsewhere stopped it all)."""
        now = time.monotonic()
        on_disk = self.orch.ctx.load_state().get("services", {})
        for name in list(self.names):
            rec, theirs = self.orch.record(name), on_disk.get(name) or {}
            if theirs.get("pid") != rec.get("pid") and name not in self.due:
                if not theirs.get("pid"):
                    # Stopped on purpose by another command (`down`): not ours to bring back.
                    self.names.remove(name)
                    click.echo(f"relayctl: `{name}` was stopped by another command; no longer watching it",
                               err=True)
                    continue
                self.orch.state["services"][name] = rec = theirs  # restarted by another `up`
            if self.orch.running(name):
                if now - self.restarted.get(name, now) > self.STABLE:
                    self.failures.pop(name, None)
                continue
            if name not in self.due:
                count = self.failures[name] = self.failures.get(name, 0) + 1
                delay = min(self.MAX_DELAY, 2.0 ** (count - 1))
                self.due[name] = now + delay
                click.echo(f"relayctl: `{name}` (pid {rec.get('pid')}) {self._why(name)}; "
                           f"starting it again in {delay:.0f} s", err=True)
            elif now >= self.due[name]:
                del self.due[name]
                self.orch.start_service(name, self.bind, self.env)
                self.restarted[name] = time.monotonic()
                # Only this record changes: what other commands wrote meanwhile stays.
                latest = self.orch.ctx.load_state() or self.orch.state
                latest.setdefault("services", {})[name] = self.orch.record(name)
                self.orch.state = latest
                self.orch.save()
                click.echo(f"relayctl: started `{name}` again (pid {self.orch.record(name)['pid']}, "
                           f"restart {self.failures[name]})", err=True)
        return bool(self.names)

    def _why(self, name: str) -> str:
        proc = self.orch.procs.get(name)
        returncode = None
        if proc is not None:
            # Our child, reaped here. One just killed may look gone (its command line is empty
            # while it exits) before it has ended: give it a moment to, and say how it did.
            try:
                returncode = proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                returncode = None
        if name == "llm":
            reason = local_model.failure_reason(self.orch.llm_failure_file())
            if reason:
                return f"stopped: {reason}"
        return "is not running" if returncode is None else describe_exit(returncode)


