"""Unit tests: each test stops every actor it starts."""

from __future__ import annotations

from collections.abc import Iterator

import pykka
import pytest


@pytest.fixture(autouse=True)
def _no_leaked_actors() -> Iterator[None]:
    """After each test, no actor it started is still running: a leaked actor is stopped and
    the test fails naming it (module-scoped systems are set up before this and stay)."""
    before = {ref.actor_urn for ref in pykka.ActorRegistry.get_all()}
    yield
    leaked = [ref for ref in pykka.ActorRegistry.get_all() if ref.actor_urn not in before and ref.is_alive()]
    for ref in leaked:
        ref.stop(block=True, timeout=5)
    if leaked:
        pytest.fail("the test left actors running: " + ", ".join(sorted(ref.actor_class.__name__ for ref in leaked)))
