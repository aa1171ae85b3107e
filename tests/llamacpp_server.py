"""llama-cpp-python's OpenAI-compatible server, built once into the cache folder and
started on loopback for the served-deployment tests.

llama-cpp-python is a source distribution on PyPI: installing it compiles llama.cpp
(cmake + a C++ compiler on 2 cores: measured 6 min beside the suite's last tests, 33 min
on a machine loaded by other jobs).
`ensure()` builds the wheel once into `<cache>/servers/wheels/` and installs it into
`<cache>/servers/llama-cpp-python-VERSION/` (with the server's few extra dependencies),
beside the venv, so the venv is untouched and every later run reuses it (installing
from the cached wheel takes seconds). The tests build it only under CI (CI=true) or with
SPECENGINE_BUILD_SERVERS=1 — a first build on a fresh machine is then paid once inside
that run — and otherwise skip with the reason and the command that builds it.

Run as a script: `--ensure` builds/installs (prints the seconds it took), `--serve GGUF
PORT` serves a file in the foreground.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import servers_cache as _cache

VERSION = "0.3.36"
# only the library and its Python server: no llama.cpp tools, examples, tests or llava
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
              "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF")
# the server's dependencies that the test venv does not already have (fastapi, uvicorn,
# pydantic, numpy, jinja2 come from it)
EXTRA_DEPS = ("diskcache>=5.6", "sse-starlette>=1.6", "starlette-context>=0.3.6",
              "pydantic-settings>=2.0", "python-dotenv>=0.21")


def site_dir() -> Path:
    """Where the built llama-cpp-python and its extra dependencies are installed."""
    return _cache() / f"llama-cpp-python-{VERSION}"


def installed() -> bool:
    return (site_dir() / "llama_cpp" / "server" / "__main__.py").exists() and \
        (site_dir() / ".complete").exists()


def _pip(*args: str, env: dict | None = None, log=None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                   check=True, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)


def ensure(build: bool = True) -> str | None:
    """Install llama-cpp-python's server into the cache (building its wheel if none is
    cached and `build`); None when ready, else the reason it is not."""
    if installed():
        return None
    wheels = _cache() / "wheels"
    wheel = next(iter(sorted(wheels.glob(f"llama_cpp_python-{VERSION}-*.whl"))), None)
    if wheel is None and not build:
        return (f"llama-cpp-python {VERSION} is not built in {wheels} (build it once with "
                "`.venv/bin/python tests/llamacpp_server.py --ensure`, 6 to 33 minutes on "
                "2 cores, or set SPECENGINE_BUILD_SERVERS=1)")
    wheels.mkdir(parents=True, exist_ok=True)
    log_path = _cache() / "build.log"
    start = time.monotonic()
    try:
        with open(log_path, "ab") as log:
            if wheel is None:
                env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS,
                           CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
                _pip("wheel", "--no-deps", f"llama-cpp-python=={VERSION}", "-w", str(wheels),
                     env=env, log=log)
                wheel = next(iter(sorted(wheels.glob(f"llama_cpp_python-{VERSION}-*.whl"))))
            target = site_dir()
            _pip("install", "--no-deps", "--upgrade", "--target", str(target), str(wheel),
                 *EXTRA_DEPS, log=log)
    except (subprocess.CalledProcessError, OSError, StopIteration) as exc:
        return (f"llama-cpp-python {VERSION} could not be built/installed ({exc}); see "
                f"{log_path}")
    (site_dir() / ".complete").write_text(json.dumps(
        {"version": VERSION, "seconds": round(time.monotonic() - start, 1)}))
    return None


def host_has_amx() -> bool:
    """Whether this CPU has Intel AMX int8 tiles (Sapphire Rapids and later)."""
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def command(gguf: Path, port: int, threads: int = 2,
            ubatch: int | None = 1) -> tuple[list[str], dict]:
    """The command line and environment that serve `gguf` on 127.0.0.1:`port`.

    `ubatch` 1 (the default here) evaluates a prompt one token per micro-batch. A wheel
    built by plain pip compiles llama.cpp for the building CPU (GGML_NATIVE); on a CPU with
    AMX that brings in the AMX int8 matmul, whose `ldtilecfg` in
    `ggml_backend_amx_mul_mat` raises a general-protection fault here (dmesg) on the first
    micro-batch of more than one token — any prompt longer than one token kills the
    server. One-token micro-batches take the vector path. None keeps the server's default
    (512)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site_dir())] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
           "--n_threads", str(threads), "--seed", "0"]
    if ubatch is not None:
        cmd += ["--n_ubatch", str(ubatch)]
    return cmd, env


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until GET /v1/models answers; a server that exits or never answers raises."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-cpp-python's server exited ({proc.returncode}): "
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"llama-cpp-python's server did not answer in {timeout_s:g} s: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ensure"]:
        began = time.monotonic()
        reason = ensure(build=True)
        if reason:
            print(f"warning: {reason}", file=sys.stderr)
            sys.exit(0)   # the tests that need it skip with this reason
        print(f"llama-cpp-python {VERSION} ready in {site_dir()} "
              f"({time.monotonic() - began:.0f} s)")
    elif sys.argv[1:2] == ["--serve"] and len(sys.argv) == 4:
        cmd, env = command(Path(sys.argv[2]), int(sys.argv[3]))
        os.execvpe(cmd[0], cmd, env)
    else:
        print(__doc__)
        sys.exit(2)
