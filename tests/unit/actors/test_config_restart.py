"""A config builder restarted over a cache that still holds what it wrote: it serves at
once and writes every config again in the background (issue 15: a million keys take
minutes to write; the gateway serves the cached ones meanwhile)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from actors.base import Resume
from actors.configs import ConfigActor
from bus.config_cache import GLOBAL_KEY, cache_key, decode_entry
from bus.service import Call
from bus.testing import ActorHarness
from messages.subjects import config_changed
from tests.unit.actors.conftest import KEY, ORG, OTHER_KEY, PROJECT, given_project
from tests.waiting import wait_for


def refilled(ref: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while ref.proxy().refilling.get():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the refill did not end"
        time.sleep(0.01)


def restart(harness: ActorHarness, first: object) -> object:
    first.stop()  # type: ignore[attr-defined]
    return harness.start(ConfigActor, harness.cache, serve=False)


def test_a_restart_over_a_filled_cache_writes_every_config_again_in_the_background(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("KeyCreated", ORG, project=PROJECT, public_key=OTHER_KEY, numeric_id=101, rate_limit=None)
    first = harness.start(ConfigActor, harness.cache)
    harness.cache.values[cache_key(OTHER_KEY)] = b"stale"  # whatever happened to it meanwhile
    first.stop()
    harness.given("ProjectOptionSet", ORG, project=PROJECT, key="sentry:origins", value=["while.down"])
    announced = len(harness.published(config_changed("")))
    second = harness.start(ConfigActor, harness.cache, serve=False)
    refilled(second)
    for key in (KEY, OTHER_KEY):
        doc = json.loads(decode_entry(harness.cache.values[cache_key(key)]).body)
        assert doc["config"]["allowedDomains"] == ["while.down"]
    assert GLOBAL_KEY in harness.cache.values
    assert len(harness.published(config_changed(""))) == announced  # a refill changes no revision


def test_a_restart_over_an_empty_cache_has_written_every_config_once_ready(harness: ActorHarness) -> None:
    given_project(harness)
    first = harness.start(ConfigActor, harness.cache)
    harness.cache.restart()  # empty: no global config sealed by this builder
    second = restart(harness, first)
    assert not second.proxy().refilling.get()  # type: ignore[attr-defined]
    assert cache_key(KEY) in harness.cache.values and GLOBAL_KEY in harness.cache.values


def test_a_global_config_sealed_with_another_key_is_no_filled_cache(harness: ActorHarness) -> None:
    given_project(harness)
    first = harness.start(ConfigActor, harness.cache)
    harness.cache.values[GLOBAL_KEY] = b"forged"
    del harness.cache.values[cache_key(KEY)]
    restart(harness, first)
    assert cache_key(KEY) in harness.cache.values  # written before it was ready


def test_past_the_limit_an_empty_cache_is_written_in_the_background(harness: ActorHarness,
                                                                    monkeypatch: object) -> None:
    """With more keys than MATERIALIZE_BEFORE_SERVING a start does not wait for every config
    (at a million that is past the worker's start timeout): it serves, then refills."""
    import actors.configs

    monkeypatch.setattr(actors.configs, "MATERIALIZE_BEFORE_SERVING", 0)  # type: ignore[attr-defined]
    given_project(harness)
    first = harness.start(ConfigActor, harness.cache)
    harness.cache.restart()
    waited: list[str] = []  # what was written before serving (materialize_all blocks the actor)
    monkeypatch.setattr(ConfigActor, "materialize_all", lambda self, reason: waited.append(reason))  # type: ignore[attr-defined]
    second = restart(harness, first)
    refilled(second)
    assert not waited
    assert cache_key(KEY) in harness.cache.values and GLOBAL_KEY in harness.cache.values


def test_commits_queued_behind_a_build_are_folded_first_and_their_keys_written_together(
        harness: ActorHarness, monkeypatch: object) -> None:
    """A builder that falls behind folds the commits in its inbox before it builds again: their
    changed keys wait as keys (not decoded commits) and are written once; a request behind
    them is answered only once they are in the cache."""
    given_project(harness)
    ref = harness.start(ConfigActor, harness.cache)
    writes: list[list[str]] = []
    build = ConfigActor.materialize

    def counted(self: ConfigActor, keys: Any, **kwargs: Any) -> Any:
        keys = list(keys)
        writes.append(keys)
        return build(self, keys, **kwargs)

    monkeypatch.setattr(ConfigActor, "materialize", counted)  # type: ignore[attr-defined]
    busy, go = threading.Event(), threading.Event()
    ref.tell(Resume(lambda: (busy.set(), go.wait(5))))  # the builder is busy meanwhile
    assert busy.wait(5)
    for n in range(5):
        harness.given("ProjectOptionSet", ORG, project=PROJECT, key="sentry:origins", value=[f"o{n}.example"])
    answer = harness.send("config.get", {"public_keys": [KEY]})
    inbox = ref.actor_inbox  # type: ignore[attr-defined]
    wait_for(lambda: any(isinstance(getattr(e, "message", e), Call) for e in list(inbox.queue)),
             what="the request queued behind the commits")
    go.set()
    answer.result(5)
    doc = json.loads(decode_entry(harness.cache.values[cache_key(KEY)]).body)
    assert doc["config"]["allowedDomains"] == ["o4.example"]  # in the cache before the answer
    assert writes == [[KEY]]  # five changes of one key, written once
