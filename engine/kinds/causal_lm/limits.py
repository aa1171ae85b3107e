"""The limits one causal-LM case is judged by in one comparison: per path (one-pass,
decode) of the comparison's class, relative limits resolved against the reference's own
noise of that class on that path, and the candidate's own class for its prefill/decode
consistency — plus the candidate's error ÷ that noise, which every report shows.

A relative limit whose noise the golden does not hold is a golden problem (exit 2)
naming the command that records it, raised before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from specengine.compare.limits import Limits, NoiseNotRecorded
from specengine.compare.tolerances import NOISE_METRICS
from specengine.errors import GoldenError
from specengine.spec import Case, Spec

PATHS = ("prefill", "decode")


@dataclass(frozen=True)
class CaseLimits:
    """What judges one case: `prefill` and `decode` (the comparison's class), `own` (the
    candidate's own class, for its prefill/decode consistency), and the reference's
    measured noise of the comparison's class (None when not recorded)."""

    klass: str
    prefill: Limits
    decode: Limits
    own: Limits
    noise: Mapping[str, Mapping[str, float]] | None = None

    def ratios(self, path: str, measured: Mapping[str, Any]) -> dict[str, float] | None:
        """The candidate's error ÷ the reference's noise on `path` (None without noise; a
        noise of 0 gives no ratio for that metric)."""
        noise = (self.noise or {}).get(path)
        if not noise:
            return None
        out = {}
        for metric in NOISE_METRICS.values():
            value, base = measured.get(metric), noise.get(metric)
            if value is not None and base:
                out[metric] = float(value) / float(base)
        return out

    def metrics(self, path: str, measured: Mapping[str, Any]) -> dict[str, Any]:
        """A check's limit metrics on `path`, with the noise and the ratios when known."""
        out = (self.prefill if path == "prefill" else self.decode).metrics()
        noise = (self.noise or {}).get(path)
        if noise:
            out["noise"] = dict(noise)
            out["noise_ratio"] = self.ratios(path, measured)
        return out


def noise_of(record: Mapping[str, Any], klass: str) -> Mapping[str, Mapping[str, float]] | None:
    """A golden case record's noise of `klass` ({prefill: {...}, decode: {...}}), if any."""
    return (record.get("noise") or {}).get(klass)


def worse(noise: Mapping[str, Mapping[str, float]] | None) -> dict[str, float] | None:
    """Per metric, the larger of the two paths' noise (what consistency is judged by)."""
    if not noise:
        return None
    return {m: max(float(noise[p][m]) for p in PATHS if p in noise)
            for m in NOISE_METRICS.values()}


def case_limits(spec: Spec, case: Case, klass: str, own_class: str, backend: str | None,
                record: Mapping[str, Any] | None, golden_path: str = "the golden") -> CaseLimits:
    """Resolve a case's limits; GoldenError (exit 2) when a relative limit has no noise."""
    noise = noise_of(record or {}, klass)
    own_noise = noise_of(record or {}, own_class)
    try:
        return CaseLimits(
            klass=klass,
            prefill=spec.limits(case, klass, backend, (noise or {}).get("prefill")),
            decode=spec.limits(case, klass, backend, (noise or {}).get("decode")),
            own=spec.limits(case, own_class, backend, worse(own_noise)),
            noise=noise)
    except NoiseNotRecorded as exc:
        raise GoldenError(
            f"case '{case.id}' ({spec.path}:{case.line}): tolerance {exc.klass}.{exc.key} "
            f"({exc.origin}) is relative to the reference's own {exc.klass} noise, which "
            f"{golden_path} does not record; record it with `specengine record-golden "
            f"{spec.path} --noise {exc.klass}`") from None


def check_noise_records(spec: Spec, cases: Iterable[Case], records: Mapping[str, Any],
                        klass: str, own_class: str, backend: str | None,
                        golden_path: str) -> None:
    """Every case's limits resolve (before a model is loaded): exit 2 otherwise."""
    for case in cases:
        case_limits(spec, case, klass, own_class, backend, records.get(case.id), golden_path)
