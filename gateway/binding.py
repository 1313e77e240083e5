"""Which address a gateway listens on, and whether it may: one port, one system.

Gateways of one system may share a port (SO_REUSEPORT: the kernel spreads connections over
them). Linux lets any socket of the same user join a SO_REUSEPORT port, so without a check a
second system started by the same user on the same address silently takes half of the
first one's requests. So a gateway binds only when nothing listens on the port, or when
what listens there is a gateway of its own system: it asks the holder's `/_health/`, whose
answer carries the system id (`system`, a random id kept in the system's JetStream KV
bucket, so every gateway of a system - on any machine - has the same one). The check and
the bind happen under a per-user lock file for that port, so two gateways of different
systems starting at the same moment cannot both find the port free.

`relayctl up` runs the same check before it starts anything (`port_problem` with no
system id: any holder is a conflict), so a second system on a taken port fails at once,
with nothing left running.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import json
import os
import socket
import stat
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
PROBE_TIMEOUT = 2.0


class BindError(ValueError):
    """--bind is not PORT, HOST:PORT or [IPV6]:PORT."""


def parse_bind(bind: str) -> tuple[str, int]:
    """`3000`, `HOST:3000`, `[::1]:3000` -> (host, port); a bare port listens on 127.0.0.1."""
    text = bind.strip()
    if text.isdigit():
        host, port_text = DEFAULT_HOST, text
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise BindError(f"--bind must be HOST:PORT or PORT, got `{bind}`")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise BindError(f"--bind: write an IPv6 address in brackets, e.g. [::1]:3000, got `{bind}`")
        host = host or DEFAULT_HOST
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise BindError(f"--bind: port must be 1-65535, got {port}")
    return host, port


def url_host(host: str) -> str:
    """The host to connect to for a listening address (a wildcard is reached on loopback)."""
    if host in ("0.0.0.0", ""):
        return DEFAULT_HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def bind_conflict(host: str, port: int) -> OSError | None:
    """Why a socket without SO_REUSEPORT cannot bind host:port (something listens), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the gateway's own socket: a connection in TIME_WAIT is no conflict.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def holder_system(host: str, port: int) -> tuple[bool, str | None]:
    """Ask what listens on host:port for its `/_health/`: (a relayctl gateway answered, its system id)."""
    try:
        with urllib.request.urlopen(f"http://{url_host(host)}:{port}/_health/", timeout=PROBE_TIMEOUT) as resp:
            body = resp.read(65536)
    except urllib.error.HTTPError as exc:  # a 503 from an unhealthy gateway still names its system
        body = exc.read(65536)
    except (OSError, http.client.HTTPException, ValueError):  # nothing listens, or not HTTP
        return False, None
    try:
        answer = json.loads(body)
    except ValueError:
        return False, None
    system = answer.get("system") if isinstance(answer, dict) else None
    return isinstance(system, str), system if isinstance(system, str) else None


def port_problem(host: str, port: int, system_id: str | None) -> str | None:
    """None when a gateway of `system_id` may listen on host:port, else why it may not.

    It may when nothing listens there, or when a gateway of the same system does (they
    share the port). With `system_id` None any listener is a conflict.
    """
    conflict = bind_conflict(host, port)
    if conflict is None:
        return None
    address = f"{host}:{port}"
    if conflict.errno != errno.EADDRINUSE:
        return f"cannot listen on {address}: {conflict.strerror or conflict}"
    is_gateway, holder = holder_system(host, port)
    if system_id is not None and holder == system_id:
        return None
    advice = "stop it, or choose another address with --bind HOST:PORT"
    if is_gateway:
        return f"{address} is in use by the gateway of another relayctl system (system {holder}); {advice}"
    return f"{address} is in use by another program; {advice}"


class PortLock:
    """An exclusive lock on one port number for this user, held from the check to the bind."""

    def __init__(self, port: int) -> None:
        directory = _lock_dir()
        self.path = directory / f"port-{port}.lock" if directory else None
        self.fd: int | None = None

    def acquire(self) -> PortLock:
        if self.path is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _lock_dir() -> Path | None:
    """A directory of this user's only (not one another user prepared), or None: no lock then."""
    path = Path(tempfile.gettempdir()) / f"relayctl-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return path
