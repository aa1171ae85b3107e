"""The keys of an operator spec (`ops:`): each op's shape, parameters, dtype and seed,
checked against the operator catalog, and the operator tolerances."""

from __future__ import annotations

from pathlib import Path

from specengine.compare.limits import LimitSource
from specengine.spec.model import Determinism, OpCase, check_unique_id
from specengine.spec.ops_catalog import OPS, resolve_dims, resolve_params
from specengine.spec.yamlio import Located


def build_cases(located: Located, data: dict, determinism: Determinism, base_dir: Path
                ) -> tuple[list[OpCase], dict]:
    """(cases, settings) of an ops spec; SpecError with file:line:col."""
    defaults = data.get("defaults") or {}
    seed = int(defaults.get("seed", 0))
    cases, seen = [], {}
    for i, entry in enumerate(data["ops"]):
        cid = check_unique_id(located, "ops", i, seen, "op")
        op = OPS[entry["op"]]
        dims, problem = resolve_dims(op, entry.get("shape") or {})
        if dims is None:
            raise located.error(("ops", i, "shape"), problem)
        params, problem = resolve_params(op, entry.get("params") or {}, dims)
        if params is None:
            raise located.error(("ops", i, "params"), problem)
        cases.append(OpCase(
            id=cid, op=op.name, dims=dims, params=params, dtype=entry.get("dtype"),
            seed=int(entry.get("seed", seed)), tags=tuple(entry.get("tags", ())),
            limit_source=LimitSource.of(defaults.get("tolerance"), entry.get("tolerance")),
            determinism=determinism.merged(entry.get("determinism")),
            description=entry.get("description", ""), line=located.where(("ops", i))[0]))
    return cases, {"seed": seed}


