"""Pure functions of the decode-path work against plain numpy oracles: prefill/decode
consistency, the whole-spec distribution statistics, dtype-aware tolerance classes,
reading gathered log-probs off a runtime's own top-k, and the comparison labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specengine.compare import tokens as compare
from specengine.compare.distribution import distribution, judge
from specengine.results import Side
from specengine.results import comparison_label
from specengine.compare.limits import LimitSource
from specengine.compare.tolerances import (DEFAULTS, FLOAT32, HALF, QUANTIZED, Tolerance,
                                           coarser, dtype_class)


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _oracle_kl(p_full, q_full, ids):
    """KL(P‖Q) on the partition {ids, rest}, from full distributions, in plain loops."""
    out = []
    for p, q, row in zip(p_full, q_full, ids):
        cells_p = [p[i] for i in row] + [1.0 - sum(p[i] for i in row)]
        cells_q = [q[i] for i in row] + [1.0 - sum(q[i] for i in row)]
        out.append(sum(a * math.log(a / b) for a, b in zip(cells_p, cells_q) if a > 0))
    return out


def _gathered(lp_full, ids):
    g = np.take_along_axis(lp_full, ids, axis=-1)
    rest = np.log(np.clip(1 - np.exp(g).sum(-1), 1e-300, None))
    return g.astype(np.float32), rest.astype(np.float32)


def test_consistency_matches_a_numpy_oracle():
    rng = np.random.default_rng(0)
    n, vocab, k = 12, 50, 5
    dec = _log_softmax(rng.normal(size=(n, vocab)) * 3)
    one = _log_softmax(np.log(np.exp(dec)) + rng.normal(size=(n, vocab)) * 0.05)
    ids = np.argsort(-dec, axis=-1)[:, :k]
    d_lp, d_tail = _gathered(dec, ids)
    o_lp, o_tail = _gathered(one, ids)
    cons = compare.consistency(d_lp, d_tail, ids[:, 0], o_lp, o_tail, one.argmax(-1),
                               np.ones(n, bool), Tolerance())
    want = _oracle_kl(np.exp(dec), np.exp(one), ids)
    assert np.allclose(cons.kl, want, rtol=1e-4, atol=1e-7)
    assert cons.kl_mean == pytest.approx(np.mean(want), rel=1e-4, abs=1e-8)
    dlp = [max(abs(float(d_lp[i, j]) - float(o_lp[i, j])) for j in range(k)) for i in range(n)]
    assert cons.max_abs_dlogprob == pytest.approx(max(dlp), rel=1e-5)
    agree = np.mean(ids[:, 0] == one.argmax(-1))
    assert cons.top1_agreement == pytest.approx(agree)
    assert cons.passed
    # a shifted decode path fails, naming what broke
    bad = compare.consistency(d_lp + 0.8, d_tail, ids[:, 0], o_lp, o_tail, one.argmax(-1),
                              np.ones(n, bool), Tolerance())
    assert not bad.passed and any("logprob" in f for f in bad.failures)


def test_first_bad_position():
    tol = Tolerance(kl_max=0.05, logprob_atol=0.5)
    assert compare.first_bad_position([0.0, 0.01, 0.2, 0.9], [0.1, 0.1, 0.1, 0.1], tol) == 2
    assert compare.first_bad_position([0.0, 0.01], [0.1, 0.6], tol) == 1
    assert compare.first_bad_position([0.0, 0.01], [0.1, 0.1], tol) is None
    assert compare.first_bad_position([float("nan")], [0.0], tol) == 0


def test_distribution_matches_numpy():
    rng = np.random.default_rng(1)
    kl = rng.exponential(0.01, size=500)
    dp = rng.normal(0, 0.02, size=500)
    same = rng.random(500) < 0.93
    stats = distribution("decode", kl, dp, same)
    assert stats.positions == 500
    assert stats.kl_mean == pytest.approx(kl.mean())
    assert stats.kl_sem == pytest.approx(kl.std(ddof=1) / math.sqrt(500))
    for name, q in (("kl_p50", 50), ("kl_p90", 90), ("kl_p99", 99), ("kl_p999", 99.9)):
        assert getattr(stats, name) == pytest.approx(np.percentile(kl, q))
    assert stats.kl_max == pytest.approx(kl.max())
    assert stats.dp_mean == pytest.approx(dp.mean())
    assert stats.dp_rms == pytest.approx(math.sqrt((dp ** 2).mean()))
    assert stats.dp_p1 == pytest.approx(np.percentile(dp, 1))
    assert stats.dp_p99 == pytest.approx(np.percentile(dp, 99))
    p = same.mean()
    assert stats.same_top1 == pytest.approx(p)
    assert stats.same_top1_err == pytest.approx(math.sqrt(p * (1 - p) / 500))
    assert judge(stats, {"kl_mean_max": 1.0, "same_top1_min": 0.5}) == []
    fails = judge(stats, {"kl_p99_max": 1e-6, "same_top1_min": 0.99})
    assert len(fails) == 2 and all(f.startswith("decode:") for f in fails)
    assert distribution("prefill", [], [], []) is None
    inf = distribution("prefill", [0.1, float("inf")], [0.0, 0.0], [True, False])
    assert judge(inf, {"kl_mean_max": 1.0}) and math.isinf(inf.kl_sem)


def test_dtype_classes_and_the_coarser_side():
    assert dtype_class("float32") == FLOAT32 and dtype_class(None) == FLOAT32
    assert dtype_class("bfloat16") == HALF and dtype_class("float16") == HALF
    for q in ("int8", "q4_1", "Q8_0", "fp8_e4m3", "w4a16"):
        assert dtype_class(q) == QUANTIZED, q
    assert dtype_class("float32", {"weights": "int8"}) == QUANTIZED
    assert coarser(FLOAT32, HALF) == HALF and coarser(QUANTIZED, FLOAT32) == QUANTIZED
    assert coarser(FLOAT32, FLOAT32) == FLOAT32
    # float32 defaults are far tighter than half's; quantized looser
    assert DEFAULTS[FLOAT32].kl_mean_max < DEFAULTS[HALF].kl_mean_max < DEFAULTS[QUANTIZED].kl_mean_max
    assert DEFAULTS[FLOAT32].logprob_atol < DEFAULTS[HALF].logprob_atol < DEFAULTS[QUANTIZED].logprob_atol


def test_values_of_one_class_never_judge_another():
    """A block written for half leaves float32 and quantized at their defaults; the
    label names who wrote each value and never claims an overridden default."""
    src = LimitSource.of({"half": {"kl_mean_max": 0.003, "divergence": {"max_margin": 0.2}}},
                         {"half": {"logprob_atol": 0.7}, "float32": {"kl_max": 5e-4}})
    half = src.resolve(HALF, DEFAULTS[HALF])
    assert half.values.kl_mean_max == 0.003 and half.values.max_margin == 0.2
    assert half.values.logprob_atol == 0.7 and half.values.kl_max == DEFAULTS[HALF].kl_max
    f32 = src.resolve(FLOAT32, DEFAULTS[FLOAT32])
    assert f32.values == DEFAULTS[FLOAT32].merged({"kl_max": 5e-4})
    assert src.resolve(QUANTIZED, DEFAULTS[QUANTIZED]).values == DEFAULTS[QUANTIZED]
    assert half.label() == ("half: kl_mean_max, max_margin from spec; logprob_atol from case; "
                            "the rest class defaults")
    assert f32.label() == "float32: kl_max from case; the rest class defaults"
    assert "default" not in f32.origin("kl_max") and f32.origin("kl_mean_max") == \
        "float32 default"
    assert LimitSource().resolve(HALF, DEFAULTS[HALF]).label() == "half: class defaults"


def test_gather_from_topk_reads_known_ids_and_bounds_the_rest():
    from specengine.kinds.causal_lm.decode import gather_from_topk

    top_ids = np.array([[5, 2, 9]])
    top_lp = np.log(np.array([[0.5, 0.3, 0.1]]))
    lp, tail, missing = gather_from_topk(top_ids, top_lp, np.array([[2, 5, 7]]))
    assert missing == 1
    assert np.allclose(np.exp(lp[0]), [0.3, 0.5, 0.1], atol=1e-6)   # 7 gets the floor 0.1
    assert np.exp(tail[0]) == pytest.approx(0.1, abs=1e-6)


def test_labels_name_a_different_model_on_the_same_backend():
    a = Side("cpu", runtime="torch", device="cpu", dtype="float32", model_fingerprint="sha256:a")
    same = Side("cpu", runtime="torch", device="cpu", dtype="float32", model_fingerprint="sha256:a")
    other = Side("x", runtime="torch", device="cpu", dtype="float32", model_fingerprint="sha256:b")
    bf16 = Side("y", runtime="torch", device="cpu", dtype="bfloat16", model_fingerprint="sha256:a")
    assert comparison_label(a, same) == "self-check"
    assert comparison_label(other, a) == "cross-model"
    assert comparison_label(bf16, a) == "cross-backend"
