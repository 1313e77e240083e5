"""Shared set-up for benchmarks: throwaway nats-server and redis-server in a temp dir."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from bus.embedded import ServerProcess, start_nats, start_redis


@contextlib.contextmanager
def servers() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with tempfile.TemporaryDirectory(prefix="relayctl-bench-") as tmp:
        nats = start_nats(Path(tmp) / "nats")
        redis = start_redis(Path(tmp) / "redis")
        try:
            yield nats, redis
        finally:
            nats.stop()
            redis.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
