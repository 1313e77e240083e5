"""The forwarder against a real nats-server (JetStream) and a local downstream Sentry.

Envelopes are appended to RC_INGEST with the ingest store the gateway uses
(bus/ingest_store.py), exactly as the gateway does after a 200; the downstream Sentry is
tests/sentry_stub.py. One NATS and Redis of the module's own (the forwarder's durable
consumers must not see other modules' envelopes), short ack wait and backoff so redeliveries
are quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from actors.worker import Worker
from bus.embedded import ServerProcess, start_nats, start_redis
from bus.ingest_store import IngestSettings, IngestStore
from bus.runtime import BusRuntime
from tests.sentry_stub import SentryStub
from tests.system import RELAYCTL, SystemUnderTest

FORWARD_ENV = {"RELAYCTL_FORWARD_ACK_WAIT": "2", "RELAYCTL_FORWARD_BACKOFF_BASE": "0.1",
               "RELAYCTL_FORWARD_BACKOFF_MAX": "0.3", "RELAYCTL_FORWARD_TIMEOUT": "5",
               "RELAYCTL_FORWARD_CONCURRENCY": "4"}


class Appender:
    """Appends envelopes to the ingest stream as the gateway does."""

    def __init__(self, nats_url: str) -> None:
        self.runtime = BusRuntime(nats_url, name="test-appender").start()
        assert self.runtime.nc is not None
        self.store = IngestStore(self.runtime.nc, IngestSettings())
        self.runtime.call(self.store.ensure())

    def append(self, project: dict[str, Any], body: bytes, event_id: str | None) -> int:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        headers = {"Nats-Msg-Id": f"{project['id']}:{event_id}" if event_id else uuid.uuid4().hex,
                   "Rc-Project-Id": str(project["id"]), "Rc-Public-Key": project["publicKey"],
                   "Rc-Received-At": now, "Rc-Client-Ip": "127.0.0.1"}
        if event_id:
            headers["Rc-Event-Id"] = event_id
        return self.runtime.call(self.store.append_envelope(project["id"], body, headers))

    def close(self) -> None:
        self.runtime.close()


def envelope(project: dict[str, Any], event_id: str, message: str = "boom") -> bytes:
    event = json.dumps({"event_id": event_id, "level": "error", "platform": "python",
                        "exception": {"values": [{"type": "RuntimeError", "value": message}]}}).encode()
    header = {"event_id": event_id, "dsn": f"http://{project['publicKey']}@relayctl.invalid/{project['id']}",
              "sent_at": datetime.now(UTC).isoformat()}
    return (json.dumps(header).encode() + b"\n" + json.dumps({"type": "event", "length": len(event)}).encode()
            + b"\n" + event + b"\n")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    path = tmp_path_factory.mktemp("forward")
    nats = start_nats(path / "nats", log_path=path / "nats.log")
    redis = start_redis(path / "redis", log_path=path / "redis.log")
    yield nats, redis
    nats.stop()
    redis.stop()


@pytest.fixture(scope="module")
def env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in FORWARD_ENV}
    os.environ.update(FORWARD_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def system(servers: tuple[ServerProcess, ServerProcess], env: None) -> Iterator[SystemUnderTest]:
    """The command handlers only: each test runs the forwarders it needs."""
    nats, redis = servers
    sut = SystemUnderTest(nats.url, redis.url, actors=["commands"]).start(with_gateway=False)
    yield sut
    sut.stop()


@pytest.fixture(scope="module")
def appender(system: SystemUnderTest) -> Iterator[Appender]:
    appender = Appender(system.nats_url)
    yield appender
    appender.close()


@pytest.fixture
def stub() -> Iterator[SentryStub]:
    stub = SentryStub().start()
    yield stub
    stub.stop()


def forwarder(system: SystemUnderTest, name: str = "fwd") -> Worker:
    return Worker(["forwarder"], system.nats_url, system.redis_url, process_name=name).start()


def forwarding_project(system: SystemUnderTest, stub: SentryStub) -> dict[str, Any]:
    project = system.new_project()
    system.cli_ok("project", "option", "set", f"{project['org']}/{project['slug']}", "relayctl:forward_dsn",
                  json.dumps(stub.dsn()))
    return project


def settled(system: SystemUnderTest) -> bool:
    consumer = system.cli_ok("ingest", "status", "--json")["consumers"].get("forwarder", {})
    return consumer.get("pending") == 0 and consumer.get("ackPending") == 0


def test_an_envelope_goes_to_the_target_with_its_key_and_dsn(system: SystemUnderTest, appender: Appender,
                                                            stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    event_id = uuid.uuid4().hex
    body = envelope(project, event_id)
    fwd = forwarder(system)
    try:
        appender.append(project, body, event_id)
        stub.wait(lambda: stub.accepted, what="an envelope")
    finally:
        fwd.stop()
    [received] = stub.accepted
    assert received.project_id == 42
    assert "sentry_key=" + "f" * 32 in received.auth and project["publicKey"] not in received.auth
    assert received.header["dsn"] == stub.dsn()  # the stale relayctl dsn would make Sentry refuse it
    assert received.forwarded_for == "127.0.0.1"  # the SDK's address (Rc-Client-Ip), as Relay forwards it
    assert received.event_id == event_id
    # every item byte for byte as stored
    assert received.body.split(b"\n", 1)[1] == body.split(b"\n", 1)[1]
    event = received.envelope.get_event()
    assert event is not None and event["exception"]["values"][0]["value"] == "boom"


def test_the_org_dsn_is_the_default_and_a_project_may_opt_out(system: SystemUnderTest, appender: Appender,
                                                             stub: SentryStub) -> None:
    inherits = system.new_project()
    org = inherits["org"]
    opted_out = system.new_project(org)
    system.cli_ok("org", "option", "set", org, "relayctl:forward_dsn", json.dumps(stub.dsn(7)))
    system.cli_ok("project", "option", "set", f"{org}/{opted_out['slug']}", "relayctl:forward_dsn", "null")
    fwd = forwarder(system)
    try:
        quiet = uuid.uuid4().hex
        appender.append(opted_out, envelope(opted_out, quiet), quiet)
        loud = uuid.uuid4().hex
        appender.append(inherits, envelope(inherits, loud), loud)
        stub.wait(lambda: loud in stub.accepted_ids(), what="the org default")
        stub.wait(lambda: settled(system), what="the consumer settled")
    finally:
        fwd.stop()
    assert stub.accepted_ids() == {loud}
    assert stub.accepted[0].project_id == 7


def test_a_bad_dsn_is_refused(system: SystemUnderTest) -> None:
    project = system.new_project()
    result = system.cli("project", "option", "set", f"{project['org']}/{project['slug']}",
                        "relayctl:forward_dsn", '"https://sentry.example.com/not-a-project"')
    assert result.exit_code == 1
    assert "relayctl:forward_dsn" in result.stderr and "public key" in result.stderr


def test_every_envelope_arrives_after_the_target_comes_back(system: SystemUnderTest, appender: Appender,
                                                            stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    stub.mode = "down"
    ids = [uuid.uuid4().hex for _ in range(20)]
    fwd = forwarder(system)
    try:
        for event_id in ids:
            appender.append(project, envelope(project, event_id), event_id)
        # tried and refused again and again (one probe at a time: the rest are held back)
        stub.wait(lambda: len(stub.attempts) >= 5, what="retries while down")
        assert not stub.accepted
        status = system.cli_ok("ingest", "status", "--json")
        [row] = [r for r in status["backlog"] if r["projectId"] == project["id"]]
        assert row["envelopes"] == len(ids) and (row["org"], row["project"]) == (project["org"], project["slug"])
        assert f"{project['org']}/{project['slug']} (id {project['id']}): {len(ids)} envelopes" in system.cli_ok(
            "ingest", "status")
        stub.mode = "ok"
        stub.wait(lambda: stub.accepted_ids() >= set(ids), what="every envelope after recovery")
    finally:
        fwd.stop()


def test_a_429_is_retried_after_its_retry_after(system: SystemUnderTest, appender: Appender,
                                                stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    stub.mode, stub.retry_after = "429", 2
    event_id = uuid.uuid4().hex
    fwd = forwarder(system)
    try:
        appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: stub.attempts, what="the first attempt")
        stub.mode = "ok"
        stub.wait(lambda: stub.accepted, what="the retry")
    finally:
        fwd.stop()
    first, retry = stub.attempts[0], stub.accepted[0]
    # the backoff alone would have retried after 0.1 s; Retry-After said 2 s (a lower bound only)
    assert len(stub.attempts) == 2
    assert retry.at - first.at >= 1.9


def test_a_permanent_refusal_is_a_dead_letter_listed_and_replayed(system: SystemUnderTest, appender: Appender,
                                                                  stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    refused, fine = uuid.uuid4().hex, uuid.uuid4().hex
    stub.refuse[refused] = 400
    fwd = forwarder(system)
    try:
        sequence = appender.append(project, envelope(project, refused), refused)
        appender.append(project, envelope(project, fine), fine)
        stub.wait(lambda: fine in stub.accepted_ids(), what="the envelope after it")
        stub.wait(lambda: settled(system), what="the consumer settled")
        assert [a.event_id for a in stub.attempts].count(refused) == 1  # a 400 is not retried
        status = system.cli_ok("ingest", "status", "--json")
        letters = [x for x in status["deadLetters"]["letters"] if x["eventId"] == refused]
        assert len(letters) == 1 and letters[0]["status"] == 400 and letters[0]["sequence"] == sequence
        assert "Dead letters: " in system.cli_ok("ingest", "status")

        # still refused: the replay says so and the letter stays
        failed = system.cli("ingest", "replay", "--project", f"{project['org']}/{project['slug']}", "--json")
        assert failed.exit_code == 1 and len(failed.json()["failed"]) == 1
        del stub.refuse[refused]
        replay = system.cli_ok("ingest", "replay", "--project", f"{project['org']}/{project['slug']}", "--json")
        assert [r["eventId"] for r in replay["replayed"]] == [refused]
        assert refused in stub.accepted_ids()
        after = system.cli_ok("ingest", "status", "--json")["deadLetters"]["letters"]
        assert not [x for x in after if x["eventId"] == refused]
    finally:
        fwd.stop()


def test_two_forwarders_share_the_work(system: SystemUnderTest, appender: Appender, stub: SentryStub) -> None:
    """Each instance has at most 4 envelopes in flight: 8 held at once takes both."""
    project = forwarding_project(system, stub)
    stub.mode = "hold"
    ids = [uuid.uuid4().hex for _ in range(12)]
    first, second = forwarder(system, "fwd-1"), forwarder(system, "fwd-2")
    try:
        for event_id in ids:
            appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: stub.held >= 8, what="8 deliveries held at once")
        stub.mode = "ok"
        stub.release()
        stub.wait(lambda: stub.accepted_ids() >= set(ids), what="every envelope")
    finally:
        first.stop()
        second.stop()
    assert stub.max_held == 8


def test_a_forwarder_killed_mid_delivery_loses_nothing(system: SystemUnderTest, appender: Appender,
                                                       stub: SentryStub, tmp_path: Path) -> None:
    project = forwarding_project(system, stub)
    stub.mode = "hold"
    event_id = uuid.uuid4().hex
    env = {**os.environ, **FORWARD_ENV, "RELAYCTL_SENTRY": "0", "RELAYCTL_REDIS_URL": system.redis_url}
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen([RELAYCTL, "--data-dir", str(tmp_path), "--nats-url", system.nats_url,
                             "worker", "forwarder"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: stub.held == 1, timeout=60, what="the delivery held")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    stub.mode = "ok"
    stub.release()
    assert event_id not in stub.accepted_ids()  # its client died before the answer
    fwd = forwarder(system)
    try:
        stub.wait(lambda: event_id in stub.accepted_ids(), what="the redelivery")
    finally:
        fwd.stop()


def test_an_envelope_over_the_nats_message_limit_is_forwarded_whole(system: SystemUnderTest, appender: Appender,
                                                                     stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    event_id = uuid.uuid4().hex
    assert appender.runtime.nc is not None
    limit = appender.runtime.nc.max_payload  # the server's (8 MB in nats.conf)
    attachment = os.urandom(limit // 2 + 1000).hex().encode()  # over the NATS message limit: a blob
    body = envelope(project, event_id) + json.dumps(
        {"type": "attachment", "length": len(attachment), "filename": "big.txt"}).encode() + b"\n" + attachment + b"\n"
    fwd = forwarder(system)
    try:
        appender.append(project, body, event_id)

        async def blob_size() -> int:
            from bus.ingest_store import blob_store

            assert appender.runtime.nc is not None
            store = await blob_store(appender.runtime.nc.jetstream())
            return int((await store.get_info(f"{project['id']}:{event_id}")).size)

        assert appender.runtime.call(blob_size()) == len(body)
        stub.wait(lambda: event_id in stub.accepted_ids(), what="the large envelope")
    finally:
        fwd.stop()
    [received] = [r for r in stub.accepted if r.event_id == event_id]
    assert received.body.split(b"\n", 1)[1] == body.split(b"\n", 1)[1]
    assert received.envelope.items[1].payload.get_bytes() == attachment


def test_the_forwarder_carries_on_after_nats_restarts(tmp_path: Path, env: None) -> None:
    """NATS (file storage) stopped and started on the same port: the forwarder reconnects,
    its durable consumer is still there, and envelopes from before and after all arrive."""
    nats = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    redis = start_redis(tmp_path / "redis", log_path=tmp_path / "redis.log")
    stub = SentryStub().start()
    sut = SystemUnderTest(nats.url, redis.url, actors=["commands"]).start(with_gateway=False)
    fwd = forwarder(sut, "fwd-restart")
    appender = Appender(sut.nats_url)
    try:
        project = forwarding_project(sut, stub)
        before = [uuid.uuid4().hex for _ in range(5)]
        for event_id in before:
            appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: stub.accepted_ids() >= set(before), what="the envelopes before")
        stub.mode = "down"  # some are in retry when NATS goes
        held = [uuid.uuid4().hex for _ in range(3)]
        for event_id in held:
            appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: len(stub.attempts) >= len(before) + len(held), what="attempts while down")
        nats.stop()
        nats = start_nats(tmp_path / "nats", port=nats.port, log_path=tmp_path / "nats-2.log")
        stub.mode = "ok"
        after = [uuid.uuid4().hex for _ in range(5)]
        for event_id in after:
            for _ in range(100):  # the appender's connection comes back too
                try:
                    appender.append(project, envelope(project, event_id), event_id)
                    break
                except Exception:
                    time.sleep(0.1)
        stub.wait(lambda: stub.accepted_ids() >= set(before + held + after), timeout=40,
                  what="every envelope after the restart")
    finally:
        appender.close()
        fwd.stop()
        sut.stop()
        stub.stop()
        nats.stop()
        redis.stop()


def test_an_envelope_right_after_its_project_is_not_missed_by_a_lagging_forwarder(
        system: SystemUnderTest, appender: Appender, stub: SentryStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """The forwarder follows the event stream on its own; one whose deliveries lag (a slow
    consumer, a reconnect) and has not yet folded the project or its forward DSN when the
    first envelope comes catches up first, instead of taking the project for unknown."""
    import asyncio

    from actors.forwarder import ForwarderActor

    start = ForwarderActor.on_start
    lagging = {"on": False}

    def on_start(self: Any) -> None:
        real = self.store

        class LaggingStore:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            async def follow(self, callback: Any, *args: Any, **kwargs: Any) -> Any:
                loop = asyncio.get_running_loop()

                def later(*delivered: Any) -> None:
                    loop.call_later(0.5 if lagging["on"] else 0.0, callback, *delivered)

                return await real.follow(later, *args, **kwargs)

        self.store = LaggingStore()
        start(self)

    monkeypatch.setattr(ForwarderActor, "on_start", on_start)
    fwd = forwarder(system)
    try:
        lagging["on"] = True
        project = forwarding_project(system, stub)
        event_id = uuid.uuid4().hex
        appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: event_id in stub.accepted_ids(), what="the envelope")
        ref = f"{project['org']}/{project['slug']}"
        stub.wait(lambda: [e for e in system.cli_ok("event", "list", ref, "--json") if e["eventId"] == event_id],
                  what="its error event")
    finally:
        lagging["on"] = False
        fwd.stop()


def test_an_envelope_whose_blob_is_gone_is_a_dead_letter_not_retried_forever(
        system: SystemUnderTest, appender: Appender, stub: SentryStub) -> None:
    project = forwarding_project(system, stub)
    event_id = uuid.uuid4().hex
    assert appender.runtime.nc is not None
    size = appender.runtime.nc.max_payload + 1000  # a blob
    big = envelope(project, event_id) + b'{"type":"attachment","length":%d}\n' % size + b"a" * size + b"\n"
    sequence = appender.append(project, big, event_id)

    async def delete_blob() -> None:
        from bus.ingest_store import blob_store

        assert appender.runtime.nc is not None
        store = await blob_store(appender.runtime.nc.jetstream())
        await store.delete(f"{project['id']}:{event_id}")

    appender.runtime.call(delete_blob())
    fwd = forwarder(system)
    try:
        def letter() -> Any:
            letters = system.cli_ok("ingest", "status", "--json")["deadLetters"]["letters"]
            return [x for x in letters if x["sequence"] == sequence]

        stub.wait(letter, what="the dead letter")
        stub.wait(lambda: settled(system), what="the consumer settled")
        assert "gone" in letter()[0]["detail"] and not stub.attempts
        consumers = system.cli_ok("ingest", "status", "--json")["consumers"]
        assert all(c["pending"] == 0 and c["ackPending"] == 0 for c in consumers.values()), consumers
    finally:
        fwd.stop()


def test_a_429_holds_back_the_targets_other_envelopes_too(system: SystemUnderTest, appender: Appender,
                                                          stub: SentryStub) -> None:
    """Like Relay applying a Retry-After to later envelopes: none goes to a target that said
    wait, until the time is up (a lower bound only); then every one arrives."""
    project = forwarding_project(system, stub)
    stub.mode, stub.retry_after = "429", 2
    first = uuid.uuid4().hex
    fwd = forwarder(system)
    try:
        appender.append(project, envelope(project, first), first)
        stub.wait(lambda: stub.attempts, what="the first attempt")
        later = [uuid.uuid4().hex for _ in range(5)]
        for event_id in later:
            appender.append(project, envelope(project, event_id), event_id)
        stub.mode = "ok"
        stub.wait(lambda: stub.accepted_ids() >= {first, *later}, what="every envelope")
    finally:
        fwd.stop()
    start = stub.attempts[0].at
    assert all(a.at - start >= 1.9 for a in stub.attempts[1:]), [round(a.at - start, 2) for a in stub.attempts]


def test_instances_with_one_job_each_share_the_consumers(system: SystemUnderTest, appender: Appender,
                                                         stub: SentryStub, monkeypatch: pytest.MonkeyPatch) -> None:
    """RELAYCTL_FORWARD_CONSUMERS: a forwarding-only instance forwards and stores no event;
    the error events wait in their consumer until an instance that stores them runs."""
    project = forwarding_project(system, stub)
    ref = f"{project['org']}/{project['slug']}"
    event_id = uuid.uuid4().hex
    monkeypatch.setenv("RELAYCTL_FORWARD_CONSUMERS", "forwarder")
    only_forwarding = forwarder(system, "fwd-only")
    try:
        appender.append(project, envelope(project, event_id), event_id)
        stub.wait(lambda: event_id in stub.accepted_ids(), what="the envelope forwarded")
        assert system.cli_ok("event", "list", ref, "--json") == []
        monkeypatch.setenv("RELAYCTL_FORWARD_CONSUMERS", "error-events,outcomes")
        events_only = forwarder(system, "events-only")
        try:
            stub.wait(lambda: system.cli_ok("event", "list", ref, "--json"), what="the event stored")
        finally:
            events_only.stop()
    finally:
        only_forwarding.stop()
