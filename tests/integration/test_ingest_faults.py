"""Ingest under a NATS outage (issue 12): while senders keep posting envelopes, nats-server
is killed and started again. Every answer is 200 or 503 (what Relay retries), never
another status, and every envelope answered 200 is in the stream once NATS is back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus.embedded import ServerProcess, start_nats, start_redis
from messages.subjects import ingest_subject
from tests.conftest import gateway_redis_url
from tests.integration.test_ingest import auth, envelope, stored
from tests.system import SystemUnderTest, http_request

SENDERS = 8


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, ServerProcess]]:
    running = {"nats": start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log"),
               "redis": start_redis(tmp_path / "redis", log_path=tmp_path / "redis.log")}
    yield running
    for server in running.values():
        server.stop()


def test_nats_killed_during_a_burst_answers_only_200_or_503_and_loses_nothing_acknowledged(
        servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    nats, redis = servers["nats"], servers["redis"]
    system = SystemUnderTest(nats.url, redis.url, gateway_redis_url=gateway_redis_url(redis)).start()
    try:
        project = system.new_project()
        url = f"{system.url}/api/{project['id']}/envelope/"
        warm = uuid.uuid4().hex
        assert http_request(url, "POST", envelope(warm), auth(project["publicKey"]))[0] == 200  # config cached

        answers: list[tuple[str, int, Any]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def sender() -> None:
            while not stop.is_set():
                event_id = uuid.uuid4().hex
                try:
                    status, headers, body = http_request(url, "POST", envelope(event_id), auth(project["publicKey"]),
                                                         timeout=15)
                    detail: Any = (headers.get("retry-after"), json.loads(body))
                except OSError as exc:  # the gateway itself never goes away: this would be a failure
                    status, detail = -1, repr(exc)
                with lock:
                    answers.append((event_id, status, detail))

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        nats.kill()
        time.sleep(2.0)
        servers["nats"] = start_nats(tmp_path / "nats", port=nats.port, log_path=tmp_path / "nats.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the gateway stores again
            with lock:
                recent = [a[1] for a in answers[-SENDERS:]]
            if len(recent) == SENDERS and all(s == 200 for s in recent):
                break
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(20)

        statuses = {status for _, status, _ in answers}
        print(f"{len(answers)} answers: " + ", ".join(
            f"{s}: {sum(1 for a in answers if a[1] == s)}" for s in sorted(statuses)))
        assert statuses <= {200, 503}, [a for a in answers if a[1] not in (200, 503)][:5]
        assert 503 in statuses, "the outage was seen"
        assert all(detail[0] for _, status, detail in answers if status == 503), "503 carries Retry-After"
        accepted = {event_id for event_id, status, _ in answers if status == 200}
        in_stream = {h.get("Rc-Event-Id") for h, _ in stored(system, ingest_subject(project["id"]))}
        assert accepted <= in_stream, f"{len(accepted - in_stream)} envelopes answered 200 are missing"
    finally:
        system.stop()


def test_a_full_stream_answers_503_with_retry_after(servers: dict[str, ServerProcess],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """RC_INGEST made with a 256 KiB limit (discard new): once full, envelopes are refused
    with 503 and Retry-After - Relay keeps them - and nothing already stored is dropped."""
    nats, redis = servers["nats"], servers["redis"]
    monkeypatch.setenv("RELAYCTL_INGEST_MAX_BYTES", str(256 * 1024))
    system = SystemUnderTest(nats.url, redis.url, gateway_redis_url=gateway_redis_url(redis)).start()
    try:
        project = system.new_project()
        url = f"{system.url}/api/{project['id']}/envelope/"
        accepted: list[str] = []
        payload = b"x" * 8192
        for _ in range(100):
            event_id = uuid.uuid4().hex
            body = envelope(event_id, items=[({"type": "attachment"}, payload)])
            status, headers, data = http_request(url, "POST", body, auth(project["publicKey"]))
            if status != 200:
                break
            accepted.append(event_id)
        assert status == 503, (status, data)
        assert headers["retry-after"] and "cannot store the envelope" in json.loads(data)["detail"]
        assert 0 < len(accepted) < 100
        in_stream = {h.get("Rc-Event-Id") for h, _ in stored(system, ingest_subject(project["id"]))}
        assert set(accepted) <= in_stream
    finally:
        system.stop()
