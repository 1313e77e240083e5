"""The data plane (issue 12, DATAPLANE.md): envelopes from real clients - the sentry-sdk
package, the sentry-cli binary, a Relay - stored in RC_INGEST before the gateway answers
200; what is refused is refused with a 4xx naming why; CORS for browser SDKs; relay
outcomes and metrics. One running system for the module."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import brotli
import pytest
import sentry_sdk
import zstandard

from bus.ingest_store import HEADER_BLOB, read_envelope
from bus.runtime import connect
from gateway.ingest import IngestSettings
from gateway.keys import INGEST
from messages.subjects import INGEST_OUTCOMES, INGEST_STREAM, ingest_subject
from tests.system import RelayClient, SystemUnderTest, http_request

# -- helpers ------------------------------------------------------------------------------------


def stored(system: SystemUnderTest, subject: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message of the ingest stream on `subject` (headers, envelope read back whole)."""

    async def go() -> list[tuple[dict[str, str], bytes]]:
        nc = await connect(system.nats_url)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(INGEST_STREAM, subjects_filter=subject)
            except Exception:
                return []
            count = (info.state.subjects or {}).get(subject, 0)
            out: list[tuple[dict[str, str], bytes]] = []
            if not count:
                return out
            sub = await js.subscribe(subject, ordered_consumer=True)
            try:
                while len(out) < count:
                    msg = await sub.next_msg(timeout=5)
                    out.append((dict(msg.headers or {}), await read_envelope(js, msg)))
            finally:
                await sub.unsubscribe()
            return out
        finally:
            await nc.close()

    return asyncio.run(go())


def envelope(event_id: str | None = None, *, items: list[tuple[dict[str, Any], bytes]] | None = None,
             **header: Any) -> bytes:
    head = dict(header)
    if event_id:
        head["event_id"] = event_id
    items = items if items is not None else [
        ({"type": "event"}, json.dumps({"message": "hello", "level": "error"}).encode())]
    out = json.dumps(head).encode() + b"\n"
    for item, payload in items:
        out += json.dumps({**item, "length": len(payload)} if "length" not in item else item).encode() + b"\n"
        out += payload + b"\n"
    return out


def auth(public_key: str) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={public_key}, sentry_version=7, sentry_client=test/1.0",
            "Content-Type": "application/x-sentry-envelope"}


def post(system: SystemUnderTest, project: dict[str, Any], body: bytes, *, headers: dict[str, str] | None = None,
         path: str = "envelope", query: str = "") -> tuple[int, dict[str, str], Any]:
    status, hdrs, data = http_request(f"{system.url}/api/{project['id']}/{path}/{query}", "POST", body,
                                      {**auth(project["publicKey"]), **(headers or {})}, timeout=30)
    try:
        return status, hdrs, json.loads(data)
    except ValueError:
        return status, hdrs, data


@pytest.fixture(scope="module")
def project(system: SystemUnderTest) -> dict[str, Any]:
    return system.new_project()


@pytest.fixture(scope="module")
def relay(system: SystemUnderTest) -> RelayClient:
    return system.registered_relay(internal=True)


@pytest.fixture
def small_cap(system: SystemUnderTest) -> Iterator[int]:
    """The envelope size cap lowered to 1 MiB for one test."""
    assert system.gateway is not None
    ingest = system.gateway.app[INGEST]
    before = ingest.settings
    ingest.settings = IngestSettings(max_envelope=1024 * 1024)
    yield 1024 * 1024
    ingest.settings = before


# -- real clients -------------------------------------------------------------------------------

def test_sentry_sdk_capture_exception_lands_in_the_stream(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """The sentry-sdk package, given a DSN that points at relayctl: the envelope of a captured
    exception is stored whole, with the key and project it came with."""
    dsn = f"http://{project['publicKey']}@127.0.0.1:{system.gateway.port}/{project['id']}"  # type: ignore[union-attr]
    client = sentry_sdk.Client(dsn=dsn, default_integrations=False, auto_enabling_integrations=False)
    with sentry_sdk.new_scope() as scope:
        scope.set_client(client)
        try:
            raise ValueError("ingest me")
        except ValueError as exc:
            event_id = sentry_sdk.capture_exception(exc)
    client.flush(timeout=10)
    client.close()
    assert event_id
    messages = [m for m in stored(system, ingest_subject(project["id"])) if m[0].get("Rc-Event-Id") == event_id]
    assert len(messages) == 1
    headers, data = messages[0]
    assert headers["Nats-Msg-Id"] == f"{project['id']}:{event_id}"
    assert headers["Rc-Public-Key"] == project["publicKey"] and headers["Rc-Project-Id"] == str(project["id"])
    assert headers["Rc-Received-At"].endswith("Z") and "Rc-Relay-Id" not in headers
    parsed = sentry_sdk.envelope.Envelope.deserialize(data)
    event = parsed.get_event()
    assert event is not None and event["exception"]["values"][0]["value"] == "ingest me"


def test_sentry_cli_send_event_lands_in_the_stream(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """The real sentry-cli binary (PyPI package sentry-cli): `send-event` is stored."""
    binary = shutil.which("sentry-cli") or os.path.join(os.path.dirname(sys.executable), "sentry-cli")
    if not os.path.exists(binary):
        pytest.fail("sentry-cli is missing: pip install sentry-cli (the test extra)")
    dsn = f"http://{project['publicKey']}@127.0.0.1:{system.gateway.port}/{project['id']}"  # type: ignore[union-attr]
    message = "from sentry-cli " + uuid.uuid4().hex
    result = subprocess.run([binary, "send-event", "-m", message], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SENTRY_DSN": dsn, "SENTRY_LOAD_DOTENV": "0"})
    assert result.returncode == 0, (result.stdout, result.stderr)
    found = [data for _, data in stored(system, ingest_subject(project["id"])) if message.encode() in data]
    assert len(found) == 1


def test_an_envelope_sent_as_relay_sends_it(system: SystemUnderTest, project: dict[str, Any],
                                            relay: RelayClient) -> None:
    """zstd (Relay's default encoding), the SDK's auth, X-Sentry-Relay-Id and the signature
    over an empty body: stored with the relay's id and the SDK's address from X-Forwarded-For."""
    event_id = uuid.uuid4().hex
    body = envelope(event_id, sent_at="2026-12-03T13:30:00Z")
    headers = {"Content-Encoding": "zstd", "X-Sentry-Relay-Id": relay.relay_id,
               "X-Sentry-Relay-Signature": relay.secret_key.sign(b""), "X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    status, _, data = post(system, project, zstandard.ZstdCompressor().compress(body), headers=headers)
    assert (status, data) == (200, {"id": event_id})
    headers_stored, data_stored = [m for m in stored(system, ingest_subject(project["id"]))
                                   if m[0].get("Rc-Event-Id") == event_id][0]
    assert data_stored == body
    assert headers_stored["Rc-Relay-Id"] == relay.relay_id and headers_stored["Rc-Client-Ip"] == "203.0.113.7"


def test_relay_headers_that_prove_nothing_make_an_sdk_envelope(system: SystemUnderTest, project: dict[str, Any],
                                                                relay: RelayClient) -> None:
    """A signature that fails, or the id of a relay this system does not know: the envelope
    is stored as an SDK's (no relay id, the TCP peer's address), never refused - Relay
    would drop it."""
    other = RelayClient(system.url)
    for relay_id, signer in ((relay.relay_id, other), (other.relay_id, other)):
        event_id = uuid.uuid4().hex
        headers = {"X-Sentry-Relay-Id": relay_id, "X-Sentry-Relay-Signature": signer.secret_key.sign(b""),
                   "X-Forwarded-For": "203.0.113.9"}
        status, _, data = post(system, project, envelope(event_id), headers=headers)
        assert (status, data) == (200, {"id": event_id})
        [(stored_headers, _)] = [m for m in stored(system, ingest_subject(project["id"]))
                                 if m[0].get("Rc-Event-Id") == event_id]
        assert "Rc-Relay-Id" not in stored_headers and stored_headers["Rc-Client-Ip"] == "127.0.0.1"


def test_a_banned_relays_envelopes_are_refused(system: SystemUnderTest, project: dict[str, Any]) -> None:
    banned = system.registered_relay(internal=True)
    system.cli_ok("relay", "deny", "--", banned.public_key_str)
    headers = {"X-Sentry-Relay-Id": banned.relay_id, "X-Sentry-Relay-Signature": banned.secret_key.sign(b"")}
    assert wait_status(lambda: post(system, project, envelope(uuid.uuid4().hex), headers=headers)[0], 403)
    status, hdrs, data = post(system, project, envelope(uuid.uuid4().hex), headers=headers)
    assert status == 403 and data["detail"] == "relay is banned" and hdrs["x-sentry-error"] == "relay is banned"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity"])
def test_every_content_encoding_is_decoded(system: SystemUnderTest, project: dict[str, Any], encoding: str) -> None:
    event_id = uuid.uuid4().hex
    body = envelope(event_id)
    encoded = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
               "identity": lambda b: b}[encoding](body)
    status, _, data = post(system, project, encoded, headers={"Content-Encoding": encoding})
    assert (status, data) == (200, {"id": event_id})
    assert [d for h, d in stored(system, ingest_subject(project["id"])) if h.get("Rc-Event-Id") == event_id] == [body]


def test_a_legacy_store_request_is_wrapped_into_an_envelope(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """POST /store/ with a JSON event (and the base64 of its zlib form, as old SDKs send it)."""
    for encode in (lambda b: b, lambda b: __import__("base64").b64encode(zlib.compress(b))):
        event_id = uuid.uuid4().hex
        status, _, data = post(system, project, encode(json.dumps({"event_id": event_id, "message": "old"}).encode()),
                               path="store", headers={"Content-Type": "application/json"})
        assert (status, data) == (200, {"id": event_id})
        [(headers, stored_body)] = [m for m in stored(system, ingest_subject(project["id"]))
                                    if m[0].get("Rc-Event-Id") == event_id]
        event = sentry_sdk.envelope.Envelope.deserialize(stored_body).get_event()
        assert event == {"event_id": event_id, "message": "old"}
    status, _, data = post(system, project, b"[1, 2]", path="store")
    assert status == 400 and "JSON object" in data["detail"]


# -- auth ---------------------------------------------------------------------------------------

def test_the_key_may_come_from_the_query_or_the_envelope_dsn(system: SystemUnderTest,
                                                             project: dict[str, Any]) -> None:
    url = f"{system.url}/api/{project['id']}/envelope/"
    event_id = uuid.uuid4().hex
    status, _, _ = http_request(url + f"?sentry_key={project['publicKey']}&sentry_version=7", "POST",
                                envelope(event_id))
    assert status == 200
    dsn = f"http://{project['publicKey']}@example.invalid/{project['id']}"
    status, _, _ = http_request(url, "POST", envelope(uuid.uuid4().hex, dsn=dsn))
    assert status == 200


def test_unknown_disabled_missing_or_foreign_keys_are_refused(system: SystemUnderTest,
                                                              project: dict[str, Any]) -> None:
    url = f"{system.url}/api/{project['id']}/envelope/"
    body = envelope(uuid.uuid4().hex)
    status, _, data = http_request(url, "POST", body)
    assert status == 401 and "missing authorization" in json.loads(data)["detail"]
    status, _, data = http_request(url, "POST", body, auth("0" * 32))
    assert status == 403 and json.loads(data)["detail"] == "the public key is unknown or disabled"
    other = system.new_project()
    status, _, data = http_request(url, "POST", body, auth(other["publicKey"]))
    assert status == 403 and json.loads(data)["detail"] == "the public key does not belong to this project"
    system.cli_ok("key", "disable", other["publicKey"])
    other_url = f"{system.url}/api/{other['id']}/envelope/"
    refused: list[str] = []

    def send() -> int:  # the gateway reads a key's config again at most a second later
        event_id = uuid.uuid4().hex
        status = http_request(other_url, "POST", envelope(event_id), auth(other["publicKey"]))[0]
        if status == 403:
            refused.append(event_id)
        return status

    assert wait_status(send, 403, tries=50)
    assert not {h.get("Rc-Event-Id") for h, _ in stored(system, ingest_subject(other["id"]))} & set(refused)


def wait_status(call: Any, status: int, tries: int = 50) -> bool:
    import time

    for _ in range(tries):
        if call() == status:
            return True
        time.sleep(0.1)
    return False


# -- malformed input ------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "detail"), [
    (b"", "empty envelope"),
    (b"not json\n{}", "the envelope header is not valid JSON"),
    (b'{"event_id": "nope"}\n{"type":"event","length":2}\n{}', "event_id is not a UUID"),
    (b'{}\n{"type":"event","length":50}\n{}', "item 1 (event): length 50 exceeds the 2 bytes left"),
    (b'{}\n{"type":"attachment","length":2}\nabcdef\n', "item 1 (attachment): payload is longer than its length 2"),
    (b'{}\n{"length":2}\n{}', "item 1 has no type"),
    (b'{}\n{"type":"event","length":-1}\n{}', "length must be a non-negative integer"),
    (b'{}\n', "the envelope has no items"),
    (b'{}\n{"type":"event","length":5}\nnope!', "the payload of item 1 (event) is not valid JSON"),
])
def test_a_malformed_envelope_is_a_400_naming_the_problem(system: SystemUnderTest, project: dict[str, Any],
                                                          body: bytes, detail: str) -> None:
    status, _, data = post(system, project, body)
    assert status == 400, data
    assert detail in data["detail"]


def test_an_undecodable_or_unknown_encoding_is_refused(system: SystemUnderTest, project: dict[str, Any]) -> None:
    status, _, data = post(system, project, b"\x1f\x8b definitely not gzip", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in data["detail"]
    status, _, data = post(system, project, envelope(), headers={"Content-Encoding": "compress"})
    assert status == 415 and "compress" in data["detail"]


def test_an_oversized_envelope_is_refused(system: SystemUnderTest, project: dict[str, Any], small_cap: int) -> None:
    big = envelope(items=[({"type": "attachment"}, b"x" * (small_cap + 1))])
    status, _, data = post(system, project, big)
    assert status == 413 and f"larger than {small_cap} bytes" in data["detail"]


def test_past_the_in_flight_budget_the_answer_is_503(system: SystemUnderTest, project: dict[str, Any]) -> None:
    """What all requests hold at once is bounded: past it Relay is told to retry (503)."""
    assert system.gateway is not None
    ingest = system.gateway.app[INGEST]
    before = ingest.settings
    ingest.settings = IngestSettings(max_in_flight=1024)
    try:
        status, headers, data = post(system, project, envelope(items=[({"type": "attachment"}, b"x" * 4096)]))
    finally:
        ingest.settings = before
    assert status == 503 and headers["retry-after"] and "retry" in data["detail"]
    assert ingest.in_flight == 0
    assert post(system, project, envelope(uuid.uuid4().hex))[0] == 200


def _bomb(encoding: str, size: int) -> bytes:
    """`size` decompressed bytes of an envelope (a header, then an attachment of zeros)."""
    head = b'{}\n{"type":"attachment","length":%d}\n' % size
    chunk = bytes(1024 * 1024)
    if encoding == "zstd":
        compressor = zstandard.ZstdCompressor(level=1).compressobj()
        out = compressor.compress(head) + b"".join(compressor.compress(chunk) for _ in range(size // len(chunk)))
        return out + compressor.flush()
    if encoding == "gzip":
        deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
        out = deflate.compress(head) + b"".join(deflate.compress(chunk) for _ in range(size // len(chunk)))
        return out + deflate.flush()
    if encoding == "br":
        packer = brotli.Compressor(quality=1)
        out = packer.process(head) + b"".join(packer.process(chunk) for _ in range(size // len(chunk)))
        return out + packer.finish()
    raise AssertionError(encoding)


@pytest.mark.parametrize("encoding", ["zstd", "gzip", "br"])
def test_a_zip_bomb_stops_at_the_cap(system: SystemUnderTest, project: dict[str, Any], small_cap: int,
                                     encoding: str) -> None:
    """512 MiB of zeros in a few hundred KB: refused with 413 once the decompressed size
    passes the cap, and the gateway (in this process) never holds anything near it."""
    bomb = _bomb(encoding, 512 * 1024 * 1024)
    assert len(bomb) < 4 * 1024 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, _, data = post(system, project, bomb, headers={"Content-Encoding": encoding})
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert status == 413 and "decompressed" in data["detail"]
    assert grown_mib < 64, f"peak memory grew by {grown_mib:.0f} MiB"


# -- durability -----------------------------------------------------------------------------------

def test_a_retried_envelope_is_stored_once(system: SystemUnderTest, project: dict[str, Any]) -> None:
    event_id = uuid.uuid4().hex
    body = envelope(event_id)
    for _ in range(3):
        status, _, data = post(system, project, body)
        assert (status, data) == (200, {"id": event_id})
    assert len([h for h, _ in stored(system, ingest_subject(project["id"])) if h.get("Rc-Event-Id") == event_id]) == 1


def test_an_envelope_over_the_nats_message_limit_is_stored_whole(system: SystemUnderTest,
                                                                 project: dict[str, Any]) -> None:
    """12 MiB of random bytes (over the 8 MB max_payload of the test server, and over the 10 MiB
    body limit of the other routes): kept in the blob bucket, read back
    byte for byte."""
    event_id = uuid.uuid4().hex
    body = envelope(event_id, items=[({"type": "event"}, b'{"message":"big"}'),
                                     ({"type": "attachment", "filename": "dump.bin"}, os.urandom(12 * 1024 * 1024))])
    status, _, data = post(system, project, zstandard.ZstdCompressor().compress(body),
                           headers={"Content-Encoding": "zstd"})
    assert (status, data) == (200, {"id": event_id})
    [(headers, data_stored)] = [m for m in stored(system, ingest_subject(project["id"]))
                                if m[0].get("Rc-Event-Id") == event_id]
    assert headers[HEADER_BLOB] and headers["Rc-Size"] == str(len(body))
    assert data_stored == body


# -- CORS -----------------------------------------------------------------------------------------

def test_a_browser_preflight_and_post_follow_the_projects_origins(system: SystemUnderTest) -> None:
    project = system.new_project()
    ref = f"{project['org']}/{project['slug']}"
    system.cli_ok("project", "option", "set", ref, "sentry:origins", json.dumps(["https://app.example.com"]))
    url = f"{system.url}/api/{project['id']}/envelope/?sentry_key={project['publicKey']}&sentry_version=7"
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}

    def allowed_preflight() -> int:
        status, headers, _ = http_request(url, "OPTIONS", headers=preflight)
        return status if headers.get("access-control-allow-origin") == "https://app.example.com" else -1

    assert wait_status(allowed_preflight, 200)
    status, headers, _ = http_request(url, "OPTIONS", headers={**preflight, "Origin": "https://evil.example"})
    assert status == 403
    assert wait_status(lambda: http_request(url, "POST", envelope(uuid.uuid4().hex),
                                            {"Origin": "https://evil.example"})[0], 403)
    event_id = uuid.uuid4().hex
    status, headers, data = http_request(url, "POST", envelope(event_id), {"Origin": "https://app.example.com",
                                                                           "Content-Type": "text/plain"})
    assert status == 200 and json.loads(data) == {"id": event_id}
    assert headers["access-control-allow-origin"] == "https://app.example.com"
    assert "x-sentry-rate-limits" in headers["access-control-expose-headers"]


# -- rate limits ----------------------------------------------------------------------------------

def test_a_project_rate_limit_answers_429_for_sdks_but_not_for_relays(system: SystemUnderTest,
                                                                      relay: RelayClient) -> None:
    """The config's quotas, counted in Redis: over the count the SDK gets 429 with
    Retry-After and X-Sentry-Rate-Limits; a relay's envelopes are not limited again."""
    project = system.new_project()
    ref = f"{project['org']}/{project['slug']}"
    system.cli_ok("project", "option", "set", ref, "quotas:project-rate-limit", json.dumps({"window": 3600,
                                                                                            "count": 2}))

    def limited() -> bool:
        status, _, _ = post(system, project, envelope(uuid.uuid4().hex))
        return status == 429

    assert wait_status(lambda: 429 if limited() else 200, 429)
    status, headers, data = post(system, project, envelope(uuid.uuid4().hex))
    assert status == 429 and "rate limited" in data["detail"]
    assert 0 < int(headers["retry-after"]) <= 3600
    assert headers["x-sentry-rate-limits"].endswith(":project:project_quota")

    def refused_reported() -> int:  # reported as Relay reports outcomes, for `project stats`
        batches = [json.loads(d)["outcomes"] for h, d in stored(system, INGEST_OUTCOMES) if "Rc-Relay-Id" not in h]
        return sum(o["quantity"] for batch in batches for o in batch if o["project_id"] == project["id"]
                   and o["outcome"] == 2 and o["reason"] == "project_quota" and o["category"] == 1)
    assert wait_status(lambda: 200 if refused_reported() >= 2 else 0, 200)
    signed = {"X-Sentry-Relay-Id": relay.relay_id, "X-Sentry-Relay-Signature": relay.secret_key.sign(b"")}
    status, _, _ = post(system, project, envelope(uuid.uuid4().hex), headers=signed)
    assert status == 200
    # a session-only envelope is not in the quota's categories
    status, _, _ = post(system, project, envelope(items=[({"type": "session"}, b'{"sid":"x"}')]))
    assert status == 200


# -- relay outcomes and metrics -------------------------------------------------------------------

def test_relay_outcomes_are_stored_for_internal_relays_only(system: SystemUnderTest, relay: RelayClient) -> None:
    outcomes = {"outcomes": [{"timestamp": "2026-12-03T13:30:00Z", "org_id": 1, "project_id": 2, "key_id": 3,
                              "outcome": 2, "reason": "key_quota", "category": 1, "quantity": 1,
                              "event_id": uuid.uuid4().hex}]}
    status, data = relay.post("outcomes/", outcomes)
    assert (status, data) == (202, {})
    found = [json.loads(d) for h, d in stored(system, INGEST_OUTCOMES) if h.get("Rc-Relay-Id") == relay.relay_id]
    assert outcomes in found
    status, data = relay.post("metrics/", {"buckets": {}})
    assert (status, data) == (202, {})
    status, data = relay.post("outcomes/", {"outcomes": "nope"})
    assert status == 400
    external = system.registered_relay(internal=False)
    status, data = external.post("outcomes/", outcomes)
    assert status == 403 and "internal" in data["detail"]
    status, data = relay.post("outcomes/", outcomes, sign=False)
    assert status == 401


def test_a_key_rate_limit_set_from_the_cli_limits_sdks_and_travels_in_export(system: SystemUnderTest,
                                                                            relay: RelayClient,
                                                                            tmp_path: Any) -> None:
    """`relayctl key rate-limit KEY 1 3600`: the config's key quota, enforced at ingest for
    the SDK (429 naming the key quota), not for the relay; `--clear` lifts it; export
    carries `rateLimit` and import sets it."""
    project = system.new_project()
    out = system.cli_ok("key", "rate-limit", project["publicKey"], "1", "3600", "--json")
    assert out == {"publicKey": project["publicKey"], "rateLimit": {"count": 1, "window": 3600}}
    assert wait_status(lambda: post(system, project, envelope(uuid.uuid4().hex))[0], 429)
    status, headers, _ = post(system, project, envelope(uuid.uuid4().hex))
    assert status == 429 and headers["x-sentry-rate-limits"].endswith(":key:key_quota")
    signed = {"X-Sentry-Relay-Id": relay.relay_id, "X-Sentry-Relay-Signature": relay.secret_key.sign(b"")}
    assert post(system, project, envelope(uuid.uuid4().hex), headers=signed)[0] == 200

    exported = json.loads(system.cli_ok("export", "-"))
    [spec] = [o for o in exported["orgs"] if o["slug"] == project["org"]]
    assert spec["projects"][0]["keys"][0]["rateLimit"] == {"count": 1, "window": 3600}

    system.cli_ok("key", "rate-limit", project["publicKey"], "--clear")
    assert wait_status(lambda: post(system, project, envelope(uuid.uuid4().hex))[0], 200)
    exported = json.loads(system.cli_ok("export", "-"))
    [spec] = [o for o in exported["orgs"] if o["slug"] == project["org"]]
    assert "rateLimit" not in spec["projects"][0]["keys"][0]

    spec["projects"][0]["keys"][0]["rateLimit"] = {"count": 5, "window": 60}
    path = tmp_path / "org.json"
    path.write_text(json.dumps({"orgs": [spec]}))
    system.cli_ok("import", str(path))
    exported = json.loads(system.cli_ok("export", "-"))
    [spec] = [o for o in exported["orgs"] if o["slug"] == project["org"]]
    assert spec["projects"][0]["keys"][0]["rateLimit"] == {"count": 5, "window": 60}


@pytest.mark.parametrize(("args", "message"), [
    (("1",), "needs both a count and a window"),
    (("1", "0"), "window must be between 1"),
    (("--", "-1", "60"), "count must be between 0"),
    (("1", "60", "--clear"), "not both"),
])
def test_a_bad_key_rate_limit_is_refused(system: SystemUnderTest, project: dict[str, Any], args: tuple[str, ...],
                                         message: str) -> None:
    result = system.cli("key", "rate-limit", project["publicKey"], *args)
    assert result.exit_code != 0 and message in result.stderr, (result.stdout, result.stderr)


# -- protocol fidelity (Sentry's own relay tests, translated) -------------------------------------

def test_a_projectconfigs_body_without_keys_is_an_empty_batch(relay: RelayClient) -> None:
    for version in (2, 3):
        status, data = relay.post(f"projectconfigs/?version={version}", {})
        assert status == 200 and data["configs"] == {}, (version, data)
    status, data = relay.post("projectconfigs/?version=1", {})
    assert (status, data) == (200, {"configs": {}})


def test_one_non_string_key_does_not_fail_the_batch(system: SystemUnderTest, relay: RelayClient,
                                                    project: dict[str, Any]) -> None:
    key = project["publicKey"]
    response = relay.poll([key], lambda r: key in r["configs"])  # built and cached
    assert response["configs"][key]["disabled"] is False
    status, data = relay.post("projectconfigs/?version=3", {"publicKeys": [1, None, key, {"x": 1}]})
    assert status == 200 and list(data["configs"]) == [key]


def test_the_global_config_carries_span_op_defaults(relay: RelayClient) -> None:
    import sentry_relay

    response = relay.poll([], lambda r: r.get("globalStatus") == "ready", **{"global": True})
    assert response["global"]["spanOpDefaults"]["rules"][0]["value"] == "message"
    assert sentry_relay.normalize_global_config(response["global"]) == response["global"]


def test_relay_usage_is_recorded_per_version(system: SystemUnderTest) -> None:
    relay = RelayClient(system.url, version="24.10.0")
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    relay.version = "24.11.0"
    relay.register()
    [listed] = [r for r in system.cli_ok("relay", "list", "--json")["relays"]
                if r["publicKey"] == relay.public_key_str]
    usage = {u["version"]: u for u in listed["usage"]}
    assert set(usage) == {"24.10.0", "24.11.0"}
    assert all(u["relayId"] == relay.relay_id and u["firstSeen"] <= u["lastSeen"] for u in usage.values())
    assert usage["24.10.0"]["lastSeen"] <= usage["24.11.0"]["firstSeen"]
