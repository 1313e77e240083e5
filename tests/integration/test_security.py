"""The gateway under hostile clients: HTTP limits (header sizes, slow bodies, registration
rate per IP), answers that never leak internals, and the replay rules of relay signatures
and registration tokens that the protocol tests do not already cover."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Self

import pytest
from aiohttp import web

from bus.embedded import free_port
from gateway.app import create_app
from gateway.keys import REGISTRATIONS, SECRET
from gateway.limits import HttpLimits, TokenBuckets, serve
from tests.integration.test_relay_registration import backdated_token, sign_at
from tests.system import RelayClient, SystemUnderTest, http_request

LEAKS = (b"Traceback", b'File "', b".py", b"Exception", b"aiohttp", b"nats", b"redis")


class LimitedGateway:
    """A gateway of its own with chosen limits, on the module's system."""

    def __init__(self, system: SystemUnderTest, limits: HttpLimits) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.limits = limits
        self.runner = web.AppRunner(create_app(system.nats_url, system.redis_url, instrument_process=False,
                                               limits=limits), access_log=None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()

        async def go() -> None:
            await serve(self.runner, "127.0.0.1", self.port, self.limits)
        asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def limited(system: SystemUnderTest) -> Iterator[LimitedGateway]:
    with LimitedGateway(system, HttpLimits(body_timeout=1.0, header_timeout=1.0, register_rate=1.0,
                                           register_burst=3, max_headers=20)) as gateway:
        yield gateway


def raw_exchange(port: int, data: bytes, *, pause_after: float = 0.0, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send raw bytes (then stay silent for `pause_after` seconds); the answer and its delay."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks), time.monotonic() - started


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def leaks(response: bytes) -> list[bytes]:
    """What of `LEAKS` the response body shows."""
    body = response.partition(b"\r\n\r\n")[2]
    return [leak for leak in LEAKS if leak in body]


def registered_relay(system: SystemUnderTest) -> RelayClient:
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    relay.register()
    return relay


# -- the rate limiter itself -----------------------------------------------------------------------

def test_token_bucket_grants_a_burst_then_the_rate() -> None:
    """A bucket grants `burst` at once, then one token per 1/rate seconds, per key."""
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0
    now[0] += 0.5
    assert buckets.take("a") == 0.0 and buckets.take("a") > 0


def test_token_buckets_stay_bounded() -> None:
    """Past `max_keys` clients the table is trimmed instead of growing without bound."""
    now = [0.0]
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=100, clock=lambda: now[0])
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
        now[0] += 0.01
    assert len(buckets._buckets) <= 100


# -- HTTP limits ---------------------------------------------------------------------------------------

def test_registration_is_rate_limited_per_ip(system: SystemUnderTest, limited: LimitedGateway) -> None:
    """Past its burst, an IP's registration calls answer 429 with Retry-After; other
    endpoints are not limited, and the bucket refills at the configured rate (the buckets'
    clock stopped, then moved on by the refill time: no waiting)."""
    relay = RelayClient(limited.url)
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    buckets = limited.runner.app[REGISTRATIONS]
    now = [time.monotonic()]
    buckets.clock = lambda: now[0]
    try:
        statuses = [relay.challenge()[0] for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
        status, headers, body = http_request(limited.url + "/api/0/relays/register/challenge/", "POST", b"{}",
                                             {"Content-Type": "application/json"})
        assert status == 429 and int(headers["retry-after"]) == 1  # one token a second
        assert json.loads(body)["detail"]
        assert http_request(limited.url + "/api/0/relays/live/")[0] == 200
        now[0] += 1.0
        assert relay.challenge()[0] == 200
        assert relay.challenge()[0] == 429
    finally:  # the clock runs on from where it stood, for the module's other tests
        offset = now[0] - time.monotonic()
        buckets.clock = lambda: time.monotonic() + offset


def test_a_stalled_body_is_cut_off_with_408(limited: LimitedGateway) -> None:
    """A client that sends headers and then stalls its body gets 408 after the body timeout,
    and the connection is closed."""
    head = (b"POST /api/0/relays/projectconfigs/?version=3 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"publicKeys\":")
    response, took = raw_exchange(limited.port, head)
    assert status_of(response) == 408 and 0.9 <= took < 5
    assert b"connection: close" in response.lower()
    assert not leaks(response)


def test_a_trickled_chunked_body_is_cut_off_with_408(limited: LimitedGateway) -> None:
    """A chunked body that never ends is cut off too: the timeout covers the whole body."""
    head = (b"POST /api/0/relays/register/challenge/ HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
    response, took = raw_exchange(limited.port, head)
    assert status_of(response) == 408 and took < 5


def test_trickled_headers_are_cut_off(limited: LimitedGateway) -> None:
    """A client that never finishes its request head (slowloris) is disconnected after the
    header timeout, while it keeps sending bytes; a prompt client on a fresh connection is served."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        closed = False
        for _ in range(40):  # one byte of one header value every 0.1 s, never the line end
            time.sleep(0.1)
            try:
                sock.sendall(b"y")
                sock.settimeout(0.01)
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    took = time.monotonic() - started
    print(f"trickling client disconnected after {took:.2f} s")
    assert closed and 0.9 <= took < 3
    assert http_request(limited.url + "/api/0/relays/live/")[0] == 200


@pytest.mark.parametrize("request_bytes", [
    b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /api/0/relays/live/?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(100)) + b"\r\n",
], ids=["header-field", "request-line", "header-count"])
def test_oversized_headers_are_refused(limited: LimitedGateway, request_bytes: bytes) -> None:
    """An over-long header field or request line, or too many headers, is refused with a
    4xx before any handler runs."""
    response, _ = raw_exchange(limited.port, request_bytes)
    assert 400 <= status_of(response) < 500
    assert not leaks(response)


@pytest.mark.parametrize("request_bytes", [
    b"BREW /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/0/relays/live/ HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /api/0/relays/projectconfigs/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/0/relays/projectconfigs/ HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /api/0/relays/projectconfigs/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    (b"POST /api/0/relays/projectconfigs/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
    (b"POST /api/0/relays/projectconfigs/ HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
     b"Content-Length: 4\r\n\r\nnope"),
    b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\x00\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
], ids=["unknown-method", "bad-version", "negative-length", "huge-length", "bad-chunk",
        "length-and-chunked", "bad-gzip", "binary-header", "tls-hello"])
def test_malformed_http_never_leaks_internals(system: SystemUnderTest, limited: LimitedGateway,
                                              request_bytes: bytes) -> None:
    """Malformed HTTP answers a 4xx (or a closed connection) without a stack trace,
    a file name or a library name, on the default gateway as on a limited one."""
    for port in (limited.port, system.gateway.port if system.gateway else limited.port):
        response, _ = raw_exchange(port, request_bytes, timeout=5)
        if response:
            assert 400 <= status_of(response) < 500, response[:300]
            assert not leaks(response), response[:500]


def test_body_over_the_limit_is_413(system: SystemUnderTest) -> None:
    """A body over 10 MiB answers 413 with a JSON detail, signed or not."""
    relay = registered_relay(system)
    status, data = relay.post("projectconfigs/?version=3", b"[" + b"0," * (6 * 1024 * 1024) + b"0]")
    assert status == 413 and data["detail"]


# -- signatures and registration replays -------------------------------------------------------------

def test_signature_dated_in_the_future_is_401(system: SystemUnderTest) -> None:
    """A signature stamped in the future (which would stay replayable for longer than 300 s)
    answers 401 on every signed call."""
    relay = registered_relay(system)
    raw = json.dumps({"publicKeys": [], "global": False}).encode()
    for ahead in (400, 86_400):
        status, data = relay.post("projectconfigs/?version=3", raw,
                                  signature=sign_at(relay.secret_key, raw, time.time() + ahead))
        assert status == 401 and data["detail"]


def test_captured_signed_call_is_bound_to_its_body_and_relay(system: SystemUnderTest) -> None:
    """A captured signature cannot be reused with another body or under another relay id."""
    relay = registered_relay(system)
    other = registered_relay(system)
    raw = json.dumps({"publicKeys": []}).encode()
    signature = relay.secret_key.sign(raw)
    assert relay.post("projectconfigs/?version=3", raw, signature=signature)[0] == 200
    assert relay.post("projectconfigs/?version=3", raw + b" ", signature=signature)[0] == 401
    assert other.post("projectconfigs/?version=3", raw, signature=signature)[0] == 401


def test_registration_response_replayed_after_60s_is_refused(system: SystemUnderTest) -> None:
    """A registration response captured more than 60 s ago (its token and its signature
    that old) is refused when replayed, and registers nothing."""
    assert system.gateway is not None
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    status, challenge = relay.challenge()
    assert status == 200
    token = backdated_token(challenge["token"], system.gateway.app[SECRET], seconds=90)
    raw = json.dumps({"relay_id": relay.relay_id, "token": token, "version": relay.version}).encode()
    captured = sign_at(relay.secret_key, raw, time.time() - 90)
    status, data = relay.post("register/response/", raw, signature=captured)
    assert status in (400, 401) and data["detail"]
    fresh_signature_old_token = relay.secret_key.sign(raw)
    assert relay.post("register/response/", raw, signature=fresh_signature_old_token) == (
        401, {"detail": "Challenge expired"})
    assert relay.configs([], version=3)[0] == 401


def test_challenge_replayed_after_60s_is_refused(system: SystemUnderTest) -> None:
    """A challenge request captured more than 60 s ago is refused when replayed."""
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    raw = json.dumps({"relay_id": relay.relay_id, "public_key": relay.public_key_str,
                      "version": relay.version}).encode()
    status, data = relay.post("register/challenge/", raw, signature=sign_at(relay.secret_key, raw, time.time() - 61))
    assert status == 400 and data["detail"]


def test_token_of_another_relay_cannot_register_either(system: SystemUnderTest) -> None:
    """Neither relay id of a token issued to relay A lets relay B register with it."""
    a, b = RelayClient(system.url), RelayClient(system.url)
    for relay in (a, b):
        system.cli_ok("relay", "allow", "--internal", "--", relay.public_key_str)
    token = a.challenge()[1]["token"]
    for relay_id in (a.relay_id, b.relay_id):
        status, _ = b.post("register/response/", {"relay_id": relay_id, "token": token, "version": b.version},
                           relay_id=relay_id)
        assert status == 400
    assert b.configs([], version=3)[0] == 401 and a.configs([], version=3)[0] == 401


def test_banned_relay_with_a_valid_signature_gets_nothing(system: SystemUnderTest) -> None:
    """A banned relay is refused on every endpoint, registration included, whatever it signs."""
    relay = registered_relay(system)
    system.cli_ok("relay", "deny", "--", relay.public_key_str)
    for path, body in (("projectconfigs/?version=3", {"publicKeys": []}),
                       ("projectconfigs/?version=2", {"publicKeys": []}),
                       ("projectconfigs/?version=1", {"projects": []}),
                       ("publickeys/", {"relay_ids": [relay.relay_id]}),
                       ("projectids/", {"publicKeys": []})):
        assert relay.post(path, body)[0] == 401, path
    status, data = relay.challenge()
    assert status == 403 and data["relay"] == "stop"
