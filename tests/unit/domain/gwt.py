"""Given events, when a command (or query), then events and a reply - or an error.

The domain is pure, so its specification reads as a table of cases::

    given().when("org.create", slug="acme", name=None).then(
        [("OrgCreated", "acme", {"name": "acme", "id": 1})], reply={"id": 1, "slug": "acme"})
    given(org_created("acme")).fails("org.create", Conflict, "already exists", slug="acme", name=None)
    given(org_created("acme")).ask("org.option_get", org="acme", key="sentry:event_retention")

Each given event is its own commit (sequence 1, 2, ...). The decider runs with a fixed clock,
numbered keys and tokens and a pool of ids past everything given, so a decision is the same
on every run; `then` folds the decided events and computes the reply as the command actor
does. Events are compared as (type, aggregate id, payload).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest

from domain.decider import Decider
from domain.decisions import Decision, IdDraw, IdPool
from domain.queries import answer_query
from domain.state import DomainState
from messages.errors import RelayctlError
from messages.events import ID_KINDS, DomainEvent

NOW = 1_750_000_000.0  # the clock every decision sees
ACTOR = "tester"
Expected = tuple[str, str, dict[str, Any]]


def key(n: int) -> str:
    """The n-th project key the decider makes (32 hex characters)."""
    return f"{n:032x}"


def token(n: int) -> str:
    return f"token-{n}"


def event(type_: str, aggregate_id: str, **payload: Any) -> DomainEvent:
    return DomainEvent(type_, aggregate_id, payload, actor=ACTOR, ts=NOW)


def shape(events: Iterable[DomainEvent]) -> list[Expected]:
    return [(e.type, e.aggregate_id, e.payload) for e in events]


@dataclass
class Outcome:
    """What one command decided, folded into the state it was decided on."""

    state: DomainState
    decision: Decision
    reply: Any
    decider: Decider

    @property
    def events(self) -> list[Expected]:
        return shape(self.decision.events)

    def then(self, events: list[Expected], reply: Any = ...) -> Outcome:
        assert self.events == events
        if reply is not ...:
            assert self.reply == reply
        return self

    def then_nothing(self, reply: Any = ...) -> Outcome:
        """An already effective change: no events (so no commit), the same reply."""
        return self.then([], reply)


@dataclass
class Given:
    events: list[DomainEvent] = field(default_factory=list)

    def state(self) -> DomainState:
        state = DomainState()
        for sequence, e in enumerate(self.events, 1):
            state.apply(sequence, [e])
        return state

    def decider(self, state: DomainState, actor: str = ACTOR) -> Decider:
        pool = IdPool()
        for kind in ID_KINDS:
            pool.add(kind, state.next_ids[kind], 100)
        keys = iter(range(1, 1000))
        tokens = iter(range(1, 1000))
        return Decider(state, actor, IdDraw(pool), clock=lambda: NOW, new_key=lambda: key(next(keys)),
                       new_token=lambda: token(next(tokens)))

    def when(self, message_type: str, **payload: Any) -> Outcome:
        state = self.state()
        decider = self.decider(state)
        decision = decider.decide(message_type, payload)
        assert not decider.ids.short, "the pool holds enough ids for any test"
        if decision.events:
            state.apply(state.sequence + 1, decision.events)
        return Outcome(state, decision, decision.result(state), decider)

    def fails(self, message_type: str, error: type[RelayctlError], match: str = "", **payload: Any) -> RelayctlError:
        """`when` refused with `error` whose message matches `match` (a regex)."""
        state = self.state()
        with pytest.raises(error, match=match or None) as refused:
            self.decider(state).decide(message_type, payload)
        assert type(refused.value) is error, f"{type(refused.value).__name__} is a subclass of {error.__name__}"
        return refused.value

    def ask(self, message_type: str, **payload: Any) -> Any:
        """A query's answer on the given state."""
        return answer_query(self.state(), message_type, payload)

    def ask_fails(self, message_type: str, error: type[RelayctlError], match: str = "",
                  **payload: Any) -> RelayctlError:
        with pytest.raises(error, match=match or None) as refused:
            answer_query(self.state(), message_type, payload)
        return refused.value


def given(*events: DomainEvent | Iterable[DomainEvent]) -> Given:
    flat: list[DomainEvent] = []
    for e in events:
        flat.extend([e] if isinstance(e, DomainEvent) else e)
    return Given(flat)


# -- the given events of the usual cases -----------------------------------------------------

def org_created(slug: str = "acme", id: int = 1) -> DomainEvent:
    return event("OrgCreated", slug, name=slug, id=id)


def project_created(org: str = "acme", project: str = "web", id: int = 1, template: str | None = None) -> DomainEvent:
    return event("ProjectCreated", org, project=project, name=project, template=template, id=id)


def key_created(org: str = "acme", project: str = "web", public_key: str = key(100), numeric_id: int = 1,
                status: str | None = None) -> DomainEvent:
    payload: dict[str, Any] = {"project": project, "public_key": public_key, "rate_limit": None,
                               "numeric_id": numeric_id}
    if status is not None:
        payload["status"] = status
    return event("KeyCreated", org, **payload)


def acme_web() -> list[DomainEvent]:
    """Org `acme` with project `web` and its key `key(100)`."""
    return [org_created(), project_created(), key_created()]


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None
