"""No credential in any output (issue 10, item 18): the real `relayctl` console script, with
NATS down and URLs that carry a password, never prints the password - not in an error, not
in `up`'s messages, not in a service's log."""

from __future__ import annotations

import secrets
from pathlib import Path

from bus.embedded import free_port
from tests.system import RelayctlProcess


def dead_url(password: str, scheme: str = "nats", path: str = "") -> str:
    """A URL with credentials pointing at a port nothing listens on."""
    return f"{scheme}://operator:{password}@127.0.0.1:{free_port()}{path}"


def test_a_cli_call_with_nats_down_never_prints_the_password(tmp_path: Path) -> None:
    """`--nats-url` or RELAYCTL_NATS_URL with a password, NATS down: the error names the URL
    with the password masked, and the password appears nowhere."""
    password = "pw" + secrets.token_urlsafe(16)
    cli = RelayctlProcess(tmp_path / "data")
    url = dead_url(password)
    result = cli.run("--nats-url", url, "org", "create", "acme", timeout=60)
    print(result.stderr)
    assert result.returncode == 1
    assert password not in result.stdout + result.stderr
    assert "nats://operator:***@127.0.0.1:" in result.stderr

    cli.env["RELAYCTL_NATS_URL"] = dead_url(password) + "," + dead_url(password)
    cli.env["RELAYCTL_LOG_LEVEL"] = "debug"  # every log line the CLI can write
    result = cli.run("relay", "list", timeout=60)
    assert result.returncode == 1
    assert password not in result.stdout + result.stderr


def test_a_failing_up_never_prints_the_password(tmp_path: Path) -> None:
    """`up` against an external NATS that is down (URL with a password): it fails, saying
    which service did not start, and neither its output nor any service log holds the
    password."""
    password = "pw" + secrets.token_urlsafe(16)
    system = RelayctlProcess(tmp_path / "data")
    system.env["RELAYCTL_HEALTH_TIMEOUT"] = "20"
    try:
        result = system.run("up", "--detach", "--bind", system.bind, "--exclude", "llm",
                            "--nats-url", dead_url(password), timeout=120)
        print(result.stdout, result.stderr)
        assert result.returncode != 0
        assert "did not become healthy" in result.stderr or "cannot connect" in result.stderr
        assert password not in result.stdout + result.stderr
        logs = list((system.data_dir / "logs").glob("*.log"))
        assert logs
        for log in logs:
            assert password not in log.read_text(errors="replace"), log.name
    finally:
        system.run("down", timeout=60)
