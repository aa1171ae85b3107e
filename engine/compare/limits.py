"""Where a comparison's limits come from: the class defaults, then the blocks a spec, a
backend and a case write for that class — and limits stated relative to the reference's
own measured noise. Pure: mappings in, a `Limits` dataclass out.

A tolerance block in a spec is keyed by numeric class (`{half: {kl_mean_max: 0.02},
float32: {kl_mean_max: 2e-4}}`). A comparison of class C is judged by C's defaults with,
in this order, the spec's C block (`defaults.tolerance.C`), the candidate backend's C
block, and the case's C block over them, key by key: the most specific writer wins.
Nothing written for another class applies.

A limit may be relative: `kl_mean_max: {noise: 3, floor: 1e-5}` is three times the
reference's own error of class C on that case and path (recorded with the golden by
`record-golden --noise C`), and never below the floor (default `NOISE_FLOORS`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from specengine.compare.tolerances import NOISE_FLOORS, NOISE_METRICS, flatten


class NoiseNotRecorded(Exception):
    """A relative limit whose class has no noise record for the case (the caller turns it
    into a golden error naming `record-golden --noise`)."""

    def __init__(self, key: str, klass: str, origin: str):
        self.key, self.klass, self.origin = key, klass, origin
        super().__init__(f"{origin}: {klass}.{key} is relative to the reference's own "
                         f"{klass} noise, which is not recorded")


@dataclass(frozen=True)
class Relative:
    """A limit of `multiplier` × the reference's measured noise, at least `floor`."""

    multiplier: float
    floor: float

    @classmethod
    def of(cls, key: str, value: Mapping[str, Any]) -> "Relative":
        return cls(float(value["noise"]), float(value.get("floor", NOISE_FLOORS[key])))

    def resolve(self, noise: float) -> float:
        return max(self.multiplier * float(noise), self.floor)

    def describe(self, klass: str, noise: float | None = None) -> str:
        text = f"{self.multiplier:g} × {klass} noise"
        if noise is not None:
            text += f" {noise:.3g}"
        return text + f", floor {self.floor:g}"


def is_relative(value: Any) -> bool:
    return isinstance(value, Mapping) and "noise" in value


@dataclass(frozen=True)
class Limit:
    """One limit as it judged: its value, who wrote it (`<class> default`, `spec`,
    `backend 'NAME'`, `case`) and, for a relative limit, the rule and the noise used."""

    key: str
    value: Any
    origin: str
    relative: Relative | None = None
    noise: float | None = None

    def describe(self, klass: str) -> str:
        if self.relative is None:
            return self.origin
        return f"{self.origin}: {self.relative.describe(klass, self.noise)}"


@dataclass(frozen=True)
class Limits:
    """The limits one comparison is judged by: its class, the numbers (the kind's
    tolerance dataclass) and where each number came from."""

    klass: str
    values: Any
    limits: tuple[Limit, ...]

    def origin(self, key: str) -> str:
        return next((lim.describe(self.klass) for lim in self.limits if lim.key == key),
                    f"{self.klass} default")

    def origins(self) -> dict[str, str]:
        return {lim.key: lim.describe(self.klass) for lim in self.limits}

    def label(self) -> str:
        """e.g. 'float32: kl_mean_max, kl_max from spec; logprob_atol from case (3 ×
        float32 noise 2.1e-05, floor 0.001); the rest class defaults' — every value not
        named is the class default, and no default is named that was overridden."""
        written = [lim for lim in self.limits if not lim.origin.endswith(" default")]
        if not written:
            return f"{self.klass}: class defaults"
        groups: dict[str, list[str]] = {}
        for lim in written:
            rule = f" ({lim.relative.describe(self.klass, lim.noise)})" if lim.relative else ""
            groups.setdefault(lim.origin, []).append(lim.key + rule)
        parts = [f"{', '.join(keys)} from {origin}" for origin, keys in groups.items()]
        rest = len(self.limits) - len(written)
        tail = "; the rest class defaults" if rest else ""
        return f"{self.klass}: {'; '.join(parts)}{tail}"

    def metrics(self) -> dict[str, Any]:
        """What a check records of its limits: the values, the label, each one's origin."""
        return {"tolerance": self.values.as_dict(), "tolerance_set": self.label(),
                "tolerance_class": self.klass, "limit_sources": self.origins()}


@dataclass(frozen=True)
class LimitSource:
    """The class-keyed blocks that apply to one case, in order (spec, backend, case):
    each `(origin, {class: block})`."""

    layers: tuple[tuple[str, Mapping[str, Mapping[str, Any]]], ...] = ()

    @classmethod
    def of(cls, spec: Mapping | None = None, case: Mapping | None = None) -> "LimitSource":
        """The layers of a spec's `defaults.tolerance` and a case's `tolerance`."""
        return cls(tuple((origin, dict(blocks)) for origin, blocks in
                         (("spec", spec), ("case", case)) if blocks))

    def with_layer(self, origin: str, blocks: Mapping[str, Mapping[str, Any]] | None,
                   before_last: bool = False) -> "LimitSource":
        """These layers plus one more (a backend's, which goes before the case's)."""
        if not blocks:
            return self
        layer = ((origin, blocks),)
        if before_last and self.layers and self.layers[-1][0] == "case":
            return LimitSource(self.layers[:-1] + layer + self.layers[-1:])
        return LimitSource(self.layers + layer)

    def written(self, klass: str) -> dict[str, tuple[str, Any]]:
        """key -> (origin, value) of what the layers write for `klass` (last one wins)."""
        out: dict[str, tuple[str, Any]] = {}
        for origin, blocks in self.layers:
            for key, value in flatten((blocks or {}).get(klass)).items():
                out[key] = (origin, value)
        return out

    def relative_keys(self, klass: str) -> list[str]:
        return [k for k, (_, v) in self.written(klass).items() if is_relative(v)]

    def resolve(self, klass: str, defaults: Any, noise: Mapping[str, float] | None = None,
                absolute_only: bool = False) -> Limits:
        """The limits of a `klass` comparison over `defaults` (the kind's dataclass for
        that class). `noise`: the reference's measured noise of `klass` on this path
        (kl_mean, kl_max, max_abs_dlogprob); a relative limit without it raises
        NoiseNotRecorded. With `absolute_only` relative limits are left out (what judges
        the reference itself while its noise is being recorded)."""
        values: dict[str, Any] = {}
        limits = {f.name: Limit(f.name, getattr(defaults, f.name), f"{klass} default")
                  for f in fields(defaults)}
        for key, (origin, value) in self.written(klass).items():
            if is_relative(value) and absolute_only:
                continue
            if is_relative(value):
                rel = Relative.of(key, value)
                measured = (noise or {}).get(NOISE_METRICS[key])
                if measured is None:
                    raise NoiseNotRecorded(key, klass, origin)
                values[key] = rel.resolve(measured)
                limits[key] = Limit(key, values[key], origin, rel, float(measured))
            else:
                values[key] = value
                limits[key] = Limit(key, value, origin)
        resolved = defaults.merged(values) if values else defaults
        return Limits(klass, resolved, tuple(limits.values()))
