"""The forwarder with nothing but its own NATS and Redis roles, as `relayctl up` runs it: a
nats-server requiring the role users of messages/endpoints.py, a Redis requiring the ACL
users of bus/embedded.py, envelopes appended with the gateway's role. What the forwarder must
do works (pull, ack, retry, dead letters, error events, counts, its queries); what it must not
do is refused by the servers."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import redis
from nats.js import api

from actors.worker import Worker
from bus.embedded import ServerProcess, nats_passwords, redis_role_url, role_url, start_nats, start_redis
from messages.subjects import ERROR_EVENT_BUCKET, ingest_subject
from tests.integration.test_forward import FORWARD_ENV, Appender, envelope
from tests.sentry_stub import SentryStub
from tests.system import SystemUnderTest


class Roles:
    def __init__(self, nats_server: ServerProcess, redis_server: ServerProcess, passwords: dict[str, str]) -> None:
        self.nats, self.redis, self.passwords = nats_server, redis_server, passwords

    def nats_url(self, role: str) -> str:
        return role_url(f"nats://127.0.0.1:{self.nats.port}", role, self.passwords)

    def redis_url(self, role: str) -> str:
        assert self.redis.passwords is not None
        return redis_role_url(f"redis://127.0.0.1:{self.redis.port}/0", role, self.redis.passwords)


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Roles]:
    path = tmp_path_factory.mktemp("forward-roles")
    passwords = nats_passwords(path)
    nats_server = start_nats(path / "nats", log_path=path / "nats.log", passwords=passwords)
    redis_server = start_redis(path / "redis", log_path=path / "redis.log")
    saved = {k: os.environ.get(k) for k in FORWARD_ENV}
    os.environ.update(FORWARD_ENV)
    yield Roles(nats_server, redis_server, passwords)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    nats_server.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def system(roles: Roles) -> Iterator[SystemUnderTest]:
    sut = SystemUnderTest(roles.nats_url("operator"), roles.redis_url("operator"), actors=["commands"])
    yield sut.start(with_gateway=False)
    sut.stop()


def test_status_before_any_gateway_made_the_stream_says_so(roles: Roles, system: SystemUnderTest) -> None:
    fwd = Worker(["forwarder"], roles.nats_url("forwarder"), roles.redis_url("forwarder"),
                 process_name="fwd-early").start()
    try:
        result = system.cli("ingest", "status")
        assert result.exit_code == 1 and "RC_INGEST does not exist yet" in result.stderr
        assert system.cli_ok("ingest", "replay", "--json") == {"replayed": [], "failed": [], "gone": []}
    finally:
        fwd.stop()


def test_the_forwarder_works_with_its_own_roles_only(roles: Roles, system: SystemUnderTest) -> None:
    appender = Appender(roles.nats_url("gateway"))  # the gateway's rights: create the stream, append
    stub = SentryStub().start()
    fwd = Worker(["forwarder"], roles.nats_url("forwarder"), roles.redis_url("forwarder"),
                 process_name="fwd-role").start()
    try:
        project = system.new_project()
        ref = f"{project['org']}/{project['slug']}"
        system.cli_ok("project", "option", "set", ref, "relayctl:forward_dsn", json.dumps(stub.dsn()))
        refused, fine = uuid.uuid4().hex, uuid.uuid4().hex
        stub.refuse[refused] = 403
        stub.mode = "down"  # retried first (nak), then delivered
        appender.append(project, envelope(project, refused), refused)
        appender.append(project, envelope(project, fine), fine)
        stub.wait(lambda: len(stub.attempts) >= 3, what="retries")
        stub.mode = "ok"
        stub.wait(lambda: fine in stub.accepted_ids(), what="the delivery")

        def status() -> Any:
            return system.cli_ok("ingest", "status", "--json")

        stub.wait(lambda: status()["deadLetters"]["count"] == 1, what="the dead letter")
        del stub.refuse[refused]
        assert [r["eventId"] for r in system.cli_ok("ingest", "replay", "--json")["replayed"]] == [refused]
        # the error events and their index (the forwarder's Redis role), the counts
        stub.wait(lambda: len(system.cli_ok("event", "list", ref, "--json")) == 2, what="the events listed")
        assert system.cli_ok("event", "show", fine, "--json")["eventId"] == fine
        stub.wait(lambda: system.cli_ok("project", "stats", ref, "--json")["lastHour"]["accepted"] == 2,
                  what="the counts")
    finally:
        fwd.stop()
        stub.stop()
        appender.close()


def test_the_forwarder_role_may_not_forge_envelopes_or_point_deliveries_anywhere(roles: Roles) -> None:
    async def body() -> list[str]:
        errors: list[str] = []

        async def error_cb(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(roles.nats_url("forwarder"), error_cb=error_cb, inbox_prefix="_INBOX.forwarder")
        try:
            js = nc.jetstream(timeout=1)
            with pytest.raises(Exception):
                await js.publish(ingest_subject(1), b"{}\n", timeout=1)  # only the gateway appends
            with pytest.raises(Exception):  # a push consumer on a bucket it writes
                await js.add_consumer(f"KV_{ERROR_EVENT_BUCKET}", api.ConsumerConfig(
                    deliver_subject="rc.ctl.org.create", ack_policy=api.AckPolicy.NONE))
            await nc.flush()
            await asyncio.sleep(0.2)
        finally:
            await nc.close()
        return errors

    assert any("permissions violation" in e for e in asyncio.run(body()))
    client = redis.Redis.from_url(roles.redis_url("forwarder"))
    try:
        assert client.set("ingest:stats:probe", "1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("relayconfig:" + "0" * 32)  # the config cache is not the forwarder's
    finally:
        client.close()
