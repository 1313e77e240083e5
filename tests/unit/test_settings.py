"""bus/settings.py: one catalogue of settings, the README's table and the code agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus.settings import CATALOGUE, InvalidSetting, Settings

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\b(?:RELAYCTL|OPENAI|OTEL)_[A-Z0-9_]*")


def readme_table() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(NAME.findall(first_cell))
    return names


def test_the_readme_table_lists_exactly_the_catalogue() -> None:
    catalogue = {s.env for s in CATALOGUE}
    listed = readme_table()
    assert sorted(catalogue - listed) == [], "in bus/settings.py but not in the README's Configuration table"
    assert sorted(listed - catalogue) == [], "in the README's Configuration table but not in bus/settings.py"


def test_every_variable_the_code_names_is_in_the_catalogue() -> None:
    catalogue = {s.env for s in CATALOGUE}
    unknown: set[str] = set()
    for package in ("actors", "bus", "gateway", "cli", "domain", "messages"):
        for path in (ROOT / package).rglob("*.py"):
            for name in NAME.findall(path.read_text()):
                if name.endswith("_"):  # a prefix a module completes (RELAYCTL_HTTP_<name>)
                    if not any(env.startswith(name) for env in catalogue):
                        unknown.add(f"{name}* ({path.relative_to(ROOT)})")
                elif name not in catalogue:
                    unknown.add(f"{name} ({path.relative_to(ROOT)})")
    assert sorted(unknown) == []


def test_values_are_parsed_once_and_flags_win() -> None:
    settings = Settings.load({"RELAYCTL_STREAM_REPLICAS": "3", "RELAYCTL_UPSTREAM_METRICS": "true",
                              "RELAYCTL_NATS_URL": "nats://env:4222"},
                             RELAYCTL_NATS_URL="nats://flag:4222", RELAYCTL_REDIS_URL=None)
    assert settings.value("RELAYCTL_STREAM_REPLICAS") == 3
    assert settings.value("RELAYCTL_UPSTREAM_METRICS") is True
    assert settings.value("RELAYCTL_NATS_URL") == "nats://flag:4222"
    assert settings.value("RELAYCTL_REDIS_URL") is None
    assert Settings.load({}).value("RELAYCTL_METRICS_TTL") == 120.0  # the catalogue default
    assert settings.environment()["RELAYCTL_STREAM_REPLICAS"] == "3"


def test_a_bad_value_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidSetting, match="RELAYCTL_STREAM_REPLICAS='three' is not an integer"):
        Settings.load({"RELAYCTL_STREAM_REPLICAS": "three"})


def test_only_catalogued_settings_can_be_read() -> None:
    with pytest.raises(KeyError):
        Settings.load({}).value("RELAYCTL_MADE_UP")
    with pytest.raises(KeyError):
        Settings.load({}, RELAYCTL_MADE_UP="1")


def test_the_catalogue_defaults_are_the_gateways_own() -> None:
    """The HTTP limits' defaults are written twice (the dataclass and the catalogue): equal."""
    from gateway.limits import HttpLimits

    assert HttpLimits.from_settings(Settings.load({})) == HttpLimits()
    assert HttpLimits.from_settings(Settings.load({"RELAYCTL_HTTP_MAX_HEADERS": "7"})).max_headers == 7


def test_the_snapshot_interval_is_a_setting_of_the_command_handlers() -> None:
    """RELAYCTL_SNAPSHOT_EVERY: 10,000 commits by default, 0 for none, a negative count refused
    naming the variable; the command actor takes what it says."""
    from actors.commands import CommandActor, snapshot_interval

    assert snapshot_interval(Settings.load({})) == 10_000
    assert snapshot_interval(Settings.load({"RELAYCTL_SNAPSHOT_EVERY": "0"})) == 0
    assert snapshot_interval(Settings.load({"RELAYCTL_SNAPSHOT_EVERY": "2500"})) == 2500
    with pytest.raises(InvalidSetting, match="RELAYCTL_SNAPSHOT_EVERY=-1 is below 0"):
        snapshot_interval(Settings.load({"RELAYCTL_SNAPSHOT_EVERY": "-1"}))
    from bus.testing import ActorHarness

    with ActorHarness() as h:
        ref = h.start(CommandActor, snapshot_every=2500, serve=False)
        assert ref.proxy().snapshot_every.get() == 2500
        ref = h.start(CommandActor, serve=False)  # the setting's default, not a second copy of it
        assert ref.proxy().snapshot_every.get() == 10_000
