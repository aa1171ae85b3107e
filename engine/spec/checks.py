"""Checks of a spec's values that its JSON Schema cannot express: every number finite
and within 64 bits, and every backend runtime one that this process knows."""

from __future__ import annotations

import math
from typing import Any

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
