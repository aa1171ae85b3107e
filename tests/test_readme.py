"""The README's commands, as typed: the walkthrough runs in a copy of the repository
with the venv activated the way the README says, and `.ci/run` runs the README's test
command word for word."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

README = (REPO / "README.md").read_text("utf-8")


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks under the README heading `section` (up to the next heading)."""
    start = README.index(f"## {section}")
    end = README.find("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", README[start:end if end > 0 else None], re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    command = bash_blocks("The two commands")[1].strip()
    assert "-n 2 --dist loadfile" in command           # xdist is asked for here, not in addopts
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


def test_pytest_runs_without_xdist_options():
    """Plain `pytest` works where pytest-xdist is absent: addopts asks for none of it."""
    addopts = re.search(r'^addopts = "(.*)"$', (REPO / "pyproject.toml").read_text(),
                        re.M).group(1)
    assert "-n" not in addopts.split() and "--dist" not in addopts, addopts
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p",
                             "no:cacheprovider", "--collect-only", "-q",
                             "tests/test_compare.py"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_the_walkthrough_runs_as_typed(tmp_path):
    block = bash_blocks("Walkthrough")[0]
    assert block.startswith("source .venv/bin/activate")
    work = tmp_path / "specengine"
    for name in ("specs", "golden", "schemas"):
        shutil.copytree(REPO / name, work / name)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, work / name)
    venv = Path(sys.prefix)
    (work / ".venv").symlink_to(venv)
    # a shell where specengine is not on PATH until the README's activation line runs
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p) != venv / "bin")
    env.setdefault("SPECENGINE_PROGRESS", "0")
    assert shutil.which("specengine", path=env["PATH"]) is None
    committed = (work / "golden" / "smollm2-135m" / "cpu.json").read_bytes()
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=work, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    golden = json.loads((work / "my-golden" / "smollm2-135m" / "cpu.json").read_text())
    assert len(golden["cases"]) == 6
    assert json.loads((work / "r.json").read_text())["runs"][0]["status"] == "pass"
    assert (work / "r.html").stat().st_size > 10_000 and (work / "r.md").is_file()
    assert "~ case add-chat re-recorded" in result.stdout
    assert (work / "golden" / "smollm2-135m" / "cpu.json").read_bytes() == committed
