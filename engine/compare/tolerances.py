"""Default tolerances by numeric class: what each side's dtype lets us expect.

A comparison is judged by the defaults of the *coarser* of its two sides' classes —
float32 noise for two float32 sides, half-precision noise when either side is bfloat16 or
float16, quantized noise when either side declares a quantized format — and then by the
spec's and the case's own values, which always win. Every report names the set that
judged it (e.g. "float32 defaults + spec: kl_mean_max").

The numbers come from measurements on SmolLM2-135M (16 new tokens per case):

- float32: an unmodified float32 copy (another process, other thread counts, ONNX Runtime)
  against the float32 golden gave KL ≤ 1e-6 and max |Δ logprob| ≤ 5e-5, onnx ≤ 3e-4;
  real float32 bugs (rms_norm_eps × 100, the final norm × 1.05) give KL means of 1e-3 to
  1e-2. The limits sit 100× above the noise and 10× below those bugs.
- half: cpu-bf16 against the float32 golden gave KL mean ≤ 0.0021, KL max ≤ 0.0065,
  max |Δ logprob| ≤ 0.44 on the one-pass path and up to 0.51 on the decode path (the
  golden's low-probability top-10 ids move most), near-tie flips up to 0.5 nats.
- quantized: the Q4_1 GGUF served natively against its dequantized float32 golden
  (measured with the served-deployment tests; see the deployment docs).

Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        if not override:
            return self
        values = dict(self.__dict__)
        for key, value in override.items():
            if key == "divergence":
                values.update(dict(value))
            else:
                values[key] = value
        return Tolerance(**values)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


DEFAULTS: dict[str, Tolerance] = {
    FLOAT32: Tolerance(kl_mean_max=1e-4, kl_max=1e-3, top1_agreement_min=0.9,
                       logprob_atol=0.02, within_top_k=2, max_margin=0.05),
    HALF: Tolerance(logprob_atol=0.75),
    QUANTIZED: Tolerance(kl_mean_max=0.1, kl_max=1.0, top1_agreement_min=0.75,
                         logprob_atol=2.0, within_top_k=5, max_margin=1.0),
}


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


def flatten_override(override: Mapping[str, Any] | None) -> dict[str, Any]:
    """A spec/case tolerance mapping with `divergence: {…}` flattened into its keys."""
    out: dict[str, Any] = {}
    for key, value in (override or {}).items():
        if key == "divergence":
            out.update(dict(value))
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class ToleranceSource:
    """What a case's tolerance is made of: the spec's and the case's own values, applied
    over the defaults of whichever numeric class the comparison turns out to be."""

    spec: tuple[tuple[str, Any], ...] = ()     # defaults.tolerance, flattened
    case: tuple[tuple[str, Any], ...] = ()     # the case's own tolerance, flattened

    @classmethod
    def of(cls, spec: Mapping[str, Any] | None, case: Mapping[str, Any] | None) -> "ToleranceSource":
        return cls(tuple(sorted(flatten_override(spec).items())),
                   tuple(sorted(flatten_override(case).items())))

    def resolve(self, klass: str) -> Tolerance:
        return DEFAULTS[klass].merged(dict(self.spec)).merged(dict(self.case))

    def label(self, klass: str) -> str:
        """e.g. 'float32 defaults + spec: kl_mean_max + case: logprob_atol'."""
        parts = [f"{klass} defaults"]
        if self.spec:
            parts.append("spec: " + ", ".join(k for k, _ in self.spec))
        if self.case:
            parts.append("case: " + ", ".join(k for k, _ in self.case))
        return " + ".join(parts)
