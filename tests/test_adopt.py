"""Adopting specengine in an adaptation repository, as docs/ci.md tells a user to.

The wheel built from this checkout is installed (with its `torch` extra, resolved from
its own metadata) into a port's environment — the cached venv of test_compat, whose
transformers is 4.57 — and a small adaptation repository is laid out in a temporary
folder: its own pyproject.toml (the pytest settings of docs/ci.md), specs/, golden/ and a
port folder with its own modeling code. There, with the venv's bin first on PATH as an
activated venv has it, the commands of docs/ci.md run: validate, record-golden, check
with every report, run, and `pytest specs/` through the plugin; and `specengine run`
with no spec runs the embedded default from the installed package. The backend of the
docs' examples (npu) is cpu-bf16 here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from wheel_env import env_for, make_port_model, port_venv

pytestmark = pytest.mark.slow

PYPROJECT = """\
[project]
name = "tinyport-adaptation"
version = "0.1.0"

[tool.pytest.ini_options]
testpaths = ["specs"]
specengine_backend = "cpu-bf16"
"""

SPEC = """\
specengine: 1
name: tinyport
description: The port's own modeling code, checked against its float32 reference.
model:
  path: ../models/tinyport
  tokenizer: bytes
  trust_remote_code: true        # the port ships modeling_tinyport.py
cases:
  - id: hello
    prompt: "hello there"
  - id: numbers
    prompt: "one two three"
    tags: [smoke]
"""


@pytest.fixture(scope="module")
def repo(specengine_wheel, tmp_path_factory):
    venv = port_venv(specengine_wheel)
    root = tmp_path_factory.mktemp("adaptation")
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "specs").mkdir()
    (root / "specs" / "tinyport.yaml").write_text(SPEC)
    make_port_model(venv, root / "models" / "tinyport")
    return root, venv


def user(repo, *command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    root, venv = repo
    return subprocess.run(list(command), cwd=root, env=env_for(venv), capture_output=True,
                          text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_gate_of_an_adaptation_repository(repo):
    root, venv = repo
    assert "1 file valid" in ok(user(repo, "specengine", "validate", "specs/"))
    out = ok(user(repo, "specengine", "record-golden", "specs/"))
    assert "(2 cases)" in out
    golden = json.loads((root / "golden" / "tinyport" / "cpu.json").read_text())
    assert sorted(golden["cases"]) == ["hello", "numbers"]
    assert golden["recorded_with"]["modeling"]["class"] == "TinyPortForCausalLM"

    ok(user(repo, "specengine", "check", "specs/", "--backend", "cpu-bf16",
            "--junit", "specengine.xml", "--markdown", "specengine.md",
            "--html", "specengine.html", "--json", "specengine.json"))
    for name in ("specengine.xml", "specengine.md", "specengine.html", "specengine.json"):
        assert (root / name).stat().st_size > 200, name
    results = json.loads((root / "specengine.json").read_text())["runs"][0]
    assert results["command"] == "check" and results["status"] == "pass"
    assert results["candidate"]["modeling"]["folder_code_ran"] is True

    ok(user(repo, "specengine", "run", "specs/", "--backend", "cpu-bf16"))
    report = json.loads((root / "reports" / "report.json").read_text())["runs"][0]
    assert report["command"] == "run" and report["status"] == "pass"

    # one new case joins the golden without re-recording the others
    before = (root / "golden" / "tinyport" / "cpu.json").read_text()
    (root / "specs" / "tinyport.yaml").write_text(SPEC + "  - id: added\n    prompt: \"four\"\n")
    ok(user(repo, "specengine", "record-golden", "specs/tinyport.yaml", "--case", "added"))
    after = json.loads((root / "golden" / "tinyport" / "cpu.json").read_text())
    old = json.loads(before)
    assert sorted(after["cases"]) == ["added", "hello", "numbers"]
    assert {k: after["cases"][k] for k in old["cases"]} == old["cases"]

    result = user(repo, "pytest", "specs/", "-p", "no:cacheprovider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout, result.stdout
    assert "tinyport: cpu-bf16 vs cpu (golden) [cross-backend]" in result.stdout


def test_run_without_a_spec_checks_the_embedded_default(repo):
    root, venv = repo
    out = ok(user(repo, "specengine", "run", "--case", "capital-fr", "--report-dir",
                  "default-reports"))
    assert "1 passed" in out, out
    run = json.loads((root / "default-reports" / "report.json").read_text())["runs"][0]
    assert run["spec_name"] == "smollm2-135m" and run["command"] == "run"
    assert str(venv) in run["spec_path"]              # the copy inside the package
    assert not (root / "golden" / "smollm2-135m").exists()   # the shipped golden was used


def test_install_hints_name_what_the_extra_brings(repo):
    out = ok(user(repo, "specengine", "backends"))
    onnx = next(line for line in out.splitlines() if line.strip().startswith("onnx:"))
    assert "pip install 'onnxruntime>=" in onnx and "extra 'onnx'" in onnx, onnx
    assert "specengine[" not in out, out


def test_the_wheel_and_sdist_carry_what_a_run_needs(specengine_wheel):
    import tarfile
    import zipfile

    from helpers import REPO

    with zipfile.ZipFile(specengine_wheel) as zf:
        names = set(zf.namelist())
        shipped = zf.read("specengine/default/golden/smollm2-135m/cpu.json")
        spec = zf.read("specengine/default/specs/smollm2-135m.yaml")
    for needed in ("specengine/templates/report.html.j2", "specengine/schemas/spec.schema.json",
                   "specengine/schemas/golden.schema.json", "specengine/cli/embedded.py",
                   "specengine/backends/__init__.py", "specengine/backends/registry.py",
                   "specengine/backends/torch/backend.py", "specengine/backends/onnx/graph.py",
                   "specengine/backends/openai/http.py"):
        assert needed in names, needed
    # one source of truth: the package's copies are the repository's files
    assert shipped == (REPO / "golden" / "smollm2-135m" / "cpu.json").read_bytes()
    assert spec == (REPO / "specs" / "smollm2-135m.yaml").read_bytes()
    assert not any(n.startswith("specengine/default/specs/tiny") for n in names)
    sdist = next(specengine_wheel.parent.glob("specengine-*.tar.gz"))
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
    assert {"specs/smollm2-135m.yaml", "golden/smollm2-135m/cpu.json", "schemas/spec.schema.json",
            "engine/templates/report.html.j2", "backends/registry.py",
            "backends/torch/backend.py", "pyproject.toml"} <= members


def test_an_editable_checkout_is_told_to_install_its_extra_from_its_own_folder():
    from helpers import REPO
    from specengine.install import install_hint, origin

    if origin()["how"] != "editable":
        pytest.skip("this test venv has specengine installed otherwise")
    assert install_hint("onnx") == f"pip install -e '{REPO}[onnx]'"
