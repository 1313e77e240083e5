"""Ctrl-C during `relayctl import` (issue 16 item 9): the real process, a real SIGINT. It
says how many orgs are stored and that running it again completes the rest, which it does."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.system import RELAYCTL, Relayctl, SystemUnderTest

ORGS = 300


@pytest.fixture(scope="module")
def cli(system: SystemUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Relayctl:
    return Relayctl(system.nats_url, tmp_path_factory.mktemp("cli") / "data")


def stored(system: SystemUnderTest, slug: str) -> bool:
    return system.cli("org", "option", "get", slug, "ai:policy").exit_code == 0


def test_interrupted_import_says_what_is_stored_and_a_rerun_completes_it(
        cli: Relayctl, system: SystemUnderTest, tmp_path: Path) -> None:
    prefix = f"int-{uuid.uuid4().hex[:6]}"
    spec = {"orgs": [{"slug": f"{prefix}-{i}", "projects": [{"slug": "web"}, {"slug": "api"}]}
                     for i in range(ORGS)]}
    path = tmp_path / "orgs.json"
    path.write_text(json.dumps(spec))
    proc = subprocess.Popen([RELAYCTL, "--data-dir", str(cli.data_dir), "--nats-url", cli.nats_url, "import",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env)
    try:
        deadline = time.monotonic() + 60
        while not stored(system, f"{prefix}-3"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the import did not get going"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr and "Aborted!" not in stderr, stderr
    assert f"of {ORGS} orgs in {path} are stored" in stderr, stderr
    assert "Run the same `relayctl import` again" in stderr
    done = int(stderr.split("the first ", 1)[1].split(" ", 1)[0])
    assert 4 <= done < ORGS, stderr
    # What it says is stored is stored; the last org is stored only if it got its answer.
    assert all(stored(system, f"{prefix}-{i}") for i in (0, done - 1))
    assert not stored(system, f"{prefix}-{ORGS - 1}")

    again = cli.ok("import", str(path), "--json")
    assert again["orgs"] in (ORGS - done, ORGS - done - 1), again  # the org in flight may have landed
    assert again["projects"] == 2 * again["orgs"]
    assert all(stored(system, f"{prefix}-{i}") for i in (done, ORGS - 1))
    assert cli.ok("import", str(path), "--json")["orgs"] == 0
