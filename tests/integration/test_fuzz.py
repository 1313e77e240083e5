"""Fuzzing the running system: relay endpoints with valid signatures over malformed bodies,
and control commands with values of the wrong types over NATS.

What must hold for every input: no 5xx and no hang from the gateway, an error reply (never
silence, never a crash) from the command handlers, and nothing half-applied - a refused
command stores no event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from bus.client import request as bus_request
from bus.eventstore import JetStreamEventStore
from bus.runtime import BusRuntime
from gateway.limits import HttpLimits
from messages.commands import CONTROL
from messages.errors import BadRequest, RelayctlError
from messages.schema import validate
from tests.integration.test_security import LimitedGateway
from tests.system import RelayClient, SystemUnderTest

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30, max_value=10**400)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40)
                | st.sampled_from(["0" * 32, "0123456789abcdef0123456789abcdef", "-1", "1e999", ""]))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def shaped(*keys: str) -> st.SearchStrategy[Any]:
    """Maps with the endpoint's own keys (some of them) holding values of any shape."""
    return st.fixed_dictionaries({}, optional={k: json_values for k in keys})


def deep(depth: int) -> bytes:
    return b'{"publicKeys":' + b"[" * depth + b"]" * depth + b"}"


def bodies(*keys: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        json_values.map(lambda v: json.dumps(v).encode()),
        shaped(*keys).map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=100_000).map(deep),
        st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    return system.registered_relay()


@pytest.fixture(scope="module")
def open_gateway(system: SystemUnderTest) -> Iterator[LimitedGateway]:
    """A gateway without a registration rate limit, so every fuzzed call reaches the handler."""
    with LimitedGateway(system, HttpLimits(register_rate=1e6, register_burst=10**9)) as gateway:
        yield gateway


def assert_handled(status: int, data: Any, body: bytes) -> None:
    assert status < 500, (status, data, body[:300])
    if status >= 400:
        assert isinstance(data, (dict, str)), (status, data)


ENDPOINTS = {
    "projectconfigs/?version=3": ("publicKeys", "revisions", "global", "noCache", "fullConfig"),
    "projectconfigs/?version=2": ("publicKeys", "revisions", "fullConfig"),
    "projectconfigs/?version=1": ("projects",),
    "publickeys/": ("relay_ids",),
    "projectids/": ("publicKeys",),
}


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_signed_calls_survive_malformed_bodies(relay: RelayClient, path: str) -> None:
    """A validly signed call with any body answers 2xx or 4xx with JSON, never 5xx."""
    @FUZZ
    @given(body=bodies(*ENDPOINTS[path]))
    @example(body=deep(100_000))
    @example(body=b'{"publicKeys": ["' + b"0" * 32 + b'"], "revisions": [1e999]}')
    @example(body=b'{"projects": [99999999999999999999999999, -1, "1", 1.5, true]}')
    @example(body=b'{"relay_ids": ["' + b"a" * 10_000 + b'"]}')
    def check(body: bytes) -> None:
        status, data = relay.post(path, body)
        assert_handled(status, data, body)
    check()


@pytest.mark.parametrize("path, keys", [("register/challenge/", ("relay_id", "public_key", "version")),
                                        ("register/response/", ("relay_id", "token", "version"))])
def test_registration_survives_malformed_bodies(open_gateway: LimitedGateway, path: str,
                                                keys: tuple[str, ...]) -> None:
    """Registration calls signed by the relay's key answer 2xx or 4xx with JSON for any body,
    including its own relay id and key with fields of the wrong types."""
    relay = RelayClient(open_gateway.url)

    def own(value: dict[str, Any]) -> bytes:
        return json.dumps({"relay_id": relay.relay_id, "public_key": relay.public_key_str, **value}).encode()

    @FUZZ
    @given(body=bodies(*keys) | shaped(*keys[1:]).map(own))
    @example(body=own({"version": "9" * 400}))
    @example(body=own({"token": "a:b"}))
    def check(body: bytes) -> None:
        status, data = relay.post(path, body)
        assert_handled(status, data, body)
    check()


# -- control commands over NATS -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bus(system: SystemUnderTest) -> Iterator[BusRuntime]:
    runtime = BusRuntime(system.nats_url, name="fuzz").start()
    yield runtime
    runtime.close()


def last_sequence(bus: BusRuntime) -> int:
    return bus.call(JetStreamEventStore(bus.nc).last_sequence())  # type: ignore[arg-type]


wire_values = json_values | st.binary(max_size=10) | st.integers(min_value=-(2**63), max_value=2**64 - 1)


@st.composite
def wrong_commands(draw: Any) -> tuple[str, Any]:
    message_type = draw(st.sampled_from(sorted(CONTROL)))
    schema = CONTROL[message_type]
    payload = draw(st.one_of(
        wire_values,
        st.fixed_dictionaries({}, optional={name: wire_values for name in schema}),
        st.dictionaries(st.sampled_from(sorted(schema) or ["x"]) | st.text(max_size=5), wire_values, max_size=5)))
    return message_type, payload


def test_control_commands_with_wrong_types_are_refused_whole(system: SystemUnderTest, bus: BusRuntime) -> None:
    """Every control command with values of the wrong types gets a 400 error reply, stores
    no event, and the command handlers keep serving."""
    assert system.worker is not None
    before = last_sequence(bus)

    @settings(FUZZ, max_examples=1500)
    @given(command=wrong_commands())
    def check(command: tuple[str, Any]) -> None:
        message_type, payload = command
        try:
            validate(CONTROL[message_type], payload)
        except BadRequest:
            pass
        else:
            assume(False)  # a valid command: not what this test is about
        with pytest.raises(BadRequest):
            bus.call(bus_request(bus.nc, message_type, payload, timeout=5))  # type: ignore[arg-type]
    check()
    assert last_sequence(bus) == before
    assert system.worker.supervisors["commands"].restart_count == 0
    assert "relays" in bus.call(bus_request(bus.nc, "relay.list", {}, timeout=5))  # type: ignore[arg-type]


def test_imports_of_any_shape_are_all_or_nothing(system: SystemUnderTest, bus: BusRuntime) -> None:
    """`import.org` with an org map of any shape is stored whole or refused with a 4xx and
    stores nothing; the command handlers keep serving."""
    assert system.worker is not None
    org = st.fixed_dictionaries({"slug": st.sampled_from(["fz-a", "FZ", ""]) | json_scalars}, optional={
        "name": json_values, "options": json_values, "trustedRelays": json_values,
        "projects": st.lists(st.fixed_dictionaries({"slug": st.sampled_from(["web", "x y"]) | json_scalars},
                                                   optional={"options": json_values, "keys": json_values,
                                                             "name": json_values}), max_size=3) | json_values})

    @settings(FUZZ, max_examples=400)
    @given(org=org)
    def check(org: dict[str, Any]) -> None:
        before = last_sequence(bus)
        try:
            bus.call(bus_request(bus.nc, "import.org", {"org": org}, timeout=5))  # type: ignore[arg-type]
        except RelayctlError as exc:
            assert 400 <= exc.status < 500, (exc.code, exc.message, org)
            assert last_sequence(bus) == before, org
    check()
    assert system.worker.supervisors["commands"].restart_count == 0
    assert "relays" in bus.call(bus_request(bus.nc, "relay.list", {}, timeout=5))  # type: ignore[arg-type]


def test_option_values_of_any_shape_never_break_the_builder(system: SystemUnderTest, bus: BusRuntime) -> None:
    """Project and org options set to values of any shape are accepted or refused with a 4xx,
    and the project's config is still served afterwards (the last good one, or a new one)."""
    project = system.new_project()
    keys = st.sampled_from(["sentry:origins", "sentry:relay_pii_config", "sentry:safe_fields", "sentry:scrub_data",
                            "sentry:trusted-relays", "sentry:dynamic_sampling", "sentry:blacklisted_ips",
                            "sentry:token", "feature:x"])

    @settings(FUZZ, max_examples=200)
    @given(scope=st.sampled_from(["org", "project"]), key=keys, value=json_values)
    def check(scope: str, key: str, value: Any) -> None:
        target = {"org": project["org"]} if scope == "org" else {"org": project["org"], "project": project["slug"]}
        try:
            bus.call(bus_request(bus.nc, f"{scope}.option_set", {**target, "key": key, "value": value},  # type: ignore[arg-type]
                                 timeout=5))
        except RelayctlError as exc:
            assert 400 <= exc.status < 500, (exc.code, exc.message, key, value)
    check()
    config = bus.call(bus_request(bus.nc, "config.get", {"public_keys": [project["publicKey"]]},  # type: ignore[arg-type]
                                  timeout=5))
    assert project["publicKey"] in config["entries"]
    assert all(s.restart_count == 0 for s in system.worker.supervisors.values())
