"""Running one op: seeded float64 inputs, the candidate backend in its dtype, and the
float64 oracle on the CPU from the same dtype-rounded inputs."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace

import numpy as np

from specengine.backends.host import cpu_name
from specengine.errors import BackendUnavailable
from specengine.loading.session import open_session
from specengine.results import Side
from specengine.spec import OpCase, Spec
from specengine.spec.ops_catalog import OPS, draw_inputs

ORACLE = Side(backend="oracle-float64", runtime="torch", device="cpu", dtype="float64")


def _torch():
    try:
        import torch
    except ImportError:
        from specengine.install import install_hint

        raise BackendUnavailable("the float64 oracle of ops specs needs torch: "
                                 f"{install_hint('torch')}") from None
    return torch


def round_to(array: np.ndarray, dtype: str) -> np.ndarray:
    """float64 values rounded to `dtype` (on the CPU, the way backends receive them)."""
    torch = _torch()
    if dtype == "float64":
        return np.asarray(array, dtype=np.float64)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64)).to(
        getattr(torch, dtype)).double().numpy()


def run_oracle(case: OpCase, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The op in float64 on the CPU."""
    torch = _torch()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)) for k, v in inputs.items()}
    with torch.inference_mode():
        out = OPS[case.op].run(torch, tensors, case.dims, case.params, "float64")
    return {k: v.cpu().numpy() for k, v in out.items()}


def inputs_sha256(inputs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        h.update(name.encode() + b"\0" + str(inputs[name].shape).encode() + b"\0")
        h.update(np.ascontiguousarray(inputs[name], dtype="<f8").tobytes())
    return h.hexdigest()


def op_hash(case: OpCase) -> str:
    payload = json.dumps(case.settings(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Measured:
    """One op on one backend: its outputs, the oracle's, and the metrics."""

    dtype: str
    inputs: dict[str, np.ndarray]     # float64 as drawn (before rounding to the dtype)
    inputs_sha256: str
    outputs: dict[str, np.ndarray]
    oracle: dict[str, np.ndarray]
    duration_s: float


class OpRunner:
    """A created backend (no model) that runs ops."""

    def __init__(self, spec: Spec, backend_name: str):
        self.session = open_session(spec, backend_name, load_model=False)
        self.config, self.backend = self.session.config, self.session.backend

    def dtype_for(self, case: OpCase) -> str:
        return case.dtype or self.config.dtype

    def run(self, case: OpCase, inputs: dict[str, np.ndarray]) -> tuple[dict, float]:
        dtype = self.dtype_for(case)
        start = time.perf_counter()
        out = self.backend.run_op(OPS[case.op].run, inputs, case.dims, case.params, dtype)
        return out, time.perf_counter() - start

    def measure(self, case: OpCase) -> Measured:
        raw = draw_inputs(OPS[case.op], case.dims, case.params, case.seed)
        dtype = self.dtype_for(case)
        outputs, seconds = self.run(case, raw)
        rounded = {k: round_to(v, dtype) for k, v in raw.items()}
        return Measured(dtype, raw, inputs_sha256(raw), outputs, run_oracle(case, rounded), seconds)

    def side(self) -> Side:
        return self.session.side()

    def close(self) -> None:
        self.session.close()


def oracle_side() -> Side:
    torch = _torch()
    return replace(ORACLE, device_name=cpu_name(),
                   versions={"torch": torch.__version__, "numpy": np.__version__})


def same_class(a: Side, a_dtype: str, b: Side, b_dtype: str) -> bool:
    return (a.runtime, a.device.split(":")[0], a_dtype) == (b.runtime, b.device.split(":")[0], b_dtype)
