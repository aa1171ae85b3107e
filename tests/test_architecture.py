"""The layering stays true: import-linter's contracts (pyproject.toml) hold, a deliberate
violation is caught, there is no import cycle (function-level imports included) and no
module is over 400 lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from helpers import REPO

LINT = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as m; m()"]
MAX_LINES = 400


def _lint(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(LINT + ["--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_import_contracts_are_kept():
    proc = _lint(REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "0 broken" in out and "4 kept" in out, out


@pytest.fixture(scope="module")
def copied_tree(tmp_path_factory):
    """The package and its contracts, copied where a test may break them."""
    root = tmp_path_factory.mktemp("layering")
    shutil.copytree(REPO / "engine", root / "specengine",
                    ignore=shutil.ignore_patterns("__pycache__", "templates"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("module,line,contract", [
    # comparison code reaching up into a kind (an upward import, in a function)
    ("compare/tokens.py", "def _bad():\n    from specengine.kinds.causal_lm import check\n",
     "engine layers"),
    # one kind importing another
    ("kinds/embedding/pooling.py", "from specengine.kinds.ops import checks  # noqa\n",
     "the kinds do not import each other"),
    # a runtime importing the engine's kinds
    ("backends/torch/device.py", "import specengine.kinds.base  # noqa\n", "engine layers"),
    # the ONNX runtime reaching into the served one
    ("backends/onnx/graph.py", "from specengine.backends.openai import http  # noqa\n",
     "backends: runtimes"),
])
def test_a_deliberate_violation_fails_the_contracts(copied_tree, module, line, contract):
    path = copied_tree / "specengine" / module
    original = path.read_text("utf-8")
    path.write_text(original + "\n\n" + line, "utf-8")
    try:
        env = dict(os.environ, PYTHONPATH=str(copied_tree))
        proc = _lint(copied_tree, env)
    finally:
        path.write_text(original, "utf-8")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{contract}" in out and "BROKEN" in out, out
    assert str(copied_tree / "specengine") in subprocess.run(
        [sys.executable, "-c", "import specengine; print(specengine.__file__)"], env=env,
        capture_output=True, text=True, cwd=copied_tree).stdout   # the copy was linted


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), ignoring a
    module's import of its own ancestor packages."""
    edges = {m: {t for t in graph.find_modules_directly_imported_by(m)
                 if not m.startswith(t + ".")} for m in graph.modules}
    index, low, stack, on, out = {}, {}, [], set(), []
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_function_level_imports_included():
    graph = grimp.build_graph("specengine", cache_dir=None)
    assert "specengine.kinds.causal_lm.check" in graph.modules
    # grimp sees function-level imports: the CLI imports each command's module lazily
    assert "\n    from specengine.cli.validate import cli_main\n" in \
        (REPO / "engine" / "cli" / "__init__.py").read_text("utf-8")
    assert graph.direct_import_exists(importer="specengine.cli",
                                      imported="specengine.cli.validate")
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle(copied_tree):
    target = copied_tree / "specengine" / "compare" / "arrays.py"
    original = target.read_text("utf-8")
    target.write_text(original + "\n\ndef _bad():\n    from specengine.compare import layers\n",
                      "utf-8")
    try:
        code = ("import grimp, sys; sys.path.insert(0, sys.argv[1]); "
                "import test_architecture as t; "
                "print(t._cycles(grimp.build_graph('specengine', cache_dir=None)))")
        env = dict(os.environ, PYTHONPATH=f"{copied_tree}{os.pathsep}{REPO / 'tests'}")
        proc = subprocess.run([sys.executable, "-c", code, str(REPO / "tests")], env=env,
                              capture_output=True, text=True, cwd=copied_tree, timeout=300)
    finally:
        target.write_text(original, "utf-8")
    assert "specengine.compare.arrays" in proc.stdout and "specengine.compare.layers" in \
        proc.stdout, proc.stdout + proc.stderr


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "engine").rglob("*.py"))
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES}
    assert long == {}
