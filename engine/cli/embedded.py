"""The embedded default: the SmolLM2-135M spec that `specengine run` checks when no spec
is named, and the golden recorded for it. Both ship inside the package (its
`default/specs` and `default/golden` folders, built from the repository's own `specs/`
and `golden/` files), so `specengine run` works from any folder once the model package
is installed.

Where they are read from, first match wins:
1. `specs/smollm2-135m.yaml` in the current folder (a specengine checkout), with the
   golden folder the usual rule finds for it;
2. the copy inside the installed package; its golden is the one shipped beside it, and
   is never written: when it is missing, the golden is recorded into `./golden`;
3. the checkout an editable install points to.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from specengine.errors import UsageError

SPEC_NAME = "smollm2-135m"
DEFAULT_SPEC = f"specs/{SPEC_NAME}.yaml"


def _packaged() -> Path | None:
    folder = resources.files("specengine").joinpath("default")
    spec = folder.joinpath("specs", f"{SPEC_NAME}.yaml")
    return Path(str(spec)) if spec.is_file() else None


def _checkout() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    spec = root / DEFAULT_SPEC
    return spec if spec.is_file() and (root / "pyproject.toml").is_file() else None


def default_spec() -> Path:
    """The embedded default spec's file (see the module's description)."""
    here = Path(DEFAULT_SPEC)
    if here.is_file():
        return here
    for found in (_packaged(), _checkout()):
        if found is not None:
            return found
    raise UsageError(f"no SPEC given, no {DEFAULT_SPEC} here, and this installation of "
                     "specengine carries no embedded default: name a spec")


def golden_dir_for(spec_path: Path) -> Path | None:
    """The golden folder `run` uses for the embedded default when it came from the
    package and no folder was chosen ($SPECENGINE_GOLDEN_DIR; the caller handles
    --golden-dir): the shipped golden when it is there, else ./golden. None: the usual
    rule applies."""
    import os

    packaged = _packaged()
    if os.environ.get("SPECENGINE_GOLDEN_DIR") or packaged is None \
            or Path(spec_path).resolve() != packaged.resolve():
        return None
    shipped = packaged.parent.parent / "golden"
    if (shipped / SPEC_NAME).is_dir():
        return shipped
    return Path("golden")
