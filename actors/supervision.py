"""Supervision for pykka actors, which have none of their own.

A `Supervisor` starts an actor from a factory, watches it, and when it dies restarts it
with exponential backoff. More than `max_restarts` restarts within `window` seconds means
the fault is not transient: the supervisor gives up loudly (logs, marks itself failed and
calls `on_give_up`, which in a worker process exits non-zero so the operator's tooling sees
it). Messages sent while the actor is down are answered through their `fail` hook instead
of vanishing.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka
import structlog

from bus.retry import Backoff

log = structlog.get_logger(__name__)


class Supervisor:
    def __init__(self, name: str, factory: Callable[[], pykka.ActorRef[Any]], *,
                 max_restarts: int = 5, window: float = 60.0, backoff_initial: float = 0.1,
                 backoff_max: float = 5.0, on_give_up: Callable[[str], None] | None = None,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.factory = factory
        self.max_restarts = max_restarts
        self.window = window
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.on_give_up = on_give_up
        self.on_restart = on_restart
        self.ref: pykka.ActorRef[Any] | None = None
        self.restarts: deque[float] = deque()
        self.restart_count = 0
        self.failed = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    def start(self) -> Supervisor:
        self.ref = self.factory()
        self._thread.start()
        return self

    def tell(self, message: Any) -> None:
        ref = self.ref
        try:
            if ref is None or self.failed:
                raise pykka.ActorDeadError(self.name)
            ref.tell(message)
        except pykka.ActorDeadError:
            fail = getattr(message, "fail", None)
            if fail is not None:
                fail(f"{self.name} is restarting")

    @property
    def alive(self) -> bool:
        return self.ref is not None and self.ref.is_alive() and not self.failed

    def _watch(self) -> None:
        backoff = Backoff(self.backoff_initial, 2.0, self.backoff_max)
        while not self._stopping.wait(0.05):
            if self.ref is None or self.ref.is_alive():
                continue
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > self.window:
                self.restarts.popleft()
            if len(self.restarts) >= self.max_restarts:
                self.failed = True
                log.critical("actor.gave_up", actor=self.name, restarts=len(self.restarts),
                             window=self.window)
                if self.on_give_up:
                    self.on_give_up(self.name)
                return
            # The first restart in the window comes soon; each further one waits twice as long.
            delay = backoff.delay(max(0, len(self.restarts) - 1))
            log.error("actor.died", actor=self.name, restart_in=delay)
            if self._stopping.wait(delay):
                return
            self.restarts.append(time.monotonic())
            self.restart_count += 1
            try:
                self.ref = self.factory()
                log.info("actor.restarted", actor=self.name, restarts=self.restart_count)
                if self.on_restart:
                    self.on_restart(self.name)
            except Exception as exc:  # a process boundary: a factory that fails counts as another death
                log.error("actor.restart_failed", actor=self.name, error=str(exc))

    def stop(self) -> None:
        self._stopping.set()
        # Wait out a restart in progress, or it would start an actor nobody ever stops.
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        if self.ref is not None:
            try:
                self.ref.stop(timeout=5)
            except (pykka.ActorDeadError, pykka.Timeout):
                pass
