"""A sentry-sdk transport that publishes envelopes instead of sending them.

Each relayctl process reports its own errors with sentry-sdk. `init_sentry` installs
`PublishingTransport`, which serializes every envelope and hands the bytes to an
injected `publish(bytes)` (wired to the transport subject on NATS); the transport
actor (`actors.transport_mux`) then forwards them to the configured DSNs.

Unsafe events. An error raised while relayctl processes its *own* internal project
must not be sent back into that project through Relay (it would loop). The marker
travels inside the event as tags, so it survives the hop to the transport actor:

- ``relayctl.unsafe`` = ``"true"``: the scope was marked unsafe (`unsafe_scope`,
  `mark_scope_unsafe`);
- ``relayctl.processing_project_id`` = ``"<id>"``: the event was raised while
  processing that project (`processing_project`, `mark_processing_project`); the
  transport actor compares it with the internal project id.

Envelopes without an event (sessions, check-ins from other services) can carry the
envelope header ``"relayctl_unsafe": true`` instead. `actors.transport_mux` checks all
three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import sentry_sdk
import structlog
from sentry_sdk.envelope import Envelope
from sentry_sdk.scope import Scope
from sentry_sdk.transport import Transport

__all__ = [
    "DUMMY_DSN",
    "PROCESSING_PROJECT_TAG",
    "UNSAFE_ENVELOPE_HEADER",
    "UNSAFE_TAG",
    "PublishingTransport",
    "init_sentry",
    "mark_processing_project",
    "mark_scope_unsafe",
    "processing_project",
    "unsafe_scope",
]

log = structlog.get_logger(__name__)

UNSAFE_TAG: Final = "relayctl.unsafe"
PROCESSING_PROJECT_TAG: Final = "relayctl.processing_project_id"
UNSAFE_ENVELOPE_HEADER: Final = "relayctl_unsafe"

# The SDK only captures when a DSN is set; the real DSNs live in the transport actor.
DUMMY_DSN: Final = "https://public@relayctl.invalid/1"

Publish = Callable[[bytes], None]


class PublishingTransport(Transport):
    """Serializes each envelope and passes it to `publish`; never raises.

    `publish` runs on the thread that captured the event, so it must not block
    (e.g. schedule a NATS publish on the event loop and return).
    """

    def __init__(self, publish: Publish, options: dict[str, Any] | None = None) -> None:
        super().__init__(options if options is not None else {"dsn": DUMMY_DSN})
        self._publish = publish

    def capture_envelope(self, envelope: Envelope) -> None:
        try:
            self._publish(envelope.serialize())
        except Exception:  # the SDK's boundary: error reporting must never become the error
            log.warning("sentry.envelope_unpublished", exc_info=True)


def init_sentry(
    publish: Publish,
    *,
    process: str,
    release: str | None = None,
    **options: Any,
) -> None:
    """Initialize sentry-sdk for this process with a `PublishingTransport`.

    The process name becomes the ``server_name`` and a ``process`` tag; extra
    keyword arguments go to `sentry_sdk.init` unchanged.
    """
    sentry_sdk.init(
        dsn=DUMMY_DSN,
        transport=PublishingTransport(publish, {"dsn": DUMMY_DSN}),
        release=release,
        server_name=process,
        # Error reports only: the auto-enabled integrations (aiohttp, redis, ...) wrap every
        # request and command, which costs the relay hot path measurably for nothing we use.
        auto_enabling_integrations=False,
        traces_sample_rate=None,
        **options,
    )
    sentry_sdk.get_global_scope().set_tag("process", process)


def mark_scope_unsafe(scope: Scope | None = None) -> None:
    """Mark `scope` (default: the current scope) so its events skip the relay DSN."""
    (scope or sentry_sdk.get_current_scope()).set_tag(UNSAFE_TAG, "true")


def mark_processing_project(project_id: int, scope: Scope | None = None) -> None:
    """Record on `scope` (default: the current scope) which project is being processed."""
    (scope or sentry_sdk.get_current_scope()).set_tag(PROCESSING_PROJECT_TAG, str(project_id))


@contextmanager
def unsafe_scope() -> Iterator[Scope]:
    """A new scope whose events skip the relay DSN, for the duration of the block.

    The tag lives on the block's scope: capture inside the block, not after it.
    """
    with sentry_sdk.new_scope() as scope:
        mark_scope_unsafe(scope)
        yield scope


@contextmanager
def processing_project(project_id: int) -> Iterator[Scope]:
    """A new scope recording that `project_id` is being processed in the block."""
    with sentry_sdk.new_scope() as scope:
        mark_processing_project(project_id, scope)
        yield scope
