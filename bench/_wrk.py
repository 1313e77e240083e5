"""Load from `wrk` (a C load generator, so the Python servers under test get the cores):
a Lua script rotating pre-signed v3 bodies, each with its own relay signature."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

PATH = "/api/0/relays/projectconfigs/?version=3"
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkResult:
    requests_per_s: float
    p50: float  # seconds
    p99: float
    errors: int  # answers that were not 200
    socket_errors: int = 0  # connect/read/write errors and timeouts (wrk's own 2 s), on a loaded machine

    def keys_per_s(self, batch: int) -> float:
        return self.requests_per_s * batch


def median(results: list[WrkResult]) -> WrkResult:
    """Each figure's median over several runs."""
    from statistics import median as mid
    return WrkResult(mid([r.requests_per_s for r in results]), mid([r.p50 for r in results]),
                     mid([r.p99 for r in results]), sum(r.errors for r in results),
                     sum(r.socket_errors for r in results))


def signed_bodies(relay: Any, keys: list[str], batch: int, count: int = 64, seed: int = 17) -> list[tuple[bytes, str]]:
    """`count` v3 bodies of `batch` keys drawn from `keys`, each signed as a Relay signs."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        body = json.dumps({"publicKeys": rng.sample(keys, batch), "fullConfig": True}).encode()
        out.append((body, relay.secret_key.sign(body)))
    return out


def script(relay_id: str, bodies: list[tuple[bytes, str]], path: str = PATH, debug: bool = False) -> str:
    """The Lua script; `debug` prints the first body of each non-200 status to stderr (a
    response callback costs wrk CPU, so only then)."""
    # Formatted in init(): wrk.format fills in Host from the target only once wrk knows it.
    lines = ["local bodies = {}"]
    for body, signature in bodies:
        headers = {"Content-Type": "application/json", "X-Sentry-Relay-Id": relay_id,
                   "X-Sentry-Relay-Signature": signature}
        hdrs = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
        lines.append(f'bodies[#bodies + 1] = {{{{{hdrs}}}, [==[{body.decode()}]==]}}')
    lines += ["local reqs = {}", "local i = 0",
              "init = function(args)",
              f'  for n, b in ipairs(bodies) do reqs[n] = wrk.format("POST", "{path}", b[1], b[2]) end',
              "end",
              "request = function()", "  i = i % #reqs + 1", "  return reqs[i]", "end"]
    if debug:
        lines += ["local statuses = {}",
                  "response = function(status, headers, body)",
                  "  if status ~= 200 and not statuses[status] then statuses[status] = true;"
                  " io.stderr:write('status ' .. status .. ': ' .. string.sub(body, 1, 200) .. '\\n') end",
                  "end"]
    return "\n".join(lines) + "\n"


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run(url: str, lua: str, seconds: float, connections: int = 8, threads: int = 2) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        done = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                               "-s", f.name, url], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"wrk: {done.stderr.strip() or done.stdout}")
    out = done.stdout
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    socket_errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        socket_errors = sum(int(g) for g in m.groups())
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    return WrkResult(rps, p50, p99, errors, socket_errors)


def start(url: str, lua: str, seconds: float, connections: int = 8, threads: int = 2) -> tuple[subprocess.Popen[str], str]:
    """wrk in the background (for load during another measurement); the caller waits on it
    and removes the script file it is given back."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    proc = subprocess.Popen([wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", f.name, url],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, f.name
