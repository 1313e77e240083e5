"""A harness per test: one actor (or a few) over the in-memory bus (bus/testing.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bus.testing import ActorHarness

ORG, PROJECT = "acme", "web"
KEY = "a" * 32
OTHER_KEY = "b" * 32
RELAY = "r" * 43
INTERNAL_RELAY = "i" * 43
STRANGER = "s" * 43


@pytest.fixture
def harness() -> Iterator[ActorHarness]:
    with ActorHarness() as h:
        yield h


def given_project(h: ActorHarness, *, key: str = KEY) -> None:
    """An org `acme` (id 1) with project `web` (id 10) holding one active key."""
    h.given("OrgCreated", ORG, name="Acme", id=1)
    h.given("ProjectCreated", ORG, project=PROJECT, id=10)
    h.given("KeyCreated", ORG, project=PROJECT, public_key=key, numeric_id=100, rate_limit=None)
