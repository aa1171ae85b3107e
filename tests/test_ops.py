"""kind ops — every operator's float64 oracle against a plain numpy implementation, the
dtype-relative metric, the near-tie rule of MoE routing, spec validation, and the ERNIE
operator spec on cpu and cpu-bf16: bf16-sized errors for bf16 (not zero), same-device
comparisons labelled self-check, the ops golden's staleness and integrity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import REPO, cli, load_json, write_spec
from specengine.compare.arrays import UNIT_ROUNDOFF, dtype_error
from specengine.errors import GoldenError, SpecError
from specengine.spec import load_spec, parse_spec

ERNIE = REPO / "specs" / "ops" / "ernie45-ops.yaml"

os.environ.setdefault("OMP_NUM_THREADS", "1")


# -- the oracle: torch float64 vs plain numpy ------------------------------------------

def _silu(x):
    return x / (1 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rotary_np(q, theta, offset, style):
    d = q.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = (np.arange(q.shape[-2]) + offset)[:, None] * inv[None, :]
    if style == "interleaved":
        ang = np.repeat(ang, 2, axis=-1)
        rot = np.stack((-q[..., 1::2], q[..., 0::2]), -1).reshape(q.shape)
    else:
        ang = np.concatenate([ang, ang], -1)
        rot = np.concatenate([-q[..., d // 2:], q[..., :d // 2]], -1)
    return q * np.cos(ang) + rot * np.sin(ang)


def _sdpa_np(q, k, v, causal):
    groups = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, groups, 1), np.repeat(v, groups, 1)
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        allowed = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        s = np.where(allowed, s, -np.inf)
    return _softmax(s) @ v


NUMPY = {
    "matmul": lambda i, p: {"out": i["a"] @ i["b"]},
    "linear": lambda i, p: {"out": i["x"] @ i["weight"].T + i.get("bias", 0.0)},
    "rms_norm": lambda i, p: {"out": i["x"] / np.sqrt((i["x"] ** 2).mean(-1, keepdims=True)
                                                       + p["eps"]) * i["weight"]},
    "layer_norm": lambda i, p: {"out": (i["x"] - i["x"].mean(-1, keepdims=True))
                                / np.sqrt(i["x"].var(-1, keepdims=True) + p["eps"]) * i["weight"]
                                + i["bias"]},
    "softmax": lambda i, p: {"out": _softmax(i["x"] * p["scale"])},
    "silu": lambda i, p: {"out": _silu(i["x"])},
    "swiglu": lambda i, p: {"out": _silu(i["gate"]) * i["up"]},
    "rotary": lambda i, p: {"out": _rotary_np(i["q"], p["theta"], p["position_offset"], p["style"])},
    "sdpa": lambda i, p: {"out": _sdpa_np(i["q"], i["k"], i["v"], p["causal"])},
}

SMALL = [
    ("matmul", {"batch": 2, "m": 3, "k": 16, "n": 5}, {}),
    ("linear", {"tokens": 4, "in_features": 8, "out_features": 6}, {"bias": True}),
    ("rms_norm", {"tokens": 4, "hidden": 16}, {"eps": 1e-5}),
    ("rms_norm", {"tokens": 4, "hidden": 16}, {"eps": 1e-5, "impl": "upcast"}),
    ("layer_norm", {"tokens": 4, "hidden": 16}, {}),
    ("softmax", {"rows": 3, "cols": 9}, {"scale": 0.5}),
    ("silu", {"tokens": 3, "hidden": 8}, {}),
    ("swiglu", {"tokens": 3, "intermediate": 8}, {}),
    ("rotary", {"heads": 2, "seq": 5, "head_dim": 8}, {"theta": 500000.0, "position_offset": 7}),
    ("rotary", {"heads": 2, "seq": 5, "head_dim": 8}, {"style": "interleaved", "precision": "float32"}),
    ("sdpa", {"heads": 4, "kv_heads": 2, "seq": 5, "head_dim": 8}, {"causal": True}),
    ("sdpa", {"heads": 4, "kv_heads": 1, "seq": 2, "kv_seq": 6, "head_dim": 8}, {"gqa": "repeat"}),
    ("sdpa", {"heads": 2, "seq": 4, "head_dim": 8}, {"causal": False}),
]


@pytest.mark.parametrize("op,shape,params", SMALL, ids=[f"{o}-{i}" for i, (o, _, _) in enumerate(SMALL)])
def test_float64_oracle_matches_numpy(op, shape, params):
    from specengine.spec import OpCase, OpTolerance
    from specengine.kinds.ops.runner import run_oracle
    from specengine.spec.ops_catalog import OPS, draw_inputs, resolve_dims, resolve_params

    dims, _ = resolve_dims(OPS[op], shape)
    full, problem = resolve_params(OPS[op], params, dims)
    assert full is not None, problem
    inputs = draw_inputs(OPS[op], dims, full, seed=3)
    case = OpCase("x", op, dims, full, None, 3, (), OpTolerance(), None)
    got = run_oracle(case, inputs)["out"]
    want = NUMPY[op](inputs, full)["out"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_routing_oracle_matches_numpy():
    from specengine.spec import OpCase, OpTolerance
    from specengine.kinds.ops.runner import run_oracle
    from specengine.spec.ops_catalog import OPS, draw_inputs, resolve_dims, resolve_params

    op = OPS["moe_topk_routing"]
    dims, _ = resolve_dims(op, {"tokens": 6, "hidden": 16, "experts": 8})
    params, _ = resolve_params(op, {"top_k": 3, "correction_bias": True}, dims)
    inputs = draw_inputs(op, dims, params, 1)
    out = run_oracle(OpCase("r", op.name, dims, params, None, 1, (), OpTolerance(), None), inputs)
    probs = _softmax(inputs["x"] @ inputs["weight"].T)
    ids = np.argsort(-(probs + inputs["bias"]), axis=-1, kind="stable")[:, :3]
    assert np.array_equal(np.sort(out["ids"], -1), np.sort(ids, -1))
    w = np.take_along_axis(probs, out["ids"], -1)
    np.testing.assert_allclose(out["weights"], w / w.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(out["scores"], probs, rtol=1e-12)


# -- metrics (pure) --------------------------------------------------------------------

def test_dtype_error_ratio_is_about_one_for_a_correctly_rounded_result():
    import torch

    exact = np.random.default_rng(0).standard_normal(10_000)
    rounded = torch.from_numpy(exact).to(torch.bfloat16).double().numpy()
    err = dtype_error(exact, rounded, rounded, "bfloat16")
    assert err.dtype_error_ratio == pytest.approx(1.0)
    assert 0.5 < err.max_err_dtype_units <= 1.0 + 1e-9       # at most half an ulp = u
    doubled = exact + 2 * (rounded - exact)
    assert dtype_error(exact, doubled, rounded, "bfloat16").dtype_error_ratio == pytest.approx(2.0)
    assert dtype_error(exact, exact, rounded, "bfloat16").dtype_error_ratio == 0.0
    # an exactly representable result: the baseline is floored, not zero
    ints = np.arange(8.0)
    assert np.isfinite(dtype_error(ints, ints + 1e-3, ints, "float32").dtype_error_ratio)
    assert UNIT_ROUNDOFF["bfloat16"] == 2.0 ** -8


def test_routing_near_tie_rule():
    from specengine.kinds.ops.checks import compare_routing

    ref_ids = np.array([[0, 1], [0, 1], [0, 1]])
    cand_ids = np.array([[0, 1], [0, 2], [0, 3]])
    select = np.array([[0.5, 0.3, 0.29, 0.1]] * 3)
    err = np.array([0.0, 0.006, 0.006])
    r = compare_routing(ref_ids, cand_ids, select, err)
    # token 1 swapped 1 for 2: gap 0.01 <= 2 x 0.006, a near-tie; token 3 swapped for an
    # expert 0.2 below: a real disagreement
    assert (r.agree, r.near_ties, r.mismatched) == (1, 1, [2])
    assert list(r.matched_rows) == [True, False, False]


# -- spec validation -------------------------------------------------------------------

OPS_SPEC = """\
specengine: 1
name: o
ops:
  - id: a
    op: matmul
    shape: {m: 2, k: 3, n: 4}
"""


@pytest.mark.parametrize("text,line,fragment", [
    (OPS_SPEC.replace("m: 2, ", "m: 2, q: 1, "), 6, "unknown dimension 'q' for matmul"),
    (OPS_SPEC.replace("m: 2, ", ""), 6, "matmul needs shape.m"),
    (OPS_SPEC + "    params: {bias: true}\n", 7, "unknown parameter 'bias' for matmul"),
    (OPS_SPEC.replace("op: matmul", "op: conv"), 5, "is not one of"),
    (OPS_SPEC + "  - id: r\n    op: moe_topk_routing\n    shape: {tokens: 2, hidden: 4, experts: 4}\n"
     "    params: {top_k: 5}\n", 10, "top_k must be between 1 and experts"),
    (OPS_SPEC + "  - id: s\n    op: sdpa\n    shape: {heads: 5, kv_heads: 2, seq: 2, head_dim: 4}\n",
     9, "not a multiple of kv_heads"),
    (OPS_SPEC + "  - id: a\n    op: silu\n    shape: {tokens: 1, hidden: 2}\n", 7, "duplicate op id 'a'"),
    (OPS_SPEC + "    tolerance: {half: {kl_max: 1}}\n", 7, "'kl_max' is not used by ops specs"),
    (OPS_SPEC + "model: {path: a}\n", 3, "an operator spec (ops:) has no model or cases"),
    ("specengine: 1\nname: o\n", 1, "'model' is a required property"),
    (OPS_SPEC + "  - id: n\n    op: rms_norm\n    shape: {tokens: 1, hidden: 2}\n"
     "    params: {impl: fast}\n", 10, "impl must be one of functional, upcast"),
])
def test_ops_spec_errors_name_the_place(text, line, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "o.yaml")
    assert info.value.line == line, str(info.value)
    assert fragment in str(info.value), str(info.value)


def test_ernie_spec_uses_the_ernie45_moe_config():
    from transformers import Ernie4_5_MoeConfig

    cfg = Ernie4_5_MoeConfig()
    spec = load_spec(ERNIE)
    assert spec.kind == "ops" and spec.model is None
    by_id = {c.id: c for c in spec.cases}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    sdpa = by_id["sdpa.prefill"].dims
    assert (sdpa["heads"], sdpa["kv_heads"], sdpa["head_dim"]) == (
        cfg.num_attention_heads, cfg.num_key_value_heads, head_dim)
    route = by_id["moe.routing"]
    assert route.dims["experts"] == cfg.moe_num_experts and route.params["top_k"] == cfg.moe_k
    assert route.dims["hidden"] == cfg.hidden_size
    assert by_id["linear.expert_down"].dims["in_features"] == cfg.moe_intermediate_size
    assert by_id["swiglu.shared"].dims["intermediate"] == cfg.moe_intermediate_size * cfg.moe_num_shared_experts
    assert by_id["rms_norm.hf"].params["eps"] == cfg.rms_norm_eps
    assert by_id["rotary.q"].params["theta"] == cfg.rope_parameters["rope_theta"]
    assert by_id["linear.dense_down"].dims["in_features"] == cfg.intermediate_size
    assert by_id["moe.routing_fp32"].dtype == "float32"
    ops = {c.op for c in spec.cases}
    assert {"matmul", "linear", "rms_norm", "silu", "swiglu", "rotary", "sdpa", "softmax",
            "moe_topk_routing"} <= ops


# -- the ERNIE spec on cpu and cpu-bf16 ------------------------------------------------

def _floats(run):
    return [c for case in run.cases for c in case.checks if "dtype_error_ratio" in c.metrics]


@pytest.fixture(scope="module")
def ernie_runs():
    from specengine.run import check_spec

    spec = load_spec(ERNIE)
    return {b: check_spec(spec, b, REPO / "golden") for b in ("cpu", "cpu-bf16")}


def test_ernie_ops_on_cpu_and_cpu_bf16_show_dtype_sized_errors(ernie_runs):
    fp32, bf16 = ernie_runs["cpu"], ernie_runs["cpu-bf16"]
    for run in (fp32, bf16):
        assert run.status == "pass", [c.failures() for c in run.cases]
        assert run.comparison == "cross-backend" and run.reference.dtype == "float64"
        assert any("same CPU" in n for n in run.notes)
    by_dtype = {}
    for check in _floats(bf16):
        m = check.metrics
        by_dtype.setdefault(m["dtype"], []).append(m)
        assert m["comparison"] == "cross-backend"
        assert m["max_abs_err"] > 0, check.message                 # measured, never 0.000000
    bf = by_dtype["bfloat16"]
    # bf16-sized: relative rms error of the order of bf16's unit roundoff (2^-8 = 0.0039)
    assert all(5e-4 < m["rel_rms_err"] < 2e-2 for m in bf), [m["rel_rms_err"] for m in bf]
    assert all(0.5 < m["dtype_error_ratio"] < 8 for m in bf)
    f32 = [c.metrics for c in _floats(fp32)]
    assert all(m["max_abs_err"] > 0 and m["dtype"] == "float32" for m in f32)
    normal = [m for m in f32 if m["dtype_error_ratio"] < 64]
    assert len(normal) == len(f32) - 1                     # rotary at 131k positions is the one
    assert all(m["rel_rms_err"] < 1e-5 for m in normal)
    # the float32-forced router is float32 on the bf16 backend too
    route = next(c for c in bf16.cases if c.id == "moe.routing_fp32")
    assert {c.metrics.get("dtype") for c in route.checks if "dtype" in c.metrics} == {"float32"}
    # the recorded cpu golden's numbers are shown beside the candidate's
    q = next(c for c in bf16.cases if c.id == "matmul.q").checks[0]
    assert q.metrics["reference_recorded"]["backend"] == "cpu"
    assert "reference cpu (float32)" in q.message


def test_same_device_and_dtype_is_a_self_check(tmp_path):
    from specengine.run import check_spec

    spec = load_spec(ERNIE)
    subset = [c for c in spec.cases if c.id in ("matmul.q", "moe.routing", "rms_norm.hf")]
    run = check_spec(spec, "cpu", against="cpu", cases=subset)
    assert run.comparison == "self-check"
    checks = [c for case in run.cases for c in case.checks if c.name != "determinism"]
    assert checks and all(c.message.startswith("self-check") for c in checks)
    assert all(c.metrics.get("comparison") == "self-check" for c in checks)
    assert all(c.metrics["max_abs_err"] == 0.0 for c in checks if "max_abs_err" in c.metrics)
    # a different dtype on the same device is a real comparison
    mixed = check_spec(spec, "cpu-bf16", against="cpu", cases=subset)
    assert mixed.comparison == "cross-backend"
    assert all(c.metrics["max_abs_err"] > 0 for case in mixed.cases for c in case.checks
               if "max_abs_err" in c.metrics and c.metrics["dtype"] == "bfloat16")


def test_ops_cli_json_and_reports(tmp_path):
    result = cli("check", ERNIE, "--backend", "cpu", "--against", "cpu", "-k", "silu",
                 "--json", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert result.rc == 0, result.text
    assert "self-check" in result.out
    run = load_json(tmp_path / "r.json")["runs"][0]
    assert run["comparison"] == "self-check"
    assert "self-check" in (tmp_path / "r.md").read_text()


def test_ops_golden_staleness_and_integrity(tmp_path):
    from specengine.run import check_spec, record_golden

    text = ERNIE.read_text().split("  # RMSNorm")[0]     # the matmul / linear ops only
    path = write_spec(tmp_path / "ops.yaml", text)
    golden = tmp_path / "golden"
    spec = load_spec(path)
    record_golden(spec, "cpu", golden, echo=lambda _: None)
    data = load_json(golden / "ernie45-ops" / "cpu.json")
    assert data["kind"] == "ops" and len(data["ops"]) == len(spec.cases)
    assert all(len(r["inputs_sha256"]) == 64 for r in data["ops"].values())
    assert check_spec(spec, "cpu-bf16", golden, cases=spec.cases[:1]).status == "pass"

    stale = write_spec(tmp_path / "stale.yaml", text.replace("{m: 64, k: 2560, n: 2560}",
                                                             "{m: 32, k: 2560, n: 2560}"))
    with pytest.raises(GoldenError, match="'matmul.q'.*stale"):
        check_spec(load_spec(stale), "cpu", golden)
    edited = dict(data)
    edited["ops"]["matmul.q"]["metrics"]["out"]["max_abs_err"] = 0.0
    (golden / "ernie45-ops" / "cpu.json").write_text(json.dumps(edited))
    with pytest.raises(GoldenError, match="edited by hand"):
        check_spec(spec, "cpu", golden)
