"""Numeric classes and each kind's default limits per class: what each side's dtype lets
us expect.

A comparison belongs to the *coarser* of its two sides' numeric classes — `float32` for
two float32 sides, `half` when either side is bfloat16 or float16, `quantized` when either
side declares a quantized format — and is judged only by that class's limits: the class
defaults below, under the values a spec, a backend or a case writes *for that class*
(`compare.limits`). A limit written for another class never applies, so a limit sized
for bf16 noise never judges a float32 port.

The causal-LM numbers come from measurements on SmolLM2-135M (16 new tokens per case):

- float32: an unmodified float32 copy (another process, other thread counts, ONNX Runtime)
  against the float32 golden gave KL ≤ 1e-6 and max |Δ logprob| ≤ 5e-5, onnx ≤ 3e-4;
  real float32 bugs (rms_norm_eps × 100, the final norm × 1.05) give KL means of 1e-3 to
  1e-2. The limits sit 100× above the noise and 10× below those bugs.
- half: cpu-bf16 against the float32 golden gave KL mean ≤ 0.0021, KL max ≤ 0.0065,
  max |Δ logprob| ≤ 0.44 on the one-pass path and up to 0.51 on the decode path (the
  golden's low-probability top-10 ids move most), near-tie flips up to 0.5 nats.
- quantized: the Q4_1 GGUF served natively against its dequantized float32 golden
  (measured with the served-deployment tests; see the deployment docs).

Embedding defaults: half is what bf16 encoders reach (MiniLM, InternViT stand-in: pooled
cosine ≥ 0.9995); float32 sides agree to ~1e-7, so the float32 defaults sit far tighter.
Operator limits are already relative to the compute dtype (the dtype error ratio), so
their defaults are the same in every class.

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

FLOAT32, HALF, QUANTIZED = "float32", "half", "quantized"
CLASS_ORDER = (FLOAT32, HALF, QUANTIZED)

_FLOAT32_DTYPES = {"float32", "fp32", "float64", "fp64", "tf32"}
_HALF_DTYPES = {"bfloat16", "bf16", "float16", "fp16", "half"}


@dataclass(frozen=True)
class Tolerance:
    """The limits one causal-LM comparison is judged by (one-pass and decode paths)."""

    kl_mean_max: float = 0.01
    kl_max: float = 0.05
    top1_agreement_min: float = 0.9
    logprob_atol: float = 0.5
    prob_atol: float | None = None
    within_top_k: int = 5
    max_margin: float = 0.5

    def merged(self, override: Mapping[str, Any] | None) -> "Tolerance":
        """These limits with `override`'s values (a flat block; `divergence` nested)."""
        return replace(self, **flatten(override)) if override else self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EmbeddingTolerance:
    cosine_min: float = 0.999
    hidden_cosine_min: float = 0.99
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    rel_share_1e3_min: float | None = None
    rel_share_5e3_min: float | None = None

    def merged(self, override: Mapping[str, Any] | None) -> "EmbeddingTolerance":
        return replace(self, **dict(override)) if override else self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class OpTolerance:
    cosine_min: float = 0.999
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    rel_share_1e3_min: float | None = None
    rel_share_5e3_min: float | None = None
    dtype_error_ratio_max: float = 64.0
    routing_mismatch_max: int = 0

    def merged(self, override: Mapping[str, Any] | None) -> "OpTolerance":
        return replace(self, **dict(override)) if override else self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


DEFAULTS: dict[str, Tolerance] = {
    FLOAT32: Tolerance(kl_mean_max=1e-4, kl_max=1e-3, top1_agreement_min=0.9,
                       logprob_atol=0.02, within_top_k=2, max_margin=0.05),
    HALF: Tolerance(logprob_atol=0.75),
    QUANTIZED: Tolerance(kl_mean_max=0.1, kl_max=1.0, top1_agreement_min=0.75,
                         logprob_atol=2.0, within_top_k=5, max_margin=1.0),
}

EMBEDDING_DEFAULTS: dict[str, EmbeddingTolerance] = {
    FLOAT32: EmbeddingTolerance(cosine_min=0.99999, hidden_cosine_min=0.9999),
    HALF: EmbeddingTolerance(),
    QUANTIZED: EmbeddingTolerance(cosine_min=0.99, hidden_cosine_min=0.95),
}

OP_DEFAULTS: dict[str, OpTolerance] = {klass: OpTolerance() for klass in CLASS_ORDER}

# the limits a spec may state relative to the reference's own measured noise, and the
# noise metric each one is measured against
NOISE_METRICS = {"kl_mean_max": "kl_mean", "kl_max": "kl_max",
                 "logprob_atol": "max_abs_dlogprob"}
# the floor of a relative limit when the spec gives none (the noise of a float32
# re-run can be exactly 0): what calibrate floors its proposals at, too
NOISE_FLOORS = {"kl_mean_max": 1e-5, "kl_max": 1e-4, "logprob_atol": 1e-3}


def dtype_class(dtype: str | None, quantization: Mapping[str, Any] | None = None) -> str:
    """float32 | half | quantized for a side's dtype and declared quantization.

    Any declared quantization, or a dtype that is neither a float32 nor a 16-bit float
    name (int8, q4_1, fp8_e4m3, w8a8 …), is `quantized`. An unknown or empty dtype is
    treated as float32 (the strictest class), never as a looser one."""
    if quantization:
        return QUANTIZED
    name = (dtype or "float32").strip().lower()
    if name in _FLOAT32_DTYPES or not name:
        return FLOAT32
    if name in _HALF_DTYPES:
        return HALF
    return QUANTIZED


def coarser(*classes: str) -> str:
    """The coarsest of some numeric classes (float32 < half < quantized)."""
    return max(classes, key=CLASS_ORDER.index) if classes else FLOAT32


def flatten(block: Mapping[str, Any] | None) -> dict[str, Any]:
    """A class's limits with `divergence: {…}` flattened into its keys."""
    out: dict[str, Any] = {}
    for key, value in (block or {}).items():
        if key == "divergence":
            out.update(dict(value))
        else:
            out[key] = value
    return out
