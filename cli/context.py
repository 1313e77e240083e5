"""What every command needs: where the system is, how to ask it, how to print.

The NATS URL comes from `--nats-url`, else `RELAYCTL_NATS_URL`, else the state file that
`relayctl up` wrote in the data dir. Requests run on a short-lived connection; errors
become a message on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from bus.client import request_sequence
from bus.runtime import BUS_ERRORS, connect
from bus.settings import InvalidSetting, Settings
from messages.endpoints import is_query, retry_safe
from messages.errors import RelayctlError
from messages.redact import redact_url

STATE_FILE = "services.json"
# What talking to NATS from a command may meet: its errors, a timeout, no server, a URL it
# cannot use. A command that goes on without an answer (or says it plainly) catches these.
NATS_FAILURES: tuple[type[Exception], ...] = (*BUS_ERRORS, OSError, ValueError)


@dataclass
class Context:
    data_dir: Path
    nats_url_option: str | None
    redis_url_option: str | None = None
    # The stream sequence of this process's last stored change: later reads pass it as
    # `after`, so a command that writes, then reads, sees its write (messages/endpoints.py).
    last_write: int = 0
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """This process's settings (bus/settings.py), built once on first use: the global
        options over the environment; a value that does not parse is a usage error."""
        if self._settings is None:
            try:
                self._settings = Settings.load(RELAYCTL_DATA_DIR=str(self.data_dir),
                                               RELAYCTL_NATS_URL=self.nats_url_option)
            except InvalidSetting as exc:
                fail(exc.message, 2)
        return self._settings

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def nats_url(self) -> str:
        if self.nats_url_option:
            return self.nats_url_option
        url = self.load_state().get("nats")
        if not url:
            fail(f"no NATS to talk to: run `relayctl up` (data dir {self.data_dir}) or pass --nats-url")
        return str(url)

    @property
    def redis_url(self) -> str | None:
        return self.redis_url_option or self.load_state().get("redis")

    def request(self, message_type: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        async def run() -> Any:
            # 1, not 0: nats-py reads 0 as "retry forever", so a down NATS would hang the CLI.
            nc = await connect(self.nats_url, name="relayctl-cli", max_reconnect_attempts=1,
                               allow_reconnect=False, quiet=True)
            try:
                # Reads (and idempotent changes) may be asked again: another instance may
                # answer. Any other change is never sent twice from here.
                result, sequence = await request_sequence(
                    nc, message_type, payload, timeout=timeout, actor=cli_actor(),
                    retries=2 if retry_safe(message_type) else 0,
                    after=self.last_write if is_query(message_type) else 0)
                self.last_write = max(self.last_write, sequence)
                return result
            finally:
                await nc.close()

        try:
            return asyncio.run(run())
        except RelayctlError as exc:
            fail(exc.message, error_code=exc.code)


def cli_actor() -> str:
    """Who a change made from this shell is recorded as: `cli:<login>`."""
    try:
        return "cli:" + getpass.getuser()
    except (OSError, KeyError):  # no login name: no $USER and no passwd entry
        return "cli"


def json_requested() -> bool:
    """Whether the command being run was given `--json` (then errors are JSON too)."""
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("as_json"):
            return True
        ctx = ctx.parent
    return False


def error_document(code: str, message: str) -> str:
    """The one JSON document a `--json` command prints when it fails."""
    return json.dumps({"error": {"code": code, "message": redact_url(message)}}, sort_keys=True)


def fail(message: str, code: int = 1, error_code: str | None = None) -> NoReturn:
    """Print `message` on stderr and exit with `code`; with `--json` also as
    `{"error": {"code", "message"}}` on stdout (`error_code` names the kind: the wire
    error's code, else "usage" for exit 2 and "error" otherwise)."""
    # Every error the CLI prints passes here; none may show a URL's password.
    if json_requested():
        click.echo(error_document(error_code or ("usage" if code == 2 else "error"), message))
    # Always on stderr too (INTERFACE.md: errors go to stderr), also beside the JSON document.
    click.echo(f"error: {redact_url(message)}", err=True)
    sys.exit(code)


def rfc3339(ts: float | None) -> str | None:
    """A Unix time as RFC 3339 UTC with milliseconds (`2026-12-03T13:22:43.123Z`): the one
    timestamp format of every JSON document the CLI prints."""
    if ts is None:
        return None
    whole = int(ts)
    millis = min(999, round((ts - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def emit(as_json: bool, data: Any, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=None, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)


def parse_json_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"value is not valid JSON ({exc.msg}): {raw}", error_code="bad_request")
    except RecursionError:
        fail("value is nested too deeply", error_code="bad_request")


def split_project(ref: str) -> tuple[str, str]:
    org, sep, project = ref.partition("/")
    if not sep or not org or not project or "/" in project:
        fail(f"expected ORG/PROJECT, got `{ref}`", 2)
    return org, project


def parse_bind_option(bind: str) -> tuple[str, int]:
    """`--bind HOST:PORT`, or a usage error."""
    from gateway.binding import BindError, parse_bind

    try:
        return parse_bind(bind)
    except BindError as exc:
        fail(str(exc), 2)


def check_redis_urls(url: str | None, read_url: str | None, cluster: bool) -> None:
    """A URL the Redis client cannot use is a usage error at start, not an actor that dies."""
    from bus.redis_clients import RedisUrlError, check_url

    for one in (url, read_url):
        if one:
            try:
                check_url(one, cluster=cluster)
            except RedisUrlError as exc:
                fail(str(exc), 2)
