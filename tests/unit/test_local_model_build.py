"""The local model's build options are the same wherever the project installs it."""

from __future__ import annotations

import re
from pathlib import Path

from bus import local_model

ROOT = Path(__file__).resolve().parents[2]


def _assignments(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'([A-Z_]+)=("[^"]*"|\S+)', line)}


def test_the_quick_start_and_ci_build_llama_server_portably_with_bounded_jobs() -> None:
    """README's test command and .ci/run set exactly `BUILD_ENV` on the install of the local-ai extra."""
    for path in (ROOT / "README.md", ROOT / ".ci" / "run"):
        lines = [line for line in path.read_text().splitlines() if "local-ai]" in line and "install" in line]
        assert lines, f"{path.name} installs no local-ai extra"
        for line in lines:
            found = _assignments(line.split("pip install")[0].split("python -m")[0])
            assert {k: found.get(k) for k in local_model.BUILD_ENV} == local_model.BUILD_ENV, path.name
    assert "-DGGML_NATIVE=OFF" in local_model.BUILD_ENV["CMAKE_ARGS"]


def test_the_extra_pins_the_requirement_the_commands_rebuild() -> None:
    """pyproject's local-ai extra pins exactly the version `reinstall_command` rebuilds."""
    assert f'"{local_model.REQUIREMENT}"' in (ROOT / "pyproject.toml").read_text()
    assert local_model.REQUIREMENT in local_model.reinstall_command()
    assert "--no-cache-dir" in local_model.reinstall_command()
