"""The operators an ops spec can name: their dimensions, parameters, seeded inputs and
one torch implementation each.

The same implementation runs twice: on the candidate backend's device in its dtype, and
as the oracle in float64 on the CPU (from the candidate's dtype-rounded inputs, so the
oracle measures the operator, not the rounding of its inputs). Inputs are drawn in
float64 from numpy's PCG64 generator (stable across numpy versions and machines) and
scaled so every output is O(1).

This module imports neither torch nor numpy-heavy code at import time; implementations
receive the torch module as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from specengine.portable_init import uniforms
from specengine.portable_init import unit_noise

REQUIRED = object()


@dataclass(frozen=True)
class OpDef:
    name: str
    summary: str
    dims: dict[str, Any]                  # name -> default (REQUIRED, or a name of another dim)
    params: dict[str, Any]                # name -> default (REQUIRED)
    inputs: Callable                      # (rng, dims, params) -> {name: float64 ndarray}
    run: Callable                         # (torch, tensors, dims, params, dtype) -> {name: tensor}
    reduction: Callable = lambda d: 1     # longest reduction length, for reading the errors
    choices: dict[str, tuple] = field(default_factory=dict)   # param -> allowed values


def _n(rng, shape, std=1.0):
    return rng.standard_normal(shape) * std


# -- implementations (torch passed in; tensors already on device and in dtype) ---------

def _matmul(torch, t, d, p, dtype):
    return {"out": torch.matmul(t["a"], t["b"])}


def _linear(torch, t, d, p, dtype):
    return {"out": torch.nn.functional.linear(t["x"], t["weight"], t.get("bias"))}


def _rms_norm(torch, t, d, p, dtype):
    x, w, eps = t["x"], t["weight"], float(p["eps"])
    if p["impl"] == "upcast":   # the Hugging Face pattern: normalise in float32, cast back
        h = x if x.dtype == torch.float64 else x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return {"out": w * h.to(x.dtype)}
    return {"out": torch.nn.functional.rms_norm(x, (x.shape[-1],), w, eps)}


def _layer_norm(torch, t, d, p, dtype):
    x = t["x"]
    return {"out": torch.nn.functional.layer_norm(x, (x.shape[-1],), t["weight"], t["bias"],
                                                  float(p["eps"]))}


def _softmax(torch, t, d, p, dtype):
    return {"out": torch.softmax(t["x"] * float(p["scale"]), dim=-1)}


def _silu(torch, t, d, p, dtype):
    return {"out": torch.nn.functional.silu(t["x"])}


def _swiglu(torch, t, d, p, dtype):
    return {"out": torch.nn.functional.silu(t["gate"]) * t["up"]}


def _rotary(torch, t, d, p, dtype):
    q = t["q"]
    dim = q.shape[-1]
    exact = q.dtype == torch.float64
    angle_dtype = torch.float64 if exact else torch.float32
    theta = float(p["theta"])
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=q.device)
                                .to(angle_dtype) / dim))
    pos = torch.arange(q.shape[-2], device=q.device, dtype=torch.int64) + int(p["position_offset"])
    freqs = pos.to(angle_dtype)[:, None] * inv_freq[None, :]
    if p["style"] == "interleaved":
        emb = freqs.repeat_interleave(2, dim=-1)
        x1, x2 = q[..., 0::2], q[..., 1::2]
        rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        emb = torch.cat((freqs, freqs), dim=-1)
        half = dim // 2
        rot = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if p["precision"] == "float32" and not exact:   # rotate in float32, cast back
        out = q.float() * cos + rot.float() * sin
        return {"out": out.to(q.dtype)}
    return {"out": q * cos.to(q.dtype) + rot * sin.to(q.dtype)}


def _sdpa(torch, t, d, p, dtype):
    q, k, v = t["q"], t["k"], t["v"]
    groups = d["heads"] // d["kv_heads"]
    native = p["gqa"] == "native"
    if groups > 1 and not native:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    kwargs: dict[str, Any] = {}
    if groups > 1 and native:
        kwargs["enable_gqa"] = True
    if p["causal"]:
        if d["seq"] == d["kv_seq"]:
            kwargs["is_causal"] = True
        else:   # queries are the last `seq` positions of `kv_seq` (decoding with a cache)
            qpos = torch.arange(d["seq"], device=q.device)[:, None] + (d["kv_seq"] - d["seq"])
            kpos = torch.arange(d["kv_seq"], device=q.device)[None, :]
            kwargs["attn_mask"] = kpos <= qpos
    return {"out": torch.nn.functional.scaled_dot_product_attention(q, k, v, **kwargs)}


def _moe_routing(torch, t, d, p, dtype):
    """ERNIE-4.5's router: softmax over expert logits, top-k of (probabilities + optional
    correction bias), weights = the selected probabilities (divided by their sum)."""
    x, w = t["x"], t["weight"]
    logits = torch.nn.functional.linear(x, w)
    probs = torch.softmax(logits, dim=-1)
    select = probs + t["bias"] if "bias" in t else probs
    _, ids = torch.topk(select, int(p["top_k"]), dim=-1)
    weights = torch.gather(probs, -1, ids)
    if p["normalize"]:
        weights = weights / torch.clamp(weights.sum(-1, keepdim=True), min=1e-12)
    return {"scores": probs, "ids": ids, "weights": weights}


# -- inputs ----------------------------------------------------------------------------

def _in_matmul(rng, d, p):
    return {"a": _n(rng, (d["batch"], d["m"], d["k"])), "b": _n(rng, (d["k"], d["n"]), d["k"] ** -0.5)}


def _in_linear(rng, d, p):
    out = {"x": _n(rng, (d["tokens"], d["in_features"])),
           "weight": _n(rng, (d["out_features"], d["in_features"]), d["in_features"] ** -0.5)}
    if p["bias"]:
        out["bias"] = _n(rng, (d["out_features"],), 0.1)
    return out


def _scaled_rows(rng, rows, cols):
    """Rows of varied magnitude (a scale per row between 1/4 and 4), as hidden states
    have; the scale is (0.5 + 1.5 u) x 2^k for integer k, exact in floating point."""
    u = rng.uniform((rows, 1))
    k = np.floor(rng.uniform((rows, 1)) * 3.0) - 1.0          # -1, 0 or 1
    return _n(rng, (rows, cols)) * ((0.5 + 1.5 * u) * np.ldexp(1.0, k.astype(np.int64)))


def _in_rms_norm(rng, d, p):
    return {"x": _scaled_rows(rng, d["tokens"], d["hidden"]),
            "weight": 1.0 + _n(rng, (d["hidden"],), 0.1)}


def _in_layer_norm(rng, d, p):
    return {"x": _scaled_rows(rng, d["tokens"], d["hidden"]) + _n(rng, (d["tokens"], 1), 0.5),
            "weight": 1.0 + _n(rng, (d["hidden"],), 0.1), "bias": _n(rng, (d["hidden"],), 0.1)}


def _in_softmax(rng, d, p):
    return {"x": _n(rng, (d["rows"], d["cols"]), 2.0)}


def _in_silu(rng, d, p):
    return {"x": _n(rng, (d["tokens"], d["hidden"]), 2.0)}


def _in_swiglu(rng, d, p):
    return {"gate": _n(rng, (d["tokens"], d["intermediate"]), 2.0),
            "up": _n(rng, (d["tokens"], d["intermediate"]))}


def _in_rotary(rng, d, p):
    return {"q": _n(rng, (d["batch"], d["heads"], d["seq"], d["head_dim"]))}


def _in_sdpa(rng, d, p):
    b, h, kvh, s, kvs, hd = (d[k] for k in ("batch", "heads", "kv_heads", "seq", "kv_seq", "head_dim"))
    return {"q": _n(rng, (b, h, s, hd)), "k": _n(rng, (b, kvh, kvs, hd)), "v": _n(rng, (b, kvh, kvs, hd))}


def _in_moe_routing(rng, d, p):
    out = {"x": _n(rng, (d["tokens"], d["hidden"])),
           "weight": _n(rng, (d["experts"], d["hidden"]), 2.0 * d["hidden"] ** -0.5)}
    if p["correction_bias"]:
        out["bias"] = _n(rng, (d["experts"],), 0.01)
    return out


OPS: dict[str, OpDef] = {op.name: op for op in (
    OpDef("matmul", "out = a @ b; a (batch, m, k), b (k, n)",
          {"batch": 1, "m": REQUIRED, "k": REQUIRED, "n": REQUIRED}, {},
          _in_matmul, _matmul, lambda d: d["k"]),
    OpDef("linear", "out = x @ weight^T (+ bias); x (tokens, in_features)",
          {"tokens": REQUIRED, "in_features": REQUIRED, "out_features": REQUIRED}, {"bias": False},
          _in_linear, _linear, lambda d: d["in_features"]),
    OpDef("rms_norm", "x / sqrt(mean(x^2) + eps) * weight over the last axis",
          {"tokens": REQUIRED, "hidden": REQUIRED}, {"eps": 1e-6, "impl": "functional"},
          _in_rms_norm, _rms_norm, lambda d: d["hidden"], {"impl": ("functional", "upcast")}),
    OpDef("layer_norm", "(x - mean) / sqrt(var + eps) * weight + bias over the last axis",
          {"tokens": REQUIRED, "hidden": REQUIRED}, {"eps": 1e-5},
          _in_layer_norm, _layer_norm, lambda d: d["hidden"]),
    OpDef("softmax", "softmax(x * scale) over the last axis",
          {"rows": REQUIRED, "cols": REQUIRED}, {"scale": 1.0},
          _in_softmax, _softmax, lambda d: d["cols"]),
    OpDef("silu", "x * sigmoid(x)", {"tokens": REQUIRED, "hidden": REQUIRED}, {},
          _in_silu, _silu),
    OpDef("swiglu", "silu(gate) * up", {"tokens": REQUIRED, "intermediate": REQUIRED}, {},
          _in_swiglu, _swiglu),
    OpDef("rotary", "rotary position embedding of q (batch, heads, seq, head_dim)",
          {"batch": 1, "heads": REQUIRED, "seq": REQUIRED, "head_dim": REQUIRED},
          {"theta": 10000.0, "position_offset": 0, "style": "half", "precision": "dtype"},
          _in_rotary, _rotary, lambda d: 1,
          {"style": ("half", "interleaved"), "precision": ("dtype", "float32")}),
    OpDef("sdpa", "scaled-dot-product attention, causal and grouped-query",
          {"batch": 1, "heads": REQUIRED, "kv_heads": "heads", "seq": REQUIRED, "kv_seq": "seq",
           "head_dim": REQUIRED}, {"causal": True, "gqa": "native"},
          _in_sdpa, _sdpa, lambda d: max(d["kv_seq"], d["head_dim"]), {"gqa": ("native", "repeat")}),
    OpDef("moe_topk_routing", "router: softmax(x @ weight^T), top-k expert ids and weights",
          {"tokens": REQUIRED, "hidden": REQUIRED, "experts": REQUIRED},
          {"top_k": REQUIRED, "normalize": True, "correction_bias": False},
          _in_moe_routing, _moe_routing, lambda d: d["hidden"]),
)}


def resolve_dims(op: OpDef, given: dict) -> tuple[dict | None, str]:
    """Full dimensions (defaults filled in), or (None, error message)."""
    unknown = [k for k in given if k not in op.dims]
    if unknown:
        return None, f"unknown dimension '{unknown[0]}' for {op.name} (its dimensions: " \
                     f"{', '.join(op.dims)})"
    dims = {}
    for name, default in op.dims.items():
        if name in given:
            dims[name] = int(given[name])
        elif default is REQUIRED:
            return None, f"{op.name} needs shape.{name} (its dimensions: {', '.join(op.dims)})"
        elif isinstance(default, str):
            dims[name] = None
        else:
            dims[name] = default
    for name, default in op.dims.items():
        if dims[name] is None:
            dims[name] = dims[default]
    if op.name == "sdpa":
        if dims["heads"] % dims["kv_heads"]:
            return None, f"sdpa: heads {dims['heads']} is not a multiple of kv_heads {dims['kv_heads']}"
        if dims["kv_seq"] < dims["seq"]:
            return None, f"sdpa: kv_seq {dims['kv_seq']} is shorter than seq {dims['seq']}"
    if op.name == "rotary" and dims["head_dim"] % 2:
        return None, "rotary: head_dim must be even"
    return dims, ""


def resolve_params(op: OpDef, given: dict, dims: dict) -> tuple[dict | None, str]:
    unknown = [k for k in given if k not in op.params]
    if unknown:
        known = ", ".join(op.params) or "none"
        return None, f"unknown parameter '{unknown[0]}' for {op.name} (its parameters: {known})"
    params = {}
    for name, default in op.params.items():
        if name in given:
            params[name] = given[name]
        elif default is REQUIRED:
            return None, f"{op.name} needs params.{name}"
        else:
            params[name] = default
        if name in op.choices and params[name] not in op.choices[name]:
            return None, f"{op.name}: params.{name} must be one of {', '.join(op.choices[name])}"
        default_type = type(default) if default is not REQUIRED else int
        value = params[name]
        if default_type is bool and not isinstance(value, bool):
            return None, f"{op.name}: params.{name} must be true or false"
        if default_type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return None, f"{op.name}: params.{name} must be a number"
    if op.name == "moe_topk_routing" and not 1 <= int(params["top_k"]) <= dims["experts"]:
        return None, f"moe_topk_routing: params.top_k must be between 1 and experts ({dims['experts']})"
    for key in ("eps", "theta"):
        if key in params and not float(params[key]) > 0:
            return None, f"{op.name}: params.{key} must be positive"
    return params, ""


class PortableRng:
    """The operator inputs' generator: portable draws (integer hashing and exactly
    rounded operations, no exp/log), one stream per call, so the inputs are the same
    bytes on every CPU and with every numpy version."""

    def __init__(self, seed: int):
        self.seed, self.calls = int(seed), 0

    def _stream(self) -> str:
        self.calls += 1
        return f"ops-input-{self.calls}"

    def standard_normal(self, shape) -> np.ndarray:

        return unit_noise(self.seed, self._stream(), tuple(shape))

    def uniform(self, shape) -> np.ndarray:

        return uniforms(self.seed, self._stream(), tuple(shape))[0]


def draw_inputs(op: OpDef, dims: dict, params: dict, seed: int) -> dict[str, np.ndarray]:
    rng = PortableRng(seed)
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in op.inputs(rng, dims, params).items()}
