"""The gateway reads its settings from the process's one `Settings` (bus/settings.py), held
on the app (gateway/keys.py `SETTINGS`), never from the environment itself."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import web

from bus.settings import Settings
from gateway.api.auth import FAILURE_BURST, failure_limiter
from gateway.api.routes import public_url
from gateway.ingest import IngestSettings
from gateway.keys import SETTINGS


def test_ingest_settings_default_to_the_gateways_own_and_read_each_variable() -> None:
    assert IngestSettings.from_settings(Settings.load({})) == IngestSettings()
    read = IngestSettings.from_settings(Settings.load({
        "RELAYCTL_INGEST_MAX_ENVELOPE_SIZE": "1000", "RELAYCTL_INGEST_BODY_TIMEOUT": "5",
        "RELAYCTL_INGEST_MAX_IN_FLIGHT": "4000", "RELAYCTL_INGEST_KEY_CACHE_SECONDS": "0"}))
    assert read == IngestSettings(max_envelope=1000, body_timeout=5.0, max_in_flight=4000, key_fresh_for=0.0)


def test_the_failed_token_burst_is_a_setting() -> None:
    assert failure_limiter(Settings.load({})).burst == FAILURE_BURST
    assert failure_limiter(Settings.load({"RELAYCTL_API_AUTH_FAILURES": "3"})).burst == 3
    assert failure_limiter(Settings.load({"RELAYCTL_API_AUTH_FAILURES": "0"})).burst == 1  # never none at all


def request_to(app: web.Application) -> Any:
    return SimpleNamespace(app=app, scheme="http", host="gw.example:9000")


def test_keys_dsns_point_at_the_public_url_else_where_the_request_came_in() -> None:
    app = web.Application()
    app[SETTINGS] = Settings.load({})
    assert public_url(request_to(app)) == "http://gw.example:9000"
    app[SETTINGS] = Settings.load({"RELAYCTL_PUBLIC_URL": "https://sentry.example/"})
    assert public_url(request_to(app)) == "https://sentry.example"
