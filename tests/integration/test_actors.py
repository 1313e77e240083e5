"""Actors as services: supervision, bad input on the wire, discovery, concurrent writers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.base import ServiceActor
from actors.supervision import Supervisor
from actors.worker import Worker
from bus.client import request as bus_request
from bus.runtime import connect
from bus.service import Call
from messages.endpoints import served_by
from messages.envelope import ERROR_CODE_HEADER, ERROR_HEADER, Request, pack, unpack
from tests.system import SystemUnderTest
from tests.waiting import wait_for

RELAY_KEY = "A" * 43


# -- supervision ----------------------------------------------------------------------------

class Fragile(pykka.ThreadingActor):
    """Answers "ping" with "pong" and dies on "crash"."""

    starts = 0

    def on_start(self) -> None:
        Fragile.starts += 1

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("told to crash")
        return "pong"


class Doomed:
    """A message with a `fail` hook, like a `Call`."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def fail(self, text: str) -> None:
        self.failures.append(text)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        supervisor.stop()


def test_a_crashed_actor_is_restarted(supervisors: list[Supervisor]) -> None:
    """An actor that dies is replaced by a fresh instance that answers again."""
    restarted: list[str] = []
    supervisor = Supervisor("fragile", Fragile.start, backoff_initial=0.01, on_restart=restarted.append).start()
    supervisors.append(supervisor)
    first = supervisor.ref
    assert first is not None and first.ask("ping", timeout=5) == "pong"
    first.tell("crash")
    wait_for(lambda: supervisor.restart_count == 1 and supervisor.alive, what="restart")
    assert supervisor.ref is not first and not first.is_alive()
    assert supervisor.ref is not None and supervisor.ref.ask("ping", timeout=5) == "pong"
    assert restarted == ["fragile"] and not supervisor.failed


def test_too_many_restarts_give_up_loudly(supervisors: list[Supervisor]) -> None:
    """Past max_restarts within the window the supervisor stops restarting and calls on_give_up."""
    gave_up: list[str] = []
    supervisor = Supervisor("fragile", Fragile.start, max_restarts=2, window=60, backoff_initial=0.01,
                            on_give_up=gave_up.append).start()
    supervisors.append(supervisor)
    for expected in (1, 2):
        assert supervisor.ref is not None
        supervisor.ref.tell("crash")
        wait_for(lambda: supervisor.restart_count == expected and supervisor.alive, what=f"restart {expected}")
    assert supervisor.ref is not None
    supervisor.ref.tell("crash")
    wait_for(lambda: bool(gave_up), what="give up")
    assert gave_up == ["fragile"] and supervisor.failed and not supervisor.alive
    assert supervisor.restart_count == 2
    message = Doomed()
    supervisor.tell(message)  # answered through its fail hook, not dropped
    assert message.failures == ["fragile is restarting"]


def test_a_factory_that_keeps_failing_ends_in_give_up(supervisors: list[Supervisor]) -> None:
    """A restart whose factory raises counts against the limit instead of looping forever."""
    gave_up: list[str] = []
    calls = {"n": 0}

    def factory() -> pykka.ActorRef[Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("cannot start")
        return Fragile.start()

    supervisor = Supervisor("flaky", factory, max_restarts=3, backoff_initial=0.01, backoff_max=0.05,
                            on_give_up=gave_up.append).start()
    supervisors.append(supervisor)
    assert supervisor.ref is not None
    supervisor.ref.tell("crash")
    wait_for(lambda: bool(gave_up), what="give up")
    assert calls["n"] == 4 and supervisor.failed


def test_stopping_a_supervisor_leaves_no_actor_behind(supervisors: list[Supervisor]) -> None:
    """stop() during a pending restart does not start a new instance afterwards."""
    before = Fragile.starts
    supervisor = Supervisor("fragile", Fragile.start, backoff_initial=0.2).start()
    assert supervisor.ref is not None
    supervisor.ref.tell("crash")
    time.sleep(0.1)  # the watcher saw the death and waits out its backoff
    supervisor.stop()
    time.sleep(0.3)
    assert Fragile.starts == before + 1
    assert not any(isinstance(ref.actor_class, type) and issubclass(ref.actor_class, Fragile)
                   for ref in pykka.ActorRegistry.get_all())


class Sleepy(ServiceActor):
    """A service actor whose `slow` requests take a while, and which dies on a non-Call."""

    name = "sleepy"

    def handle_slow(self, call: Call) -> str:
        time.sleep(0.3)
        return "done"


def test_calls_queued_behind_a_crash_fail_fast(supervisors: list[Supervisor]) -> None:
    """A request waiting in the inbox of an actor that crashes gets an error at once."""
    supervisor = Supervisor("sleepy", Sleepy.start, backoff_initial=0.01).start()
    supervisors.append(supervisor)
    answers: list[tuple[Any, Any]] = []

    def call(message_type: str) -> Call:
        return Call(Request(message_type, {}), lambda error, result: answers.append((error, result)))

    supervisor.tell(call("slow"))
    supervisor.tell(object())  # crashes the actor once the slow call is done
    supervisor.tell(call("slow"))  # queued behind the crash
    wait_for(lambda: len(answers) == 2, timeout=3, what="both answers")
    assert answers[0] == (None, "done") and answers[1][0] is not None


def test_the_real_command_actor_recovers_from_a_crash(system: SystemUnderTest) -> None:
    """Crashing the commands actor restarts it, and the CLI works again afterwards."""
    assert system.worker is not None
    supervisor = system.worker.supervisors["commands"]
    before, old = supervisor.restart_count, supervisor.ref
    assert old is not None
    old.tell(object())  # an unexpected message: on_other raises, the actor dies
    wait_for(lambda: supervisor.restart_count == before + 1 and supervisor.alive, what="restart")
    slug = "crash-" + uuid.uuid4().hex[:8]
    assert system.cli_ok("org", "create", slug, "--json")["slug"] == slug
    assert system.cli_ok("org", "option", "get", slug, "ai:policy", "--json") == {"value": "allowed"}


# -- bad input on the wire ------------------------------------------------------------------

def raw_requests(url: str, requests: list[tuple[str, bytes]]) -> list[tuple[dict[str, str], Any]]:
    """Send raw bytes to subjects; return each reply's headers and decoded body."""
    async def main() -> list[tuple[dict[str, str], Any]]:
        nc = await connect(url, name="test-raw")
        try:
            out = []
            for subject, data in requests:
                msg = await nc.request(subject, data, timeout=5)
                out.append((dict(msg.headers or {}), unpack(msg.data)))
            return out
        finally:
            await nc.close()
    return asyncio.run(main())


def envelope(message_type: str, payload: Any) -> bytes:
    return Request(message_type, payload).encode()


@pytest.fixture(scope="module")
def project(system: SystemUnderTest) -> dict[str, Any]:
    return system.new_project()


def endpoint_cases(project: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(subject, message type, a payload of wrong types, a valid payload) per actor subject."""
    key = project["publicKey"]
    return [
        ("rc.ctl.org.create", "org.create", {"slug": 42}, {"slug": "wire-" + uuid.uuid4().hex[:8]}),
        ("rc.keys.lookup", "keys.lookup", {"public_keys": "not a list"}, {"public_keys": [key]}),
        ("rc.org.access", "org.has_access", {"relay_public_key": 7, "org_ids": {}},
         {"relay_public_key": RELAY_KEY, "org_ids": [project["organizationId"]]}),
        ("rc.config.get", "config.get", {"public_keys": [key], "version": "three"},
         {"public_keys": [key], "version": 3}),
        ("rc.config.build", "config.build", {"public_keys": key}, {"public_keys": [key]}),
    ]


@pytest.mark.parametrize("index", range(5), ids=["commands", "keys", "orgs", "config-get", "config-build"])
def test_bad_messages_get_error_replies_and_the_actor_keeps_serving(
        system: SystemUnderTest, project: dict[str, Any], index: int) -> None:
    """Garbage, a bad envelope, wrong payload types and an unknown type each get an error reply."""
    subject, message_type, wrong, valid = endpoint_cases(project)[index]
    bad = [
        (b"\xc1\x00garbage", "bad_message", "not valid msgpack"),
        (pack(["a", "list"]), "bad_message", "envelope must be a msgpack map"),
        (pack({"type": message_type, "v": 1, "id": "x", "payload": {}}), "bad_message", "deadline"),
        (envelope(message_type, wrong), "bad_request", "invalid payload"),
        (envelope(message_type, {**valid, "surprise": 1}), "bad_request", "surprise: unknown field"),
        (envelope("no.such_type", valid), "bad_request", "unknown message type"),
    ]
    replies = raw_requests(system.nats_url, [(subject, data) for data, _, _ in bad]
                           + [(subject, envelope(message_type, valid))])
    for (headers, body), (_, code, text) in zip(replies, bad):
        assert headers.get(ERROR_CODE_HEADER) == "400", (code, headers, body)
        assert text in headers.get(ERROR_HEADER, "")
        assert body["ok"] is False and body["error"]["code"] == code and text in body["error"]["message"]
    headers, body = replies[-1]
    assert ERROR_CODE_HEADER not in headers and body["ok"] is True, body


def test_a_request_past_its_deadline_gets_a_deadline_error(system: SystemUnderTest) -> None:
    """An envelope whose deadline already passed is refused with 504, not served late."""
    late = Request("keys.lookup", {"public_keys": []}, deadline=time.time() - 1).encode()
    [(headers, body)] = raw_requests(system.nats_url, [("rc.keys.lookup", late)])
    assert headers[ERROR_CODE_HEADER] == "504" and body["error"]["code"] == "deadline_exceeded"


# -- discovery ------------------------------------------------------------------------------

def srv_replies(url: str, subject: str, wait: float = 0.5) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        nc = await connect(url, name="test-srv")
        try:
            replies: list[dict[str, Any]] = []

            async def collect(msg: Any) -> None:
                replies.append(json.loads(msg.data))

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=collect)
            await nc.publish(subject, b"", reply=inbox)
            await asyncio.sleep(wait)
            await sub.unsubscribe()
            return replies
        finally:
            await nc.close()
    return asyncio.run(main())


def test_srv_ping_lists_every_actor_service(system: SystemUnderTest) -> None:
    """$SRV.PING is answered by every actor of the worker (commands, keys, orgs, configs, ...)."""
    names = {reply["name"] for reply in srv_replies(system.nats_url, "$SRV.PING")}
    assert {"commands", "keys", "orgs", "configs", "metrics", "transport"} <= names


def test_srv_info_and_stats_describe_endpoints(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """$SRV.INFO names each service's subjects; $SRV.STATS counts the requests they served."""
    [info] = srv_replies(system.nats_url, "$SRV.INFO.keys")
    assert info["type"] == "io.nats.micro.v1.info_response"
    assert [e["subject"] for e in info["endpoints"]] == ["rc.ctl.user.authenticate", "rc.keys.lookup"]
    assert {e["queue_group"] for e in info["endpoints"]} == {"rc-keys"}
    [commands] = srv_replies(system.nats_url, "$SRV.INFO.commands")
    assert sorted(e["subject"] for e in commands["endpoints"]) == sorted(served_by("commands"))  # one per type

    def served() -> int:
        [stats] = srv_replies(system.nats_url, "$SRV.STATS.keys", wait=0.3)
        assert stats["type"] == "io.nats.micro.v1.stats_response"
        return sum(e["num_requests"] for e in stats["endpoints"])

    before = served()
    raw_requests(system.nats_url, [("rc.keys.lookup", envelope("keys.lookup", {"public_keys": []}))] * 3)
    assert served() == before + 3


# -- concurrent writers ---------------------------------------------------------------------

def test_concurrent_writers_to_one_project_lose_no_change(system: SystemUnderTest) -> None:
    """32 writers setting distinct options of one project at once, via two command actor
    instances, all succeed and every change is in state and in the key's config history."""
    p = system.new_project()
    second = Worker(["commands"], system.nats_url, system.redis_url, process_name="second-commands",
                    instrument=False).start()
    try:
        writers = 32
        barrier = threading.Barrier(writers)
        errors: list[BaseException] = []

        def write(i: int) -> None:
            async def main() -> None:
                nc = await connect(system.nats_url, name=f"writer-{i}")
                try:
                    barrier.wait(10)
                    await bus_request(nc, "project.option_set",
                                      {"org": p["org"], "project": p["slug"], "key": f"filters:writer-{i}",
                                       "value": i % 2 == 0}, timeout=30, actor=f"writer-{i}")
                finally:
                    await nc.close()
            try:
                asyncio.run(main())
            except BaseException as exc:  # collected and asserted on the test thread
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
    finally:
        second.stop()

    for i in range(writers):
        got = system.cli_ok("project", "option", "get", f"{p['org']}/{p['slug']}", f"filters:writer-{i}", "--json")
        assert got == {"value": "1" if i % 2 == 0 else "0"}, i
    history = system.cli_ok("config", "history", p["publicKey"], "--json")["events"]
    set_keys = [e["payload"]["key"] for e in history if e["type"] == "ProjectOptionSet"]
    assert sorted(set_keys) == sorted(f"filters:writer-{i}" for i in range(writers))
    assert {e["actor"] for e in history if e["type"] == "ProjectOptionSet"} == {f"writer-{i}" for i in range(writers)}
