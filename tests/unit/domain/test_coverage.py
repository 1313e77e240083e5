"""Every command the Decider decides and every query the domain answers has a test named
after it - a new one without a test fails here - and every control message is one of them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import tests.unit.domain
from domain.decider import COMMAND_TYPES, Decider
from domain.queries import QUERY_ANSWERS
from messages.commands import CONTROL, QUERIES

# Control messages the domain does not answer, and who does.
NOT_DOMAIN = {"stream.status": "the command actor's own view of the stream (actors/commands.py)"}
# Decider methods that are no command: what the command actor asks before a decision is stored.
HELPERS = {"event", "decide", "claim_ids", "claims_for"}


def _domain_test_modules() -> list[ModuleType]:
    """Every test module of tests/unit/domain: a new one counts without being listed here."""
    return [importlib.import_module(f"tests.unit.domain.{m.name}")
            for m in pkgutil.iter_modules(tests.unit.domain.__path__) if m.name.startswith("test_")]


def _test_names(modules: list[ModuleType]) -> set[str]:
    return {name for module in modules for name, _ in inspect.getmembers(module, inspect.isfunction)
            if name.startswith("test_")}


def _has_test(message_type: str, names: set[str]) -> bool:
    prefix = "test_" + message_type.replace(".", "_")
    return any(name == prefix or name.startswith(prefix + "_") for name in names)


def test_every_command_and_every_domain_query_has_a_test() -> None:
    names = _test_names(_domain_test_modules())
    untested = sorted(t for t in COMMAND_TYPES | set(QUERY_ANSWERS) if not _has_test(t, names))
    assert not untested, f"no given/when/then test named test_<type>_... for {untested} (tests/unit/domain)"


def test_every_control_message_is_decided_or_answered_by_the_domain() -> None:
    unanswered = sorted(set(CONTROL) - COMMAND_TYPES - set(QUERY_ANSWERS) - set(NOT_DOMAIN))
    assert not unanswered, f"control messages neither the Decider nor a domain query handles: {unanswered}"
    assert COMMAND_TYPES <= set(CONTROL), "a command without a schema in messages/commands.py cannot be sent"
    assert set(QUERY_ANSWERS) <= set(CONTROL) | set(QUERIES)
    assert not COMMAND_TYPES & set(QUERY_ANSWERS)


def test_every_command_is_a_decider_method_and_every_method_a_command() -> None:
    methods = {name for name, _ in inspect.getmembers(Decider, inspect.isfunction) if not name.startswith("_")}
    assert {t.replace(".", "_") for t in COMMAND_TYPES} == methods - HELPERS
