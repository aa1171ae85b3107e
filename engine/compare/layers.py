"""Localization: which layer does a candidate start to drift at?

Both sides run the case's teacher-forced sequence (the golden's prompt ids followed by its
greedy continuation, the last generated token dropped, exactly what `score` feeds) and
hand back per-layer hidden states: the embedding output, each decoder layer's output,
and the final norm's output. Per layer this module measures (numpy in, dataclasses out):

- `rel_err`: RMS over positions of ||c_p − g_p|| / ||g_p|| (the per-position relative L2
  error, so one position with massive activations cannot hide the others),
- `cosine`: mean over positions of cos(c_p, g_p), and `norm_ratio`: mean ||c_p|| / ||g_p||,
- element-wise: max |c − g|, max |c − g| / |g|, and the share of elements whose relative
  error is under 0.001 and under 0.005 (|g| is floored at REL_EPS for these).

Against a golden alone the reference's states are not at hand: its sketch
(compare.sketch) is, and the candidate is sketched the same way. `rel_err`, `cosine`
and `norm_ratio` are then estimated from the sketch (element-wise numbers are None).

The first flagged layer (the rule, documented in docs/localize.md):

    layer l is flagged when  rel_err[l] >= growth · rel_err[l−1]  and either
        rel_err[l] >= floor, or
        rel_err[l] >= jump_floor  and  rel_err[l] >= JUMP · max(rel_err[0..l−1])

with rel_err[−1] = 0 for the embedding (its input, the token ids, is exact). The first
flagged layer in order is reported: the layer whose error grows sharply relative to the
error already in its input, and is not just rounding noise. Defaults: growth 4; floor
25 × the unit roundoff of the coarser dtype of the two sides, at least 0.001 (bfloat16:
0.098, float16: 0.012, float32: 0.001). Measured on SmolLM2 (docs/localize.md): bf16
against fp32 noise reaches rel_err 0.053 and a growth of 4.0 between layers, while a
sign-flipped o_proj gives rel_err >= 0.17 with a growth >= 7.1 at its layer.

The second branch judges a jump against the preceding layers' own level: between two
float32 sides every layer sits at rounding level (full states ~1e-7, a golden sketch's
rounding <= 2.6e-6), so a layer 32x above everything before it is a real departure even
when it stays under the 0.001 floor (a one-layer float32 bug at layer 0 measured 3.3e-4,
329x its input). jump_floor is 1e-5 for float32 sides (4x above sketch rounding) and the
floor itself for half and coarser, where the floor already sits at rounding level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from specengine.compare import sketch as sk
from specengine.compare.arrays import UNIT_ROUNDOFF

GROWTH = 4.0
FLOOR_FACTOR = 25.0     # × unit roundoff of the coarser dtype
FLOOR_MIN = 1e-3
FLOOR = FLOOR_MIN       # the floor when both sides are float32
JUMP = 32.0             # a jump over every preceding layer's level
JUMP_MIN = 1e-5         # the least rel_err such a jump counts from (float32)
REL_EPS = 1e-6          # |g| floor in element-wise relative errors
RULE_TEXT = ("first layer whose rel_err (RMS over positions of ||c_p − g_p|| / ||g_p||) is at "
             "least {floor:.3g} and at least {growth:g}× the previous layer's")
JUMP_TEXT = (", or at least {jump_floor:.3g}, {growth:g}× the previous layer's and {jump:g}× "
             "every preceding layer's")


@dataclass
class LayerMetrics:
    """One layer of one case, candidate against reference. None: not measurable in this
    mode (element-wise numbers from a sketch)."""

    index: int
    name: str
    rel_err: float
    cosine: float
    norm_ratio: float
    max_abs: float | None = None
    max_rel: float | None = None
    frac_rel_lt_1e3: float | None = None
    frac_rel_lt_5e3: float | None = None
    growth: float | None = None     # rel_err / previous rel_err (None for an exact input)
    flagged: bool = False


@dataclass
class Localization:
    """Per-layer comparison of one case, and the first flagged layer."""

    case_id: str
    mode: str                       # full (both sides' hidden states) | sketch (golden's sketch)
    reference: str                  # backend (live) or golden file
    candidate: str
    positions: int                  # positions compared
    layers: list[LayerMetrics]
    first_flagged: int | None       # index into layers
    first_flagged_name: str | None
    growth: float = GROWTH
    floor: float = FLOOR
    rule: str = ""
    jump_floor: float = FLOOR
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    @property
    def summary(self) -> str:
        if self.first_flagged is None:
            worst = max(self.layers, key=lambda m: m.rel_err, default=None)
            tail = (f"; the largest rel_err is {worst.rel_err:.3g} at {worst.name}"
                    if worst else "")
            return (f"no layer flagged (no rel_err >= {self.floor:.3g} with a >= {self.growth:g}× "
                    f"jump over its input){tail}")
        m = self.layers[self.first_flagged]
        prev = self.layers[self.first_flagged - 1].rel_err if self.first_flagged else 0.0
        return (f"first flagged layer: {m.name} (rel_err {prev:.3g} → {m.rel_err:.3g}, "
                f"cosine {m.cosine:.4f}; {self.mode} comparison)")


def default_floor(*dtypes: str | None) -> float:
    """FLOOR_FACTOR × the unit roundoff of the coarsest of `dtypes`, at least FLOOR_MIN; an
    unknown dtype (quantised, or not recorded) counts as bfloat16."""
    u = max((UNIT_ROUNDOFF.get(str(d or "").lower(), UNIT_ROUNDOFF["bfloat16"])
             for d in dtypes), default=UNIT_ROUNDOFF["float32"])
    return max(FLOOR_MIN, FLOOR_FACTOR * u)


def default_jump_floor(*dtypes: str | None) -> float:
    """Where a jump over the preceding layers' level starts to count: JUMP_MIN between
    float32 sides, the floor itself for coarser ones (which sit at rounding level)."""
    u = max((UNIT_ROUNDOFF.get(str(d or "").lower(), UNIT_ROUNDOFF["bfloat16"])
             for d in dtypes), default=UNIT_ROUNDOFF["float32"])
    return min(default_floor(*dtypes), max(JUMP_MIN, FLOOR_FACTOR * u))


def _finite(value: Any) -> Any:
    """NaN / inf floats as None, recursively (results JSON has no NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- pure metrics ---------------------------------------------------------------------

def layer_metrics(index: int, name: str, ref: np.ndarray, cand: np.ndarray) -> LayerMetrics:
    """Metrics of one layer from both sides' full hidden states, (T, d) each."""
    g = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if g.shape != c.shape:
        raise ValueError(f"layer {name}: reference {g.shape} and candidate {c.shape} differ")
    diff = c - g
    gn = np.linalg.norm(g, axis=-1)
    cn = np.linalg.norm(c, axis=-1)
    dn = np.linalg.norm(diff, axis=-1)
    safe = np.where(gn > 0, gn, 1.0)
    rel_pos = np.where(gn > 0, dn / safe, np.where(dn > 0, np.inf, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_pos = np.where((gn > 0) & (cn > 0), (g * c).sum(-1) / (safe * np.where(cn > 0, cn, 1.0)),
                           np.where((gn == 0) & (cn == 0), 1.0, 0.0))
    rel_el = np.abs(diff) / np.maximum(np.abs(g), REL_EPS)
    return LayerMetrics(
        index=index, name=name, rel_err=float(np.sqrt(np.mean(rel_pos ** 2))),
        cosine=float(np.mean(cos_pos)), norm_ratio=float(np.mean(cn / safe)),
        max_abs=float(np.abs(diff).max(initial=0.0)), max_rel=float(rel_el.max(initial=0.0)),
        frac_rel_lt_1e3=float(np.mean(rel_el < 1e-3)), frac_rel_lt_5e3=float(np.mean(rel_el < 5e-3)))


def sketch_layer_metrics(index: int, name: str, ref_v: np.ndarray, cand_v: np.ndarray,
                         ref_norms: Sequence[float], cand_norms: Sequence[float]) -> LayerMetrics:
    """Metrics of one layer estimated from sketches (compare.sketch).

    The sketch is linear and each position is scaled by the reference's stored norm n_p, so
    the reference's weighted norm is 1 (exactly, up to the rounding of n_p) and
    rel_err = ||v_C − v_G|| estimates sqrt(mean_p ||c_p − g_p||² / ||g_p||²). The candidate's
    norms are exact: with r_p = ||c_p|| / n_p and A = mean_p r_p²,
    cosine = (A + 1 − rel_err²) / (2 sqrt(A)) (law of cosines; only rel_err is estimated);
    norm_ratio = mean_p r_p. Element-wise numbers are None.
    """
    g = np.asarray(ref_v, dtype=np.float64)
    c = np.asarray(cand_v, dtype=np.float64)
    rn = np.asarray(ref_norms, dtype=np.float64)
    cn = np.asarray(cand_norms, dtype=np.float64)
    ratio = np.where(rn > 0, cn / np.where(rn > 0, rn, 1.0), 1.0)
    rel = float(np.linalg.norm(c - g))
    a = float(np.mean(ratio ** 2)) if ratio.size else 1.0
    cosine = float(np.clip((a + 1.0 - rel ** 2) / (2.0 * np.sqrt(a)), -1.0, 1.0)) if a > 0 else 0.0
    return LayerMetrics(index=index, name=name, rel_err=rel, cosine=cosine,
                        norm_ratio=float(ratio.mean()) if ratio.size else 1.0)


def flag_layers(rel_errs: Sequence[float], growth: float = GROWTH, floor: float = FLOOR,
                jump_floor: float | None = None
                ) -> tuple[list[float | None], list[bool], int | None]:
    """The rule: per layer its growth over the previous layer's rel_err (None when the
    input was exact), whether it is flagged, and the first flagged index (or None).

    A NaN rel_err (NaN in the candidate's states) counts as infinite: the first layer that
    produces it is flagged, the layers that inherit it are not."""
    jump_floor = floor if jump_floor is None else jump_floor
    growths: list[float | None] = []
    flags: list[bool] = []
    prev = level = 0.0
    for err in rel_errs:
        err = float("inf") if np.isnan(err) else float(err)
        high = err >= floor or (err >= jump_floor and err >= JUMP * level)
        if prev == 0.0:
            ratio, flagged = None, high
        elif np.isinf(prev):
            ratio, flagged = 1.0, False
        else:
            ratio = err / prev
            flagged = high and err >= growth * prev
        growths.append(ratio)
        flags.append(bool(flagged))
        prev, level = err, max(level, err)
    first = next((i for i, f in enumerate(flags) if f), None)
    return growths, flags, first


def _assemble(case_id: str, mode: str, reference: str, candidate: str, positions: int,
              layers: list[LayerMetrics], growth: float, floor: float,
              notes: list[str] | None = None, jump_floor: float | None = None) -> Localization:
    jump_floor = floor if jump_floor is None else jump_floor
    growths, flags, first = flag_layers([m.rel_err for m in layers], growth, floor, jump_floor)
    for m, g, f in zip(layers, growths, flags):
        m.growth, m.flagged = g, f
    return Localization(case_id=case_id, mode=mode, reference=reference, candidate=candidate,
                        positions=positions, layers=layers, first_flagged=first,
                        first_flagged_name=layers[first].name if first is not None else None,
                        growth=growth, floor=floor, jump_floor=jump_floor,
                        rule=rule_text(growth, floor, jump_floor), notes=list(notes or []))


def rule_text(growth: float, floor: float, jump_floor: float) -> str:
    text = RULE_TEXT.format(growth=growth, floor=floor)
    if jump_floor < floor:
        text += JUMP_TEXT.format(jump_floor=jump_floor, growth=growth, jump=JUMP)
    return text


def localize_states(case_id: str, names: Sequence[str], ref_states: Sequence[np.ndarray],
                    cand_states: Sequence[np.ndarray], reference: str = "reference",
                    candidate: str = "candidate", growth: float = GROWTH,
                    floor: float = FLOOR, jump_floor: float | None = None) -> Localization:
    """Full comparison: both sides' per-layer hidden states, (T, d) each, same names."""
    if len(ref_states) != len(cand_states):
        raise ValueError(f"the reference has {len(ref_states)} layers and the candidate "
                         f"{len(cand_states)}")
    layers = [layer_metrics(i, n, r, c)
              for i, (n, r, c) in enumerate(zip(names, ref_states, cand_states))]
    positions = int(np.asarray(ref_states[0]).shape[0]) if len(ref_states) else 0
    return _assemble(case_id, "full", reference, candidate, positions, layers, growth, floor,
                     jump_floor=jump_floor)


def localize_sketch(case_id: str, record: dict, names: Sequence[str],
                    cand_states: Sequence[np.ndarray], reference: str = "golden",
                    candidate: str = "candidate", growth: float = GROWTH,
                    floor: float = FLOOR, jump_floor: float | None = None) -> Localization:
    """Golden-only comparison: the golden's stored sketch against the candidate's states."""
    spec = sk.spec_of(record)
    ref_names = [layer["name"] for layer in record["layers"]]
    notes = []
    if list(names) != ref_names:
        raise ValueError(f"the golden's sketch has layers {span(ref_names)} but the candidate "
                         f"returns {span(list(names))}")
    length = int(np.asarray(cand_states[0]).shape[0]) if len(cand_states) else 0
    if record.get("length") is not None and length != int(record["length"]):
        raise ValueError(f"the golden's sketch covers {record['length']} positions, the "
                         f"candidate's sequence has {length}")
    ref_v = sk.stored_vectors(record)
    cand_v = sk.sketch_states(cand_states, spec)
    layers = []
    for i, name in enumerate(names):
        h = np.asarray(cand_states[i], dtype=np.float64)
        cand_norms = [float(np.linalg.norm(h[p])) for p in spec.positions]
        norms = np.asarray(spec.norms[i], dtype=np.float64)
        layers.append(sketch_layer_metrics(i, name, ref_v[i], cand_v[i], norms, cand_norms))
    notes.append(f"estimated from the golden's {spec.dims}-dim sketch of {len(spec.positions)} "
                 "positions; element-wise errors need the reference live (--against)")
    return _assemble(case_id, "sketch", reference, candidate, len(spec.positions), layers,
                     growth, floor, notes, jump_floor)


def span(names: list[str]) -> str:
    return f"{names[0]} … {names[-1]} ({len(names)})" if names else "none"


# -- capture ---------------------------------------------------------------------------

def layer_names(decoder_layers: int) -> list[str]:
    """embedding, layer.0 … layer.{n-1}, final_norm."""
    return ["embedding"] + [f"layer.{i}" for i in range(decoder_layers)] + ["final_norm"]
