"""specengine in the environment a port already has.

The wheel is installed with its `torch` extra into a cached venv of the oldest supported
releases (constraints-compat.txt: transformers 4.57, numpy 1.26, accelerate 1.0, gguf
0.17.1, ...), so pip resolves the wheel's own declared floors against them. There the
real models run: SmolLM2 (GGUF converted by transformers 4, a golden recorded and
checked, and the repository's golden — recorded with transformers 5 — checked: goldens
travel across major versions), MiniLM, the InternViT and InternLM2.5 stand-ins, and a
model folder with its own modeling code. An architecture transformers 4 lacks is one
line naming the release it needs, exit 3. And installing specengine beside an Ascend
torch + torch_npu leaves them alone (pip's own dry run decides).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from wheel_env import env_for, make_port_model, port_venv, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def port(specengine_wheel):
    return port_venv(specengine_wheel)


def se(venv: Path, *args, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`specengine ARGS` as a user of `venv` types it (its bin first on PATH)."""
    return subprocess.run(["specengine", *map(str, args)], cwd=cwd, env=env_for(venv),
                          capture_output=True, text=True, timeout=timeout)


def test_the_floors_are_what_runs(port):
    out = run([port / "bin" / "python", "-c", "import numpy, torch, transformers, specengine, "
               "sys; print(transformers.__version__, numpy.__version__, specengine.__file__)"],
              env=env_for(port)).stdout.split()
    assert out[0].startswith("4.57.") and out[1].startswith("1.26."), out
    assert str(port) in out[2], out       # the wheel's copy, not this checkout


def test_smollm2_record_and_check_on_transformers_4(port, tmp_path):
    spec = tmp_path / "specs" / "smollm2-135m.yaml"
    spec.parent.mkdir()
    spec.write_text((REPO / "specs" / "smollm2-135m.yaml").read_text())
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    rec = se(port, "record-golden", spec, "--case", "capital-fr", cwd=tmp_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    golden = json.loads((tmp_path / "golden" / "smollm2-135m" / "cpu.json").read_text())
    assert list(golden["cases"]) == ["capital-fr"]
    assert golden["recorded_with"]["versions"]["transformers"].startswith("4.57.")
    assert "Converting and de-quantizing" not in rec.stderr     # no library bar in a log
    check = se(port, "check", spec, "--backend", "cpu-bf16", "--case", "capital-fr",
               cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    # the repository's golden, recorded with transformers 5, verifies here: same prompt
    # ids (the GGUF's own add_bos_token is kept) and the same model within fp32 noise
    travel = se(port, "check", REPO / "specs" / "smollm2-135m.yaml", "--backend", "cpu",
                "--golden-dir", REPO / "golden", "--case", "add-chat",
                cwd=tmp_path)
    assert travel.returncode == 0, travel.stdout + travel.stderr
    assert "1 passed" in travel.stdout


def test_minilm_and_stand_ins_on_transformers_4(port, tmp_path):
    specs = [REPO / "specs" / name for name in
             ("minilm-l6.yaml", "tiny/internvit-tiny.yaml", "tiny/internlm25-tiny.yaml")]
    result = se(port, "check", *specs, "--backend", "cpu", "--golden-dir", REPO / "golden",
                "--json", tmp_path / "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [r["spec_name"] for r in runs] == ["minilm-l6", "internvit-tiny", "internlm25-tiny"]
    for r in runs:
        assert r["candidate"]["versions"]["transformers"].startswith("4.57."), r["candidate"]
        assert r["reference"]["versions"]["transformers"].startswith("5."), r["reference"]
        assert all(c["status"] == "pass" for c in r["cases"]), r["spec_name"]


def test_remote_code_model_on_transformers_4(port, tmp_path):
    make_port_model(port, tmp_path / "models" / "tinyport")
    spec = tmp_path / "specs" / "tinyport.yaml"
    spec.parent.mkdir()
    spec.write_text("specengine: 1\nname: tinyport\nmodel:\n  path: ../models/tinyport\n"
                    "  tokenizer: bytes\n  trust_remote_code: true\ncases:\n"
                    "  - {id: a, prompt: 'hello there'}\n  - {id: b, prompt: 'one two'}\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    rec = se(port, "record-golden", spec, cwd=tmp_path)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    check = se(port, "check", spec, "--backend", "cpu", "--json", tmp_path / "r.json",
               cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    modeling = json.loads((tmp_path / "r.json").read_text())["runs"][0]["candidate"]["modeling"]
    assert modeling["class"] == "TinyPortForCausalLM" and modeling["folder_code_ran"], modeling


def test_an_architecture_transformers_4_lacks_is_one_line_exit_3(port, tmp_path):
    result = se(port, "check", REPO / "specs" / "tiny" / "qwen35-tiny.yaml", "--backend",
                "cpu", "--golden-dir", REPO / "golden", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "model type 'qwen3_5_text' needs transformers >= 5.2.0" in lines[0], lines[0]
    assert "installed transformers 4.57." in lines[0], lines[0]


# -- installing beside a port's torch -------------------------------------------------

def _dist_info(site: Path, name: str, version: str, requires: list[str] = ()) -> None:
    folder = site / f"{name}-{version}.dist-info"
    folder.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (folder / "METADATA").write_text("\n".join(lines) + "\n")
    (folder / "INSTALLER").write_text("pip\n")
    (folder / "RECORD").write_text("")


def _ascend_env(tmp_path: Path, port: Path) -> Path:
    """A venv whose installed distributions are those of an Ascend port: torch 2.9.0 and
    torch_npu 2.9.0.post1 with transformers 4.57 and numpy 1.26. pip decides from the
    installed metadata alone, so the port venv's metadata is copied (all but specengine's
    own and torch's) and torch / torch_npu are declared as an Ascend install has them."""
    venv = tmp_path / "ascend"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = next((venv / "lib").glob("python3*/site-packages"))
    source = next((port / "lib").glob("python3*/site-packages"))
    for info in source.glob("*.dist-info"):
        name = info.name.split("-")[0].lower()
        if name in ("specengine", "torch"):
            continue
        target = site / info.name
        target.mkdir()
        for file in ("METADATA", "INSTALLER"):
            if (info / file).is_file():
                (target / file).write_bytes((info / file).read_bytes())
        (target / "RECORD").write_text("")
    _dist_info(site, "torch", "2.9.0", ["filelock", "typing-extensions>=4.10.0", "sympy>=1.13.3",
                                        "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"])
    _dist_info(site, "torch_npu", "2.9.0.post1", ["torch==2.9.0", "pyyaml"])
    return venv


def _dry_run(venv: Path, *requirements, tmp_path: Path) -> subprocess.CompletedProcess:
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                           "install", "--dry-run", "--no-index", "--report", str(report),
                           *map(str, requirements)],
                          capture_output=True, text=True, timeout=300,
                          env=_no_pip_config())


def _no_pip_config() -> dict:
    """pip with no configuration of this machine's (extra indexes, find-links, caps)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def test_installing_beside_an_ascend_torch_changes_no_torch(port, specengine_wheel, tmp_path):
    venv = _ascend_env(tmp_path, port)
    for extra in ("torch", "npu"):
        result = _dry_run(venv, f"{specengine_wheel}[{extra}]", tmp_path=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        names = sorted(item["metadata"]["name"].lower() for item in report["install"])
        assert names == ["specengine"], names          # torch, torch_npu, transformers kept
    # the control: a floor above the installed torch is a change pip would have to make
    # (with no index to take it from, it says so)
    control = _dry_run(venv, f"{specengine_wheel}[torch]", "torch>=2.10", tmp_path=tmp_path)
    assert control.returncode != 0 and "torch" in control.stderr, control.stderr
