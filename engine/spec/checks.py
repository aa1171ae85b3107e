"""Checks of a spec's values that its JSON Schema cannot express: every number finite
and within 64 bits, and every backend runtime one that this process knows."""

from __future__ import annotations

import difflib
import math
from typing import Any

from specengine.errors import SpecError
from specengine.spec.keys import TOLERANCE_KEYS
from specengine.spec.yamlio import Located
from specengine.backends.registry import known_runtimes

MAX_INT = 2 ** 63 - 1


def check_numbers(located: Located) -> None:
    """Every number in a spec is finite and fits in 64 bits: a NaN compares false with
    every limit (a NaN tolerance would switch its check off), an infinite time limit is no
    limit, and an integer no library can hold fails deep inside one."""
    stack: list[tuple[tuple, Any]] = [((), located.data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((path + (k,), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            where = "/".join(str(p) for p in path) or "the spec"
            raise located.error(path, f"{where}: {value} is not allowed (numbers in a spec "
                                      "must be finite: no NaN or infinity)")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            where = "/".join(str(p) for p in path) or "the spec"
            raise located.error(path, f"{where}: integer out of range (integers in a spec "
                                      "must lie within ±(2**63 - 1))")


def check_runtime(located: Located, name: str, runtime: str) -> None:

    known = known_runtimes()
    if runtime not in known:
        raise located.error(("backends", name, "runtime"),
                            f"backends/{name}: unknown runtime '{runtime}' (known: "
                            f"{', '.join(known)})")


CLASSES = ("float32", "half", "quantized")
ALL_LIMIT_KEYS = set().union(*TOLERANCE_KEYS.values())


def tolerance_blocks(data: Any) -> list[tuple[tuple, dict]]:
    """(path, mapping) of every tolerance block a spec writes: defaults, each case or op,
    each backend."""
    if not isinstance(data, dict):
        return []
    found = [(("defaults", "tolerance"), (data.get("defaults") or {}).get("tolerance")
              if isinstance(data.get("defaults"), dict) else None)]
    for section in ("cases", "ops"):
        entries = data.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                found.append(((section, i, "tolerance"), entry.get("tolerance")))
    backends = data.get("backends")
    for name, entry in (backends.items() if isinstance(backends, dict) else []):
        if isinstance(entry, dict):
            found.append((("backends", name, "tolerance"), entry.get("tolerance")))
    return [(path, block) for path, block in found if isinstance(block, dict)]


def check_class_blocks(located: Located) -> None:
    """Every tolerance block is keyed by numeric class (the first problem, raised)."""
    errors = class_block_errors(located)
    if errors:
        raise errors[0]


def class_block_errors(located: Located) -> list[SpecError]:
    """One error per tolerance block not keyed by numeric class. A flat block of limits
    (the form before classes) is refused with where it is, which keys to use and the
    command that rewrites it; a misspelt class gets a suggestion."""
    out = []
    for path, block in tolerance_blocks(located.data):
        key = next((k for k in block if k not in CLASSES), None)
        if key is None:
            continue
        where = "/".join(str(p) for p in path)
        if key in ALL_LIMIT_KEYS:
            out.append(located.error(path + (key,), (
                f"{where}: limits are keyed by numeric class — put '{key}' under "
                f"float32:, half: or quantized: (the class it was measured for, e.g. "
                f"tolerance: {{half: {{{key}: ...}}}}); `specengine migrate SPEC --class "
                "half` rewrites flat blocks, comments kept"), key=True))
            continue
        close = difflib.get_close_matches(str(key), CLASSES, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        out.append(located.error(path + (key,), f"{where}: '{key}' is not a numeric class "
                                 f"(float32, half, quantized){hint}", key=True))
    return out
