"""The config builder over the in-memory bus and config cache."""

from __future__ import annotations

import json

import pytest

from actors.configs import ConfigActor
from actors.redis_watch import CheckRedis
from bus.config_cache import GLOBAL_KEY, cache_key, decode_entry, verify
from bus.testing import ActorHarness
from messages.errors import NotFound
from messages.subjects import CONFIG_MAC_BUCKET, config_changed
from tests.unit.actors.conftest import KEY, ORG, OTHER_KEY, PROJECT, given_project


def entry(h: ActorHarness, public_key: str) -> tuple[str, dict[str, object]]:
    name = cache_key(public_key)
    value = h.cache.values[name]
    assert verify(h.runtime.call(h.bus.writer_key(CONFIG_MAC_BUCKET)), name, value)
    cached = decode_entry(value)
    return cached.rev, json.loads(cached.body)


def test_materializes_every_key_and_the_global_config_at_start(harness: ActorHarness) -> None:
    given_project(harness)
    harness.start(ConfigActor, harness.cache)
    rev, doc = entry(harness, KEY)
    assert rev and doc["projectId"] == 10 and not doc.get("disabled")
    assert GLOBAL_KEY in harness.cache.values


def test_a_change_rebuilds_the_config_and_announces_its_revision(harness: ActorHarness) -> None:
    given_project(harness)
    harness.start(ConfigActor, harness.cache)
    before, _ = entry(harness, KEY)
    harness.given("ProjectOptionSet", ORG, project=PROJECT, key="sentry:origins", value=["example.com"])
    answer = harness.ask("config.get", {"public_keys": [KEY]})  # served once the change is folded
    after, doc = entry(harness, KEY)
    assert after != before and answer["entries"][KEY][0] == after
    assert doc["config"]["allowedDomains"] == ["example.com"]  # type: ignore[index]
    announced = [json.loads(data) for _, data in harness.published(config_changed(KEY))]
    change = [a for a in announced if a["rev"] == after]
    assert change and change[-1]["publicKey"] == KEY and change[-1]["projectId"] == 10
    assert change[-1]["org"] and change[-1]["project"] and isinstance(change[-1]["ts"], float)


def test_an_unknown_key_is_answered_disabled_and_never_stored(harness: ActorHarness) -> None:
    given_project(harness)
    harness.start(ConfigActor, harness.cache)
    answer = harness.ask("config.build", {"public_keys": [OTHER_KEY]})
    assert json.loads(answer["entries"][OTHER_KEY][2]) == {"disabled": True}
    assert cache_key(OTHER_KEY) not in harness.cache.values


def test_a_disabled_key_is_stored_disabled(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("KeyDisabled", ORG, public_key=KEY)
    harness.start(ConfigActor, harness.cache)
    rev, doc = entry(harness, KEY)
    assert rev == "" and doc == {"disabled": True}


def test_the_cache_is_refilled_when_it_comes_back_empty(harness: ActorHarness) -> None:
    given_project(harness)
    ref = harness.start(ConfigActor, harness.cache)
    harness.cache.down = True
    harness.given("ProjectOptionSet", ORG, project=PROJECT, key="sentry:origins", value=["a.example"])
    harness.ask("config.get", {"public_keys": [KEY]})  # folded; the write failed
    harness.cache.down = False
    harness.cache.restart()
    ref.ask(CheckRedis())
    _, doc = entry(harness, KEY)
    assert doc["config"]["allowedDomains"] == ["a.example"]  # type: ignore[index]


def test_history_lists_the_events_that_shaped_a_key(harness: ActorHarness) -> None:
    given_project(harness)
    harness.given("ProjectOptionSet", ORG, project=PROJECT, key="sentry:origins", value=["example.com"])
    harness.start(ConfigActor, None)
    history = harness.ask("config.history", {"public_key": KEY})
    assert [e["type"] for e in history["events"]] == ["OrgCreated", "ProjectCreated", "KeyCreated",
                                                       "ProjectOptionSet"]
    with pytest.raises(NotFound):
        harness.ask("config.history", {"public_key": OTHER_KEY})
