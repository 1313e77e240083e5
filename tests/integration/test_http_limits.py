"""Connection-level HTTP limits of the gateway (issue 10, item 15): the header deadline holds
for every request of a keep-alive connection, not only the first, and one client address
cannot hold more than its share of connections. A gateway of its own with short limits, on
the module's running system."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from bus.settings import Settings
from gateway.limits import HttpLimits
from tests.integration.test_security import LimitedGateway, status_of
from tests.system import SystemUnderTest, http_request

LIVE = b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\n\r\n"
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def limited(system: SystemUnderTest) -> Iterator[LimitedGateway]:
    with LimitedGateway(system, HttpLimits(header_timeout=1.0, body_timeout=1.0,
                                           max_connections_per_ip=MAX_CONNECTIONS)) as gateway:
        yield gateway


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers and Content-Length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def trickle_until_closed(sock: socket.socket, seconds: float) -> bool:
    """Send one byte of an unfinished header every 0.1 s; True once the server closed."""
    sock.sendall(b"GET /api/0/relays/live/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
        try:
            sock.sendall(b"y")
            sock.settimeout(0.01)
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def test_the_header_deadline_holds_for_every_request_on_a_connection(limited: LimitedGateway) -> None:
    """After a first request is served, a second request head trickled on the same
    keep-alive connection is cut off after the header timeout (not the 75 s keep-alive)."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(LIVE)
            assert status_of(read_response(sock)) == 200
        started = time.monotonic()
        closed = trickle_until_closed(sock, 4.0)
        took = time.monotonic() - started
    print(f"trickled second request head cut off after {took:.2f} s")
    assert closed and 0.9 <= took < 3


def test_an_idle_keep_alive_connection_is_not_cut_by_the_header_deadline(limited: LimitedGateway) -> None:
    """Waiting between requests is the keep-alive timeout's business: a connection quiet for
    longer than the header timeout still serves its next request."""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as sock:
        sock.sendall(LIVE)
        assert status_of(read_response(sock)) == 200
        time.sleep(2.5)
        sock.sendall(LIVE)
        assert status_of(read_response(sock)) == 200


def test_connections_per_client_address_are_capped(limited: LimitedGateway) -> None:
    """Past `max_connections_per_ip` open connections from one address, a new one gets a
    clear 429 and is closed; once one closes, the address may connect again."""
    held = [socket.create_connection(("127.0.0.1", limited.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # every one is served, and stays open (keep-alive)
            sock.sendall(LIVE)
            assert status_of(read_response(sock)) == 200
        with socket.create_connection(("127.0.0.1", limited.port), timeout=10) as extra:
            extra.sendall(LIVE)
            refusal = read_response(extra)
            assert status_of(refusal) == 429, refusal
            assert b"connection: close" in refusal.lower()
            assert "connections" in json.loads(refusal.partition(b"\r\n\r\n")[2])["detail"]
            assert extra.recv(1) == b""
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server notices the closed sockets
        status = http_request(limited.url + "/api/0/relays/live/")[0]
        if status == 200:
            break
        time.sleep(0.1)
    assert status == 200


def test_connection_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`RELAYCTL_HTTP_MAX_CONNECTIONS_PER_IP` sets the cap like every other HTTP limit."""
    monkeypatch.setenv("RELAYCTL_HTTP_MAX_CONNECTIONS_PER_IP", "7")
    assert HttpLimits.from_settings(Settings.load()).max_connections_per_ip == 7
