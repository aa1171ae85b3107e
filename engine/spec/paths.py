"""Paths a spec names: model sources, tokenizers, images, expanded with ${VAR} and made
absolute against the spec's folder; and the spec files a command line names."""

from __future__ import annotations

from pathlib import Path

from specengine.interp import MissingVariable, expand, variables
from specengine.spec.model import ModelSpec
from specengine.spec.yamlio import Located


def model_spec(located: Located, path: tuple, entry: dict, base_dir: Path) -> ModelSpec:
    line, col = located.where(path)
    where = f"{located.file}:{line}:{col}"
    common = dict(kind=entry.get("kind", "causal-lm"),
                  trust_remote_code=bool(entry.get("trust_remote_code", False)),
                  use_builtin_class=bool(entry.get("use_builtin_class", False)),
                  device_map=entry.get("device_map"), max_memory=entry.get("max_memory"),
                  where=where)
    if "tokenizer" in entry:
        common["tokenizer"] = entry["tokenizer"] if entry["tokenizer"] == "bytes" else \
            expand_path(located, path + ("tokenizer",), entry["tokenizer"], base_dir)[0]
    if "synthetic" in entry:
        syn = dict(entry["synthetic"])
        syn.setdefault("config", {})
        syn.setdefault("seed", 0)
        common.setdefault("tokenizer", "bytes")
        return ModelSpec(source="synthetic", synthetic=syn, **common)
    if "gguf" in entry:
        written = entry["gguf"]["path"]
        expanded, env_vars = expand_path(located, path + ("gguf", "path"), written, base_dir)
        return ModelSpec(source="gguf", path=expanded, file=entry["gguf"]["file"],
                         written=written, env_vars=env_vars, **common)
    written = entry["path"]
    expanded, env_vars = expand_path(located, path + ("path",), written, base_dir)
    return ModelSpec(source="path", path=expanded, written=written, env_vars=env_vars, **common)


def expand_path(located: Located, path: tuple, written: str, base_dir: Path) -> tuple[str, tuple]:
    try:
        value = expand(written)
    except MissingVariable as exc:
        raise located.error(path, f"environment variable {exc.name} is not set "
                                  f"(used in {written!r}); set it or write ${{{exc.name}:-default}}") from None
    if value.startswith("pkg://"):
        return value, tuple(variables(written))
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    return str(p), tuple(variables(written))


def find_specs(targets: list[str]) -> list[Path]:
    """Expand files and folders (recursively, *.yaml / *.yml) into spec paths."""
    out: list[Path] = []
    for target in targets:
        p = Path(target)
        if p.is_dir():
            found = sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")))
            out.extend(f for f in found if f.is_file())
        else:
            out.append(p)
    return out
