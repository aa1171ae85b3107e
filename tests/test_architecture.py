"""The layering stays true: import-linter's contracts (pyproject.toml) hold over the
package as it installs (engine/ and backends/ in one `specengine`), a deliberate violation
is caught in either folder, there is no import cycle (function-level imports included)
and no module is over 400 lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from helpers import REPO
from installed_layout import build_installed_graph, installed_graph, package_folders

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


def test_the_contracts_see_the_backends_folder():
    """backends/ lives beside engine/ and is mapped into `specengine`: the graph the
    contracts judge holds its modules and the imports both ways, which a graph built from
    the root package's folder alone (import-linter's own) does not."""
    assert package_folders(REPO) == {"specengine": REPO / "engine",
                                     "specengine.backends": REPO / "backends",
                                     "specengine.schemas": REPO / "schemas"}
    graph = installed_graph(REPO)
    assert {"specengine.backends.registry", "specengine.backends.torch.device",
            "specengine.backends.onnx.graph", "specengine.kinds.causal_lm.check"} <= graph.modules
    assert graph.direct_import_exists(importer="specengine.loading.session",
                                      imported="specengine.backends.registry")
    assert graph.direct_import_exists(importer="specengine.backends.torch.device",
                                      imported="specengine.errors")
    assert graph.direct_import_exists(importer="specengine.backends.torch.backend",
                                      imported="torch")      # external packages are in it
    root_only = grimp.build_graph("specengine", cache_dir=None)
    assert "specengine.backends.registry" not in root_only.modules
    import specengine.backends

    if Path(specengine.__file__).parent == REPO / "engine":      # this checkout, editable
        # a folder engine/backends/ left behind (its __pycache__) would shadow the mapping
        assert specengine.backends.__file__ == str(REPO / "backends" / "__init__.py")


@pytest.fixture(scope="module")
def copied_tree(tmp_path_factory):
    """The project's package folders, contracts and their contract types, copied where a
    test may break them."""
    root = tmp_path_factory.mktemp("layering")
    for folder in ("engine", "backends"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "templates"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    (root / "tests").mkdir()
    shutil.copy(REPO / "tests" / "installed_layout.py", root / "tests" / "installed_layout.py")
    return root


@pytest.mark.parametrize("module,line,contract", [
    # comparison code reaching up into a kind (an upward import, in a function)
    ("engine/compare/tokens.py", "def _bad():\n    from specengine.kinds.causal_lm import check\n",
     "engine layers"),
    # one kind importing another
    ("engine/kinds/embedding/pooling.py", "from specengine.kinds.ops import checks  # noqa\n",
     "the kinds do not import each other"),
    # a runtime importing the engine's kinds
    ("backends/torch/device.py", "import specengine.kinds.base  # noqa\n", "engine layers"),
    # the ONNX runtime reaching into the served one
    ("backends/onnx/graph.py", "from specengine.backends.openai import http  # noqa\n",
     "backends: runtimes"),
    # comparison code importing a runtime through the backends folder
    ("engine/compare/arrays.py", "def _bad():\n    from specengine.backends.torch import backend\n",
     "comparison, specs and goldens import no runtime"),
])
def test_a_deliberate_violation_fails_the_contracts(copied_tree, module, line, contract):
    path = copied_tree / module
    original = path.read_text("utf-8")
    path.write_text(original + "\n\n" + line, "utf-8")
    try:
        proc = _lint(copied_tree)
    finally:
        path.write_text(original, "utf-8")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"{contract}" in out and "BROKEN" in out, out
    folder, _, rest = module.partition("/")
    importer = ".".join(["specengine"] + (["backends"] if folder == "backends" else [])
                        + rest.removesuffix(".py").split("/"))
    assert f"{importer} -> " in out, out       # the planted import, in the copy, was found


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
    graph = installed_graph(REPO)
    assert {"specengine.kinds.causal_lm.check", "specengine.backends.torch.backend"} <= \
        graph.modules
    # grimp sees function-level imports: the CLI imports each command's module lazily
    assert "\n    from specengine.cli.validate import cli_main\n" in \
        (REPO / "engine" / "cli" / "__init__.py").read_text("utf-8")
    assert graph.direct_import_exists(importer="specengine.cli",
                                      imported="specengine.cli.validate")
    assert _cycles(graph) == []


@pytest.mark.parametrize("module,line,cycle", [
    ("engine/compare/arrays.py", "def _bad():\n    from specengine.compare import layers\n",
     {"specengine.compare.arrays", "specengine.compare.layers"}),
    ("backends/base.py", "def _bad():\n    from specengine.backends import registry\n",
     {"specengine.backends.base", "specengine.backends.registry"}),
])
def test_cycle_finder_finds_a_planted_cycle(copied_tree, module, line, cycle):
    target = copied_tree / module
    original = target.read_text("utf-8")
    target.write_text(original + "\n\n" + line, "utf-8")
    try:
        found = _cycles(build_installed_graph(copied_tree))
    finally:
        target.write_text(original, "utf-8")
    assert any(cycle <= set(c) for c in found), found


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for folder in package_folders(REPO).values()
            for p in sorted(folder.rglob("*.py"))
            if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES}
    assert long == {}


MAX_FUNCTION_LINES = 60


def _long_functions(source: str, name: str) -> dict[str, int]:
    """Every function or method of one module over MAX_FUNCTION_LINES lines (decorators
    and docstring included), by `module:function`."""
    import ast

    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            if (n := node.end_lineno - first + 1) > MAX_FUNCTION_LINES:
                out[f"{name}:{node.name}"] = n
    return out


def test_no_function_is_over_60_lines():
    long = {}
    for folder in package_folders(REPO).values():
        for p in sorted(folder.rglob("*.py")):
            long.update(_long_functions(p.read_text("utf-8"), str(p.relative_to(REPO))))
    assert long == {}


def test_the_function_size_check_can_fail():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert _long_functions(f"def f():\n{body}", "m.py") == {"m.py:f": MAX_FUNCTION_LINES + 1}
    assert _long_functions(f"def f():\n{body[:-len('    x59 = 59')-1]}", "m.py") == {}
