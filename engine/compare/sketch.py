"""Seeded random-projection sketches of per-layer hidden states, so that a golden alone
is enough to localize a drift (kinds.causal_lm.localize).

A sketch of one layer's hidden states H (T positions × d features) over the chosen
positions P (at most MAX_POSITIONS of the T, spread evenly, first and last included):

    n_p = ||h_p||                                (per position, stored, 4 significant digits)
    v   = (1 / sqrt(|P|)) · Σ_{p in P} R_p · h_p / n_p      (DIMS numbers, stored, 6 decimals)

where R_p (DIMS × d) has independent entries ±1/sqrt(DIMS) drawn from a counter-based
hash of (seed, p, row, column) — no numpy RNG stream is involved, so the matrix is the
same on every machine and numpy version. Each position is scaled by the *golden's* norm
n_p, and the candidate is sketched with those same stored norms, so the projection is one
fixed linear map S applied to both sides and

    ||S(C) − S(G)||² ≈ (1/|P|) Σ_p ||c_p − g_p||² / ||g_p||²       (Johnson–Lindenstrauss)

i.e. the sketch's relative error estimates the RMS over positions of the per-position
relative L2 error — the `rel_err` that localize computes exactly when both sides' full
hidden states are at hand — with a relative standard error of about 1/sqrt(2·DIMS) ≈ 9 %;
the sketch cosine likewise estimates the mean per-position cosine. The massive
activations of a few positions (the attention sink at position 0) do not dominate,
because each position is normalised first.

Pure numpy; nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from specengine.portable_init import splitmix64

METHOD = "rademacher-v1"
DIMS = 64
MAX_POSITIONS = 64
SEED = 0
NORM_DIGITS = 4         # significant digits of the stored norms
VALUE_DECIMALS = 6      # decimals of the stored sketch values (|v| is about 1)

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def choose_positions(length: int, max_positions: int = MAX_POSITIONS) -> list[int]:
    """Up to `max_positions` positions of a sequence of `length`, evenly spread, the first
    and the last included (every position when the sequence is short enough)."""
    if length <= 0:
        return []
    if length <= max_positions:
        return list(range(length))
    picks = np.linspace(0, length - 1, max_positions)
    return sorted({int(round(x)) for x in picks})


def projection(seed: int, position: int, dims: int, width: int) -> np.ndarray:
    """R_p: (dims, width) float64 with entries ±1/sqrt(dims), a pure function of
    (seed, position, row, column)."""
    key = splitmix64(np.array([(int(seed) & 0xFFFFFFFF) << 32 | (int(position) & 0xFFFFFFFF)],
                               dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        counters = (np.arange(dims * width, dtype=np.uint64) + key) & _MASK
    bits = splitmix64(counters) >> np.uint64(63)
    signs = 1.0 - 2.0 * bits.astype(np.float64)
    return signs.reshape(dims, width) / math.sqrt(dims)


def round_sig(x: float, digits: int = NORM_DIGITS) -> float:
    """`x` rounded to `digits` significant digits (as the golden stores norms)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


@dataclass
class SketchSpec:
    """What both sides need to project alike: seed, size, positions and the golden's norms
    (per layer, per chosen position)."""

    seed: int
    dims: int
    positions: list[int]
    norms: list[list[float]]        # [layer][position index] — the reference's ||h_p||


def sketch_states(states: Sequence[np.ndarray], spec: SketchSpec) -> np.ndarray:
    """(layers, dims) sketches of per-layer hidden states (each (T, d)), projected with the
    reference's stored norms. Layers beyond `spec.norms` are not sketched."""
    layers = min(len(states), len(spec.norms))
    out = np.zeros((layers, spec.dims), dtype=np.float64)
    if not spec.positions or not layers:
        return out
    scale = 1.0 / math.sqrt(len(spec.positions))
    width = int(np.asarray(states[0]).shape[-1])
    for j, p in enumerate(spec.positions):
        rows = np.stack([np.asarray(states[i][p], dtype=np.float64) for i in range(layers)])
        if rows.shape[-1] != width:
            raise ValueError("hidden states of different widths cannot share one sketch")
        weights = np.array([1.0 / spec.norms[i][j] if spec.norms[i][j] > 0 else 0.0
                            for i in range(layers)])
        out += (rows * weights[:, None]) @ projection(spec.seed, p, spec.dims, width).T * scale
    return out


def record_sketch(states: Sequence[np.ndarray], names: Sequence[str], seed: int = SEED,
                  dims: int = DIMS, max_positions: int = MAX_POSITIONS) -> dict:
    """The golden record of a reference's per-layer hidden states: method, seed, dims,
    positions, and per layer its name, norms at the positions and its sketch `v`."""
    length = int(np.asarray(states[0]).shape[0]) if len(states) else 0
    positions = choose_positions(length, max_positions)
    norms = [[round_sig(np.linalg.norm(np.asarray(h[p], dtype=np.float64))) for p in positions]
             for h in states]
    spec = SketchSpec(seed, dims, positions, norms)
    vectors = sketch_states(states, spec)
    layers = [{"name": str(name), "norms": norms[i],
               "v": [round(float(x), VALUE_DECIMALS) + 0.0 for x in vectors[i]]}
              for i, name in enumerate(names)]
    return {"method": METHOD, "seed": int(seed), "dims": int(dims), "length": length,
            "positions": positions, "layers": layers}


def spec_of(record: dict) -> SketchSpec:
    """The projection a stored sketch was made with."""
    if record.get("method") != METHOD:
        raise ValueError(f"unknown sketch method {record.get('method')!r} (this specengine "
                         f"reads {METHOD!r}); re-record the golden with --update")
    return SketchSpec(int(record["seed"]), int(record["dims"]), list(record["positions"]),
                      [list(layer["norms"]) for layer in record["layers"]])


def stored_vectors(record: dict) -> np.ndarray:
    """(layers, dims) sketch vectors as stored in the golden."""
    return np.array([layer["v"] for layer in record["layers"]], dtype=np.float64)
