"""How this specengine was installed, and the install hint for one of its extras.

There is no `specengine` on a package index, so a hint never says
`pip install 'specengine[onnx]'`. It says what the user can run from where their copy came
from: an editable checkout gets `pip install -e 'ROOT[onnx]'`; a copy pip installed from a
git repository gets the same address with the extra; any other copy (a wheel, an sdist)
gets the packages the extra brings, read from the installed metadata, so the hint is
right for the very version that is installed.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

DIST = "specengine"
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


@lru_cache(maxsize=1)
def _distribution():
    """The installed specengine's metadata: the one pip recorded an origin for, where
    several are visible (a checkout's own build metadata, `specengine.egg-info`, is on
    the path when Python runs from the checkout), else the first."""
    from importlib.metadata import distributions

    found = list(distributions(name=DIST))
    for dist in found:
        if dist.read_text("direct_url.json"):
            return dist
    return found[0] if found else None


def origin() -> dict:
    """Where the installed copy came from: {"how": "editable"|"vcs"|"archive"|"index"|
    "source", "url": ..., "root": checkout folder (editable or source)}."""
    dist = _distribution()
    if dist is None:       # run from a source tree that pip never installed
        root = Path(__file__).resolve().parent.parent
        return {"how": "source", "root": str(root)} if (root / "pyproject.toml").is_file() \
            else {"how": "unknown"}
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    if not isinstance(direct, dict):
        return {"how": "index"}
    url = str(direct.get("url", ""))
    if (direct.get("dir_info") or {}).get("editable"):
        return {"how": "editable", "url": url, "root": _file_path(url)}
    if "vcs_info" in direct:
        info = direct["vcs_info"]
        rev = info.get("requested_revision") or info.get("commit_id") or ""
        return {"how": "vcs", "url": f"{info.get('vcs', 'git')}+{url}" + (f"@{rev}" if rev else "")}
    if "dir_info" in direct:
        return {"how": "directory", "url": url, "root": _file_path(url)}
    return {"how": "archive", "url": url}


def _file_path(url: str) -> str:
    parsed = urlparse(url)
    return unquote(parsed.path) if parsed.scheme == "file" else url


def extra_requirements(extra: str) -> list[str]:
    """The requirements the extra brings (nested extras of specengine itself expanded),
    as the installed metadata states them; [] when unknown."""
    dist = _distribution()
    if dist is None:
        return []
    out: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for line in dist.requires or []:
            requirement, _, marker = line.partition(";")
            match = _EXTRA.search(marker)
            if not match or match.group(1) != name:
                continue
            head = _NAME.match(requirement)
            if head and head.group(1).lower() == DIST and head.group(2):
                for nested in head.group(2).strip("[]").split(","):
                    walk(nested.strip())
            elif requirement.strip() not in out:
                out.append(requirement.strip())

    walk(extra)
    return out


def _installed(requirement: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    head = _NAME.match(requirement)
    if not head:
        return False
    try:
        version(head.group(1))
        return True
    except PackageNotFoundError:
        return False


def install_hint(extra: str) -> str:
    """The command that installs `extra` for this copy of specengine."""
    where = origin()
    if where["how"] in ("editable", "source"):
        return f"pip install -e '{where['root']}[{extra}]'"
    if where["how"] == "directory":
        return f"pip install '{where['root']}[{extra}]'"
    if where["how"] == "vcs":
        return f"pip install 'specengine[{extra}] @ {where['url']}'"
    brings = extra_requirements(extra)
    missing = [r for r in brings if not _installed(r)] or brings
    if not missing:
        return f"install specengine's extra '{extra}' (from the repository specengine came from)"
    quoted = " ".join(f"'{r}'" for r in missing)
    return f"pip install {quoted} (what specengine's extra '{extra}' brings)"
