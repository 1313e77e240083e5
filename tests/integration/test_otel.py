"""OpenTelemetry export of the traces (issue 16 item 17, the `otel` extra): the gateway's
span of a relay request and the command actor's span of the registration it caused are
exported with the trace and span ids the logs carry, as one tree under the caller's span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bus import otel
from messages import tracing
from tests.system import RelayClient, SystemUnderTest

pytest.importorskip("opentelemetry.sdk.trace")

CALLER = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"


@pytest.fixture
def exported() -> Iterator[Any]:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    otel.install(otel._provider("relayctl-test", SimpleSpanProcessor(memory)))
    try:
        yield memory
    finally:
        otel.reset()


def test_spans_carry_the_ids_of_the_logs_and_form_one_tree(system: SystemUnderTest, exported: Any) -> None:
    relay = RelayClient(system.url)
    system.cli_ok("relay", "allow", "--", relay.public_key_str)
    status, data = relay.post("register/challenge/", {"relay_id": relay.relay_id, "public_key": relay.public_key_str,
                                                      "version": relay.version}, headers={"traceparent": CALLER})
    assert status == 200, data
    status, data = relay.post("register/response/", {"relay_id": relay.relay_id, "token": data["token"],
                                                     "version": relay.version}, headers={"traceparent": CALLER})
    assert status == 200, data
    caller = tracing.parse(CALLER)
    assert caller is not None
    spans = [s for s in exported.get_finished_spans() if f"{s.context.trace_id:032x}" == caller.trace_id]
    by_name = {s.name: s for s in spans}
    gateway = by_name["POST /api/0/relays/register/response/"]
    assert gateway.parent is not None and f"{gateway.parent.span_id:016x}" == caller.span_id
    assert gateway.attributes["http.response.status_code"] == 200
    actor = by_name["commands relay.register"]
    assert actor.parent is not None and actor.parent.span_id == gateway.context.span_id
    assert actor.attributes["relayctl.message_type"] == "relay.register"
    assert {s.resource.attributes["service.name"] for s in spans} == {"relayctl-test"}


def test_nothing_is_exported_without_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert otel.configure("relayctl-test") is False and not otel.enabled()
    with otel.span("x", "1" * 32, "2" * 16) as span:
        assert span is None
