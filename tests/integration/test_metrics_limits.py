"""`/metrics` under hostile input: request input never becomes a metric tag, and the
exposition stays within the NATS message limit however many series exist (issue 10, item 9).

Both tests go through the running system: the real gateway, the metrics actor and NATS."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import nats
from prometheus_client.parser import text_string_to_metric_families

from bus.client import request as bus_request
from bus.metrics import encode_batch
from messages.subjects import METRICS_RECORD
from tests.system import SystemUnderTest, http_request


def max_payload(nats_url: str) -> int:
    """The message limit the server announces (nats.conf sets it)."""
    async def ask() -> int:
        nc = await nats.connect(nats_url)
        try:
            return int(nc.max_payload)
        finally:
            await nc.close()
    return asyncio.run(ask())


async def _junk_version_requests(base_url: str, count: int, marker: str) -> list[int]:
    """`count` unauthenticated config requests, each with a `?version=` of its own."""
    statuses: list[int] = []
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> None:
            async with limit:
                # One in ten also asks for a path of its own (an unknown route).
                path = f"/{marker}-path-{i}/" if i % 10 == 0 else "/api/0/relays/projectconfigs/"
                url = f"{base_url}{path}?version={marker}-{i}"
                async with session.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                    statuses.append(resp.status)
        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


def _samples(body: bytes) -> list[Any]:
    return [s for family in text_string_to_metric_families(body.decode()) for s in family.samples]


def _wait_for_metrics(url: str, until: Any, timeout: float = 30.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout
    status, body = 0, b""
    while time.monotonic() < deadline:
        status, _, body = http_request(url + "/metrics", timeout=10)
        if status == 200 and until(body):
            break
        time.sleep(0.3)
    return status, body


def test_junk_versions_never_become_tags_nor_break_metrics(system: SystemUnderTest) -> None:
    """5,000 unauthenticated requests with junk `?version=` values (a tenth of them on
    unknown paths): every one is refused (no 5xx), they are counted under `version="other"`
    and `route="unmatched"`, and `/metrics` keeps answering."""
    marker = "junk" + uuid.uuid4().hex[:8]
    statuses = asyncio.run(_junk_version_requests(system.url, 5000, marker))
    assert len(statuses) == 5000 and all(400 <= s < 500 for s in statuses), set(statuses)

    def other_count(body: bytes) -> float:
        return sum(s.value for s in _samples(body)
                   if s.name == "relayctl_gateway_requests_seconds_count"
                   and s.labels.get("version") == "other" and "projectconfigs" in s.labels.get("route", ""))

    status, body = _wait_for_metrics(system.url, lambda b: other_count(b) >= 4500)
    print(f"/metrics answered {status} with {len(body)} bytes")
    assert status == 200, body[:300]
    assert other_count(body) >= 4500
    assert any(s.labels.get("route") == "unmatched" for s in _samples(body))
    assert marker.encode() not in body
    requests = [s for s in _samples(body) if s.name == "relayctl_gateway_requests_seconds_count"]
    assert len(requests) < 100, len(requests)  # a few routes x statuses x versions, not one per request


def test_exposition_fits_the_nats_limit_however_many_series(system: SystemUnderTest) -> None:
    """A publisher flooding `rc.metrics.record` with tens of thousands of series (long tag
    values, new names, new processes) cannot make `/metrics` or `relayctl metrics` fail:
    the exposition is cut to fit the NATS reply limit and says so."""
    marker = "flood" + uuid.uuid4().hex[:8]

    async def flood() -> None:
        nc = await nats.connect(system.nats_url)
        try:
            for process in range(8):
                for start in range(0, 5000, 500):
                    points = [["counter", f"{marker}.m{i % 20}", 1.0,
                               {t: f"{marker}-{i}-" + t * 300 for t in "abcd"}, 1.0]
                              for i in range(start, start + 500)]
                    points += [["timer", f"{marker}.n{start + i}", 0.1, {}, 1.0] for i in range(500)]
                    await nc.publish(METRICS_RECORD, encode_batch(f"{marker}-{process}", points))
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(flood())
    status, body = _wait_for_metrics(system.url, lambda b: marker.encode() in b)
    print(f"/metrics answered {status} with {len(body)} bytes")
    assert status == 200, body[:300]
    assert marker.encode() in body
    assert len(body) < max_payload(system.nats_url)
    _samples(body)  # still a valid exposition
    assert b"# relayctl: exposition truncated" in body

    async def snapshot() -> Any:
        nc = await nats.connect(system.nats_url)
        try:
            return await bus_request(nc, "metrics.snapshot", {"format": "json"}, timeout=10)
        finally:
            await nc.close()

    snap = asyncio.run(snapshot())
    assert snap["truncated"] is True and snap["left_out"] > 0
    assert snap["store"]["overflow_points"] > 0
    assert any(key.startswith(f"{marker}.m0{{overflow=true}}") for key in snap["counters"]) or snap["left_out"]
    assert "counters" in system.cli_ok("metrics", "--json")
