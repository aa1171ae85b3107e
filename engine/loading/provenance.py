"""Model provenance without machine paths: where a model came from, written so that
the same string comes out on every machine that has the same files.

A folder inside an installed Python package is `pkg://PACKAGE/sub` (what a spec writes
to name it); a folder inside the spec's project is its path relative to the project root
(the nearest folder above the spec holding `.git` or `pyproject.toml`); anything else
keeps its absolute path, the user's own choice. The model's fingerprint, not this text,
is its identity.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_MARKERS = (".git", "pyproject.toml", "setup.cfg", "setup.py")


def _package_roots() -> list[Path]:
    roots = []
    for entry in sys.path:
        if entry and Path(entry).name in ("site-packages", "dist-packages"):
            try:
                roots.append(Path(entry).resolve())
            except OSError:
                continue
    return roots


def project_root(spec_file: str | Path | None) -> Path | None:
    if not spec_file:
        return None
    start = Path(spec_file).resolve().parent
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in PROJECT_MARKERS):
            return folder
    return None


def spec_file_of(where: str) -> str | None:
    """The file of a `file:line:col` location."""
    if not where:
        return None
    parts = where.rsplit(":", 2)
    return parts[0] if len(parts) == 3 and parts[1].isdigit() else where


def portable_path(path: str | Path, spec_file: str | Path | None = None) -> str:
    """`path` as `pkg://PACKAGE/sub`, project-relative, or absolute (in that order)."""
    try:
        resolved = Path(path).resolve()
    except OSError:
        return str(path)
    for root in _package_roots():
        if resolved.is_relative_to(root) and resolved != root:
            return "pkg://" + resolved.relative_to(root).as_posix()
    project = project_root(spec_file)
    if project is not None and resolved.is_relative_to(project):
        return resolved.relative_to(project).as_posix() or "."
    return str(path)
