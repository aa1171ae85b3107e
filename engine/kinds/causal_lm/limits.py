"""The limits one causal-LM case is judged by in one comparison: per path (one-pass,
decode) of the comparison's class, relative limits resolved against the reference's own
noise of that class on that path, and the candidate's own class for its prefill/decode
consistency — plus the candidate's error ÷ that noise, which every report shows.

A relative limit whose noise the golden does not hold is a golden problem (exit 2)
naming the command that records it, raised before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from specengine.compare.limits import Limits, NoiseNotRecorded
from specengine.compare.tolerances import NOISE_METRICS
from specengine.errors import GoldenError
from specengine.kinds.causal_lm.golden import CaseNoise, LmCaseRecord
from specengine.spec import Case, Spec



@dataclass(frozen=True)
class CaseLimits:
    """What judges one case: `prefill` and `decode` (the comparison's class), `own` (the
    candidate's own class, for its prefill/decode consistency), and the reference's
    measured noise of the comparison's class (None when not recorded)."""

    klass: str
    prefill: Limits
    decode: Limits
    own: Limits
    noise: CaseNoise | None = None

    def ratios(self, path: str, measured: Mapping[str, Any]) -> dict[str, float] | None:
        """The candidate's error ÷ the reference's noise on `path` (None without noise; a
        noise of 0 gives no ratio for that metric)."""
        if self.noise is None:
            return None
        noise = self.noise.path(path).as_dict()
        out = {}
        for metric in NOISE_METRICS.values():
            value, base = measured.get(metric), noise[metric]
            if value is not None and base:
                out[metric] = float(value) / float(base)
        return out

    def metrics(self, path: str, measured: Mapping[str, Any]) -> dict[str, Any]:
        """A check's limit metrics on `path`, with the noise and the ratios when known."""
        out = (self.prefill if path == "prefill" else self.decode).metrics()
        if self.noise is not None:
            out["noise"] = self.noise.path(path).as_dict()
            out["noise_ratio"] = self.ratios(path, measured)
        return out


def case_limits(spec: Spec, case: Case, klass: str, own_class: str, backend: str | None,
                record: LmCaseRecord | None, golden_path: str = "the golden") -> CaseLimits:
    """Resolve a case's limits; GoldenError (exit 2) when a relative limit has no noise."""
    noise = record.noise_of(klass) if record is not None else None
    own_noise = record.noise_of(own_class) if record is not None else None
    try:
        return CaseLimits(
            klass=klass,
            prefill=spec.limits(case, klass, backend, _of(noise, "prefill")),
            decode=spec.limits(case, klass, backend, _of(noise, "decode")),
            own=spec.limits(case, own_class, backend,
                            own_noise.worse().as_dict() if own_noise else None),
            noise=noise)
    except NoiseNotRecorded as exc:
        raise GoldenError(
            f"case '{case.id}' ({spec.path}:{case.line}): tolerance {exc.klass}.{exc.key} "
            f"({exc.origin}) is relative to the reference's own {exc.klass} noise, which "
            f"{golden_path} does not record; record it with `specengine record-golden "
            f"{spec.path} --noise {exc.klass}`") from None


def _of(noise: CaseNoise | None, path: str) -> dict[str, float] | None:
    return noise.path(path).as_dict() if noise is not None else None
