"""`specengine backends [SPEC]`: every backend a check can name (the built-in ones and a
spec's own), with aliases, runtime, device, dtype, and whether it can run here.

Availability is probed without loading any model or runtime: whether the runtime's
packages are importable (`importlib.util.find_spec`, which imports nothing), and for a
device only when its runtime is importable: `torch.cuda.is_available()` for CUDA, the
`torch_npu` package for an Ascend NPU. An `openai` backend is a server named in the spec:
whether it answers is only known when a check connects to it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

# what each runtime needs importable, and specengine's extra that brings it
_NEEDS = {
    "torch": (("torch", "transformers"), "torch"),
    "onnx": (("torch", "transformers", "onnxruntime", "onnx"), "onnx"),
    "openai": ((), ""),
}


@dataclass
class BackendRow:
    name: str
    aliases: list[str]
    runtime: str
    device: str
    dtype: str
    source: str             # built-in | spec
    available: bool
    reason: str             # what is missing and how to get it; "" when available


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _probe(runtime: str, device: str) -> tuple[bool, str]:
    from specengine.install import install_hint

    needs, extra = _NEEDS.get(runtime, ((), ""))
    if runtime not in _NEEDS:
        from specengine.backends.registry import known_runtimes

        if runtime not in known_runtimes():
            return False, f"unknown runtime '{runtime}'"
    missing = [m for m in needs if not _importable(m)]
    if missing:
        return False, f"{', '.join(missing)} not installed: {install_hint(extra)}"
    family = device.split(":")[0]
    if family == "npu":
        if not _importable("torch_npu"):
            return False, ("torch_npu not installed: the torch-npu release matching your torch, "
                           "with the Ascend CANN toolkit")
        return True, ""
    if family == "cuda":
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch (a CUDA build of torch and a GPU)"
    if runtime == "openai":
        return True, "a server: reachability is checked when a check connects"
    return True, ""


def backend_rows(spec_backends: dict | None = None) -> list[BackendRow]:
    from specengine.backends.registry import ALIASES, BUILTINS

    configs = {**BUILTINS, **(spec_backends or {})}
    rows = []
    for name in sorted(configs, key=lambda n: (n not in BUILTINS, n)):
        config = configs[name]
        ok, reason = _probe(config.runtime, config.device)
        rows.append(BackendRow(name=name, aliases=sorted(a for a, t in ALIASES.items() if t == name),
                               runtime=config.runtime, device=config.device,
                               dtype=config.dtype,
                               source="spec" if spec_backends and name in spec_backends
                               else "built-in", available=ok, reason=reason))
    return rows


def render_rows(rows: list[BackendRow]) -> str:
    from specengine.report.text import one_line

    head = ("backend", "aliases", "runtime", "device", "dtype", "from", "here")
    table = [head] + [(one_line(r.name), ", ".join(r.aliases) or "—", one_line(r.runtime),
                       one_line(r.device), one_line(r.dtype), r.source,
                       "available" if r.available else "unavailable") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    notes = [f"  {one_line(r.name)}: {one_line(r.reason)}" for r in rows if r.reason]
    return "\n".join(lines + ([""] + notes if notes else []))


def cli_main(args) -> int:
    spec_backends = None
    if args.spec:
        from specengine.spec import load_spec

        spec_backends = load_spec(args.spec).backends
    print(render_rows(backend_rows(spec_backends)))
    return 0
