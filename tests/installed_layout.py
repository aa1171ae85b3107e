"""The import graph of specengine as it installs, for import-linter's contracts and the
architecture tests.

pyproject maps several folders into one import name: engine/ is `specengine`, backends/
is `specengine.backends` and schemas/ `specengine.schemas` (specs/ and golden/, package
data, hold no Python). Grimp builds its graph by walking the root package's own folder
and refuses a subpackage as a second root, so by itself it never sees
`specengine.backends`, and it drops every import of it. `installed_graph` builds the
graph over a temporary tree laid out as the wheel is — each mapped package's modules
copied to their place under the root package — and the contract types below check that
graph instead of the one import-linter built from the root folder alone. Layers,
independence and forbidden imports are then judged over every module the wheel holds,
with each import of and from the mapped packages.
"""

from __future__ import annotations

import copy
import importlib
import shutil
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import grimp
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.contracts.layers import LayersContract

try:
    import tomllib
except ImportError:                     # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib


def package_folders(project: Path) -> dict[str, Path]:
    """The Python packages pyproject maps to folders of their own (`package-dir`): import
    name -> folder, the root package first."""
    config = tomllib.loads((project / "pyproject.toml").read_text("utf-8"))
    mapping = config["tool"]["setuptools"]["package-dir"]
    root = config["tool"]["importlinter"]["root_package"]
    folders = {name: project / folder for name, folder in mapping.items()
               if (name == root or name.startswith(root + "."))
               and (project / folder / "__init__.py").is_file()}
    return dict(sorted(folders.items(), key=lambda item: item[0] != root))


def stage(project: Path, into: Path) -> str:
    """Copy the modules of every mapped package to where the wheel puts them, under
    `into`; returns the root package's name."""
    folders = package_folders(project)
    root = next(iter(folders))
    for name, folder in folders.items():
        target = into.joinpath(*name.split("."))
        for source in folder.rglob("*.py"):
            if "__pycache__" not in source.parts:
                dest = target / source.relative_to(folder)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
    return root


def build_installed_graph(project: Path, include_external_packages: bool = True
                          ) -> grimp.ImportGraph:
    """The import graph of the package as installed from the project folder `project`,
    built now from its files."""
    with tempfile.TemporaryDirectory(prefix="specengine-layout-") as tmp:
        root = stage(project, Path(tmp))
        # grimp finds the package with importlib, which answers with an imported
        # package's own spec: the staged tree must be the first place it is found
        imported = sys.modules.pop(root, None)
        sys.path.insert(0, tmp)
        importlib.invalidate_caches()
        try:
            return grimp.build_graph(root, include_external_packages=include_external_packages,
                                     cache_dir=None)
        finally:
            sys.path.remove(tmp)
            if imported is not None:
                sys.modules[root] = imported


@lru_cache(maxsize=4)
def _built_once(project: Path, include_external_packages: bool) -> grimp.ImportGraph:
    return build_installed_graph(project, include_external_packages)


def installed_graph(project: Path, include_external_packages: bool = True) -> grimp.ImportGraph:
    """`build_installed_graph`, built once per process (each contract gets a copy it may
    change)."""
    return copy.deepcopy(_built_once(project.resolve(), include_external_packages))


class _OverTheInstalledLayout:
    """A contract judged over `installed_graph` of the project being linted (the current
    folder, where `lint-imports` reads pyproject.toml)."""

    def check(self, graph, verbose):
        external = str(self.session_options.get("include_external_packages")) in ("True", "true")
        return super().check(installed_graph(Path.cwd(), external), verbose)


class InstalledLayersContract(_OverTheInstalledLayout, LayersContract):
    pass


class InstalledIndependenceContract(_OverTheInstalledLayout, IndependenceContract):
    pass


class InstalledForbiddenContract(_OverTheInstalledLayout, ForbiddenContract):
    pass
