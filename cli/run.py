"""`worker` and `gateway`: one process of the system, as `up` runs it (cli/services.py) or
as an operator runs it by hand. Each builds its settings once, from its flags over its
environment (bus/settings.py), and passes them down.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import click

from bus.settings import InvalidSetting, Settings
from cli.context import Context, check_redis_urls, fail, parse_bind_option


def process_settings(**flags: Any) -> Settings:
    """The process's settings, once: its flags over its environment (bus/settings.py)."""
    try:
        return Settings.load(**flags)
    except InvalidSetting as exc:
        fail(exc.message)


def _start_process(name: str, service: str, settings: Settings) -> None:
    """What every process does first: its logging and its span export (only with the `otel`
    extra and an endpoint), from its settings."""
    from bus import otel
    from cli.logging import setup_logging

    setup_logging(process=name, settings=settings)
    otel.configure(service, settings)


def run_worker(ctx: Context, actors: tuple[str, ...], nats_url: str | None, redis_url: str | None,
               redis_cluster: bool | None) -> None:
    """Start the actors asked for and serve until SIGTERM/SIGINT; exit 1 when one gave up."""
    from actors.worker import ACTOR_NAMES, Worker

    names = list(actors) or list(ACTOR_NAMES)
    unknown = [n for n in names if n not in ACTOR_NAMES]
    if unknown:
        fail(f"unknown actor {', '.join(unknown)}; known: {', '.join(ACTOR_NAMES)}", 2)
    if nats_url:
        ctx.nats_url_option = nats_url
    settings = process_settings(RELAYCTL_NATS_URL=ctx.nats_url, RELAYCTL_REDIS_URL=redis_url or ctx.redis_url,
                                RELAYCTL_REDIS_CLUSTER=redis_cluster)
    _start_process("worker:" + ",".join(names), "relayctl-worker", settings)
    exit_code = []

    def give_up(name: str) -> None:
        exit_code.append(1)
        os.kill(os.getpid(), signal.SIGTERM)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    check_redis_urls(settings.value("RELAYCTL_REDIS_URL"), None, settings.value("RELAYCTL_REDIS_CLUSTER"))
    try:
        running = Worker(names, settings.value("RELAYCTL_NATS_URL"), settings.value("RELAYCTL_REDIS_URL"),
                         process_name=",".join(names), on_give_up=give_up, settings=settings).start()
    except Exception as exc:  # the process's boundary: any failure to start is said, not a traceback
        fail(f"worker failed to start: {exc}")
    stop.wait()
    running.stop()
    sys.exit(exit_code[0] if exit_code else 0)


def run_gateway_process(ctx: Context, bind: str, nats_url: str | None, redis_url: str | None,
                        redis_cluster: bool | None, redis_read_url: str | None) -> None:
    """Serve HTTP on `bind` until stopped; a port held by another system is a clear error."""
    from gateway.app import PortInUse, run_gateway

    if nats_url:
        ctx.nats_url_option = nats_url
    host, port = parse_bind_option(bind)
    settings = process_settings(RELAYCTL_NATS_URL=ctx.nats_url, RELAYCTL_REDIS_URL=redis_url or ctx.redis_url,
                                RELAYCTL_REDIS_CLUSTER=redis_cluster, RELAYCTL_REDIS_READ_URL=redis_read_url)
    _start_process("gateway", "relayctl-gateway", settings)
    check_redis_urls(settings.value("RELAYCTL_REDIS_URL"), settings.value("RELAYCTL_REDIS_READ_URL"),
                     settings.value("RELAYCTL_REDIS_CLUSTER"))
    try:
        run_gateway(host, port, settings.value("RELAYCTL_NATS_URL"), settings.value("RELAYCTL_REDIS_URL"),
                    data_dir=ctx.data_dir, settings=settings)
    except PortInUse as exc:
        fail(str(exc))


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("actors", nargs=-1)
    @click.option("--nats-url", "nats_url", default=None, help="The NATS to serve (default: the global option).")
    @click.option("--redis-url", envvar="RELAYCTL_REDIS_URL", default=None, help="The Redis of the config cache.")
    @click.option("--redis-cluster", is_flag=True, default=None, envvar="RELAYCTL_REDIS_CLUSTER",
                  help="The Redis URL names Redis Cluster start nodes (comma-separated).")
    @click.pass_obj
    def worker(ctx: Context, actors: tuple[str, ...], nats_url: str | None, redis_url: str | None,
               redis_cluster: bool | None) -> None:
        """Run actor instances (default: all) in this process."""
        run_worker(ctx, actors, nats_url, redis_url, redis_cluster)

    @main.command()
    @click.option("--bind", default="127.0.0.1:3000", show_default=True, help="HOST:PORT to listen on.")
    @click.option("--nats-url", "nats_url", default=None, help="The NATS to serve (default: the global option).")
    @click.option("--redis-url", envvar="RELAYCTL_REDIS_URL", default=None, help="The Redis of the config cache.")
    @click.option("--redis-cluster", is_flag=True, default=None, envvar="RELAYCTL_REDIS_CLUSTER",
                  help="The Redis URL names Redis Cluster start nodes (comma-separated).")
    @click.option("--redis-read-url", envvar="RELAYCTL_REDIS_READ_URL", default=None,
                  help="Gateways read the config cache here (replicas); writes go to --redis-url.")
    @click.pass_obj
    def gateway(ctx: Context, bind: str, nats_url: str | None, redis_url: str | None, redis_cluster: bool | None,
                redis_read_url: str | None) -> None:
        """Run one gateway process."""
        run_gateway_process(ctx, bind, nats_url, redis_url, redis_cluster, redis_read_url)
