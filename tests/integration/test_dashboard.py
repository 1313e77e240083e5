"""The Grafana dashboard (issue 16 item 16): every query of docs/grafana/relayctl.json names
metrics - and labels - that a running system really exposes on `/metrics`, once it has
served relays, stored changes, answered an AI suggestion, ingested and forwarded."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.ai import AIConfig
from actors.worker import ACTOR_NAMES, Worker
from bus.embedded import ServerProcess
from gateway.keys import AI_LIMITER
from tests.ai_helpers import error_event, start_ai_worker
from tests.openai_stub import OpenAIStub
from tests.sentry_stub import SentryStub
from tests.system import SystemUnderTest, http_request

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "relayctl.json"
METRIC = re.compile(r"\b(relayctl_[a-z0-9_]+)\b")
GROUPING = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHERS = re.compile(r"(relayctl_[a-z0-9_]+)\{([^}]*)\}")


def queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "relayctl" and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in ("Config requests: keys by outcome", "Config propagation p50 / p99", "Event appends by command",
                   "Append conflicts (retried)", "Actor inbox depth", "Actor restarts (1 h)",
                   "Dependencies reachable (per gateway)", "AI suggestions by result", "Ingested envelopes by outcome"):
        assert wanted in titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert len(queries()) >= 20


@pytest.fixture(scope="module")
def exercised(nats_server: ServerProcess, redis_server: ServerProcess,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A whole system that has done everything the dashboard shows; its gateway's URL."""
    downstream = SentryStub().start()
    sut: SystemUnderTest | None = None
    ai: Worker | None = None
    with OpenAIStub(reply_text="Set `rate` before you read it.") as model:
        try:
            sut = SystemUnderTest(nats_server.url, redis_server.url,
                                  actors=[a for a in ACTOR_NAMES if a != "ai"]).start()
            assert sut.gateway is not None
            limiter = sut.gateway.app[AI_LIMITER]
            limiter.rate, limiter.burst = 1000.0, 1000
            ai = start_ai_worker(nats_server.url, redis_server.url,
                                 AIConfig(base_url=model.url, api_key="k", model="stub", timeout=10))
            exercise(sut, downstream, tmp_path_factory.mktemp("dashboard"))
            yield sut.url
        finally:
            if sut is not None:
                sut.stop()
            if ai is not None:
                ai.stop()
            downstream.stop()


def exercise(sut: SystemUnderTest, downstream: SentryStub, tmp: Path) -> None:
    relay = sut.registered_relay()
    project = sut.new_project()
    ref = f"{project['org']}/{project['slug']}"
    key = project["publicKey"]
    first = relay.poll([key], lambda r: key in r.get("configs", {}))
    relay.configs([key], revisions=[first["configs"][key]["rev"]])  # unchanged
    sut.cli_ok("project", "option", "set", ref, "sentry:origins", '["example.com"]')  # an append, a propagation
    # an AI suggestion, answered by the model
    user = "dash-" + uuid.uuid4().hex[:8]
    sut.cli_ok("user", "create", user, "--superuser")
    token = sut.cli_ok("token", "create", user, "--json")["token"]
    event = error_event()
    (tmp / "event.json").write_text(json.dumps(event))
    sut.cli_ok("event", "store", str(tmp / "event.json"), "--project", ref, "--json")
    status, _, body = http_request(
        f"{sut.url}/api/0/projects/{project['org']}/{project['slug']}/events/{event['event_id']}/ai-fix-suggest/",
        headers={"Authorization": f"Bearer {token}"}, timeout=20)
    assert status == 200, body
    # an envelope ingested, then forwarded downstream
    sut.cli_ok("project", "option", "set", ref, "relayctl:forward_dsn", json.dumps(downstream.dsn()))
    envelope_id = uuid.uuid4().hex
    payload = json.dumps({"event_id": envelope_id, "message": "dashboard"}).encode()
    envelope = (json.dumps({"event_id": envelope_id}).encode() + b"\n"
                + json.dumps({"type": "event", "length": len(payload)}).encode() + b"\n" + payload + b"\n")
    status, _, body = http_request(f"{sut.url}/api/{project['id']}/envelope/", "POST", envelope,
                                   {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7"})
    assert status == 200, body


def exposition(url: str) -> dict[str, set[str]]:
    """Every sample name on `/metrics` with the label names it carries."""
    status, _, body = http_request(url + "/metrics")
    assert status == 200, body
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def problems(exposed: dict[str, set[str]]) -> list[str]:
    found = []
    for title, expr in queries():
        metrics = set(METRIC.findall(expr))
        for name in metrics - set(exposed):
            found.append(f"{title}: {name} is not exposed")
        labels = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
        for _name, matchers in MATCHERS.findall(expr):
            labels |= {m.split("=")[0].strip() for m in matchers.split(",") if m.strip()}
        for label in labels - {"le"}:
            if not any(label in exposed.get(name, set()) for name in metrics):
                found.append(f"{title}: no series of {sorted(metrics)} has the label {label}")
        if "histogram_quantile" in expr and not all(n.endswith("_bucket") for n in metrics):
            found.append(f"{title}: a quantile of something that is not a histogram")
    return found


def test_every_dashboard_query_uses_metrics_the_system_exposes(exercised: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        left = problems(exposition(exercised))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # forwarding and metric batches arrive a moment later
    assert left == []


def test_the_problem_finder_finds_problems() -> None:
    """The check itself: a made-up name, a label no series has, a quantile of a counter."""
    exposed = {"relayctl_relay_cache_total": {"process", "result"}}
    real = queries
    try:
        globals()["queries"] = lambda: [("a", "sum(rate(relayctl_nope_total[5m]))"),
                                        ("b", "sum by (colour) (rate(relayctl_relay_cache_total[5m]))"),
                                        ("c", "histogram_quantile(0.9, rate(relayctl_relay_cache_total[5m]))")]
        assert problems(exposed) == [
            "a: relayctl_nope_total is not exposed",
            "b: no series of ['relayctl_relay_cache_total'] has the label colour",
            "c: a quantile of something that is not a histogram"]
    finally:
        globals()["queries"] = real
