"""Portable synthetic weights: the same bytes on every machine and with any library version.

A synthetic stand-in's weights are drawn by specengine itself, one tensor at a time, from
(seed, tensor name, shape) alone. The generator uses only integer hashing (SplitMix64
over a per-tensor counter) and exactly rounded IEEE operations (+, -, *, /, sqrt), never
exp/log/sin/cos, whose vectorised implementations differ between CPUs; so a weight file
drawn here is bit-identical wherever it is drawn.

Draws are made per tensor of the saved checkpoint (the names and shapes that
`save_pretrained` writes, which every library version must keep reading), with these
rules (`std` is the spec's `init_std`, else the config's `initializer_range`, else 0.02):

- a tensor with two or more dimensions (matrices, embeddings, convolution kernels):
  zero-mean, standard deviation `std`;
- a one-dimensional tensor that the library initialises to one constant c (norm weights
  are 1, biases 0, a zero-centred norm's weight 0): c plus noise — standard deviation
  0.05 x |c| for c != 0 (norm weights near 1), 0.1 x std for c = 0 (biases near 0) — so a
  port that drops a bias or a norm scale is visible;
- `A_log` (the state decay of Mamba / gated-delta-net layers): uniform in [0, 2.77], i.e.
  A = exp(A_log) in [1, 16], the range those layers are stable in;
- any other one-dimensional tensor the library fills at random: a draw with the
  library's mean and standard deviation, each rounded to two significant digits.

The noise is an Irwin-Hall sum of four uniforms, scaled to unit variance: close to a
normal distribution, bounded by ±2·sqrt(3), and made of exact operations only.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

VERSION = "portable-init-1"   # part of every synthetic model's fingerprint and cache key
A_LOG_MAX = 2.772588722239781  # log(16), a literal: no log() at draw time

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_SQRT3 = math.sqrt(3.0)       # sqrt is exactly rounded everywhere


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): the portable counter-
    based generator behind seeded weights and layer sketches."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def _key(seed: int, name: str, shape: tuple[int, ...]) -> int:
    text = f"{VERSION}\0{int(seed)}\0{name}\0{','.join(map(str, shape))}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def uniforms(seed: int, name: str, shape: tuple[int, ...], draws: int = 1) -> np.ndarray:
    """`draws` arrays of uniforms in [0, 1) (float64, 53 random bits each), stacked on a
    new first axis; a pure function of (seed, name, shape)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    key = np.uint64(_key(seed, name, tuple(shape)))
    with np.errstate(over="ignore"):
        counters = (np.arange(n * draws, dtype=np.uint64) + key) & _MASK
    bits = splitmix64(counters) >> np.uint64(11)
    return (bits.astype(np.float64) * (1.0 / (1 << 53))).reshape((draws, *shape))


def unit_noise(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance noise (Irwin-Hall of four uniforms), float64."""
    u = uniforms(seed, name, shape, draws=4)
    return ((u[0] + u[1]) + (u[2] + u[3]) - 2.0) * _SQRT3


def _sig2(x: float) -> float:
    """x rounded to two significant digits, through its decimal text (portable)."""
    return float(f"{x:.1e}")


def draw(seed: int, name: str, shape: tuple[int, ...], std: float,
         library_values: np.ndarray | None = None) -> np.ndarray:
    """The float32 values of one checkpoint tensor. `library_values` (what the library's
    own initialiser produced) only chooses the rule of a one-dimensional tensor."""
    shape = tuple(int(d) for d in shape)
    if len(shape) >= 2 or library_values is None:
        return (unit_noise(seed, name, shape) * float(std)).astype(np.float32)
    if name.rsplit(".", 1)[-1] == "A_log":
        return (uniforms(seed, name, shape)[0] * A_LOG_MAX).astype(np.float32)
    lib = np.asarray(library_values, dtype=np.float64).reshape(shape)
    finite = lib[np.isfinite(lib)]
    if finite.size and np.all(finite == finite.flat[0]) and finite.size == lib.size:
        c = _sig2(float(finite.flat[0])) if finite.flat[0] != 0 else 0.0
        scale = 0.05 * abs(c) if c != 0 else 0.1 * float(std)
        return (c + unit_noise(seed, name, shape) * scale).astype(np.float32)
    mean = _sig2(float(finite.mean())) if finite.size else 0.0
    spread = _sig2(float(finite.std())) if finite.size > 1 else 0.1 * float(std)
    return (mean + unit_noise(seed, name, shape) * spread).astype(np.float32)


def portable_checkpoint(folder, seed: int, std: float) -> list[str]:
    """Redraw every floating-point tensor of the safetensors files in `folder` with `draw`
    (integer tensors and the file layout are kept); the names redrawn."""
    from pathlib import Path

    from safetensors.numpy import load_file, save_file

    names: list[str] = []
    for weights in sorted(Path(folder).glob("*.safetensors")):
        tensors = load_file(str(weights))
        out = {}
        for name in sorted(tensors):
            value = tensors[name]
            if value.dtype.kind == "f":
                new = draw(seed, name, value.shape, std, value if value.ndim == 1 else None)
                out[name] = new.astype(value.dtype, copy=False)
                names.append(name)
            else:
                out[name] = value
        weights.unlink()
        save_file(out, str(weights), metadata={"format": "pt"})
    return names
