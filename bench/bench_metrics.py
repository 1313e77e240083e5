"""A metrics path that is down never slows the caller: per-call cost of recording.

    python -m bench.bench_metrics [--points N]

Times `incr` + `timer` from the caller's side with four publish paths, in one run:
no metrics configured (the baseline), publishing to a real nats-server, a publish that
raises every time, and a publish that hangs forever (a dead metrics path).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

from bench._servers import servers
from bus import metrics
from bus.process import loop_publisher
from bus.runtime import BusRuntime


def per_call(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        metrics.incr("bench.counter", tags={"i": str(i % 10)})
        with metrics.timer("bench.timer"):
            pass
    return (time.perf_counter() - started) / n


def run_with(publish: Callable[[bytes], None] | None, n: int) -> tuple[float, int]:
    metrics.close()
    if publish is not None:
        metrics.configure(publish, process="bench", flush_interval=0.05)
    cost = per_call(n)
    dropped = metrics.metrics.instance.dropped_points if metrics.metrics.instance else 0
    metrics.close()
    return cost, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    hang = threading.Event()

    def raising(data: bytes) -> None:
        raise ConnectionError("metrics path down")

    def hanging(data: bytes) -> None:
        hang.wait()

    with servers() as (nats_server, _redis):
        runtime = BusRuntime(nats_server.url, name="bench").start()
        assert runtime.nc is not None
        paths: list[tuple[str, Callable[[bytes], None] | None]] = [
            ("not configured (baseline)", None),
            ("real NATS publish", loop_publisher(runtime.nc, runtime.loop, "rc.metrics.record")),
            ("publish raises", raising),
            ("publish hangs", hanging),
        ]
        baseline = None
        for name, publish in paths:
            cost, dropped = run_with(publish, args.points)
            baseline = baseline or cost
            print(f"{name:<26} {cost * 1e6:7.2f} us/call  ({cost / baseline:5.2f}x baseline)"
                  f"  dropped points: {dropped}")
        hang.set()
        runtime.close()


if __name__ == "__main__":
    main()
