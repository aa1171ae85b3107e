"""Comparison functions against a plain-Python oracle (DESIGN §4)."""

import math

import numpy as np
import pytest

from specengine.compare import tokens as compare
from specengine.backends.base import log_mass_excluding, topk_with_tail
from specengine.spec import Tolerance


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _oracle_kl(p_row, q_row, ids):
    """KL(P||Q) on the partition {ids..., rest}, by explicit sums over the vocabulary."""
    cells_p = [p_row[i] for i in ids] + [sum(p for j, p in enumerate(p_row) if j not in ids)]
    cells_q = [q_row[i] for i in ids] + [sum(q for j, q in enumerate(q_row) if j not in ids)]
    return sum(p * math.log(p / q) for p, q in zip(cells_p, cells_q) if p > 0)


@pytest.fixture
def distributions():
    rng = np.random.default_rng(0)
    logits_g = rng.normal(size=(6, 50)) * 3
    logits_c = logits_g + rng.normal(size=(6, 50)) * 0.2
    return _log_softmax(logits_g), _log_softmax(logits_c)


def test_topk_with_tail_matches_oracle(distributions):
    lp, _ = distributions
    ids, vals, tail = topk_with_tail(lp.astype(np.float32), 5)
    for row in range(lp.shape[0]):
        order = sorted(range(50), key=lambda j: -lp[row, j])[:5]
        assert list(ids[row]) == order
        rest = sum(math.exp(lp[row, j]) for j in range(50) if j not in order)
        assert tail[row] == pytest.approx(math.log(rest), abs=1e-5)
        assert vals[row] == pytest.approx(lp[row, order], abs=1e-6)


def test_kl_partition_matches_oracle(distributions):
    g, c = distributions
    ids, g_lp, g_tail = topk_with_tail(g, 10)
    c_lp = np.take_along_axis(c, ids, axis=1)
    c_tail = log_mass_excluding(c, ids)
    kl = compare.kl_partition(g_lp, g_tail, c_lp, c_tail)
    for row in range(g.shape[0]):
        want = _oracle_kl(np.exp(g[row]), np.exp(c[row]), list(ids[row]))
        assert kl[row] == pytest.approx(want, rel=1e-4, abs=1e-7)
    assert (kl > 0).all()
    same = compare.kl_partition(g_lp, g_tail, g_lp, g_tail)
    assert np.allclose(same, 0.0)


def _tf(g, c, tol=Tolerance()):
    ids, g_lp, g_tail = topk_with_tail(g, 10)
    c_lp = np.take_along_axis(c, ids, axis=1)
    return compare.teacher_forced(ids, g_lp, g_tail, c_lp, log_mass_excluding(c, ids),
                                  c.argmax(axis=1), tol)


def test_teacher_forced_metrics_and_verdicts(distributions):
    g, c = distributions
    res = _tf(g, c)
    ids, g_lp, _ = topk_with_tail(g, 10)
    c_lp = np.take_along_axis(c, ids, axis=1)
    assert res.max_abs_dlogprob == pytest.approx(np.abs(c_lp - g_lp).max(), abs=1e-6)
    assert res.kl_max == pytest.approx(max(res.kl)) and res.kl_mean == pytest.approx(np.mean(res.kl))
    assert res.worst_position == int(np.argmax(res.kl))
    dp = np.abs(np.exp(c_lp[:, 0]) - np.exp(g_lp[:, 0])).max()
    assert res.max_abs_dp == pytest.approx(dp, abs=1e-6)
    # the same numbers judged by a tolerance they exceed, then by one they meet
    strict = Tolerance(kl_mean_max=res.kl_mean / 2, kl_max=res.kl_max / 2,
                       logprob_atol=res.max_abs_dlogprob / 2)
    failed = _tf(g, c, strict)
    assert not failed.passed and len(failed.failures) == 3
    lax = Tolerance(kl_mean_max=1, kl_max=1, logprob_atol=10, top1_agreement_min=0)
    assert _tf(g, c, lax).passed


def test_top1_agreement_counts_clear_positions_only():
    g = _log_softmax(np.array([[5.0, 4.9, 0, 0], [5.0, 1.0, 0, 0], [5.0, 1.0, 0, 0]]))
    c = _log_softmax(np.array([[4.9, 5.0, 0, 0], [5.0, 1.0, 0, 0], [1.0, 5.0, 0, 0]]))
    res = _tf(g, c, Tolerance(max_margin=0.5))
    assert res.near_ties == 1                       # row 0: margin 0.1 < 0.5
    assert res.top1_agreement == pytest.approx(0.5)     # rows 1-2: one of two agree
    assert res.top1_agreement_all == pytest.approx(1 / 3)


def test_nan_candidate_fails_not_crashes(distributions):
    g, c = distributions
    c = c.copy()
    c[2, :] = np.nan
    res = _tf(g, c)
    assert not res.passed and res.nonfinite
    assert any("NaN" in f for f in res.failures)


def _golden_steps():
    ids = np.array([[7, 3, 9], [4, 2, 1], [8, 6, 5]])
    lp = np.log(np.array([[0.50, 0.40, 0.05], [0.90, 0.05, 0.01], [0.6, 0.3, 0.05]]))
    return ids, lp


def test_divergence_near_tie_is_benign():
    ids, lp = _golden_steps()
    div = compare.first_divergence([7, 4, 8], [3, 4, 8], ids, lp, Tolerance())
    assert div.step == 0 and div.rank_in_golden == 2 and div.benign
    assert div.margin == pytest.approx(math.log(0.5 / 0.4))


def test_divergence_clear_step_fails():
    ids, lp = _golden_steps()
    div = compare.first_divergence([7, 4, 8], [7, 2, 8], ids, lp, Tolerance())
    assert div.step == 1 and div.rank_in_golden == 2 and not div.benign
    assert "nats below" in div.reason
    div = compare.first_divergence([7, 4, 8], [7, 99, 8], ids, lp, Tolerance())
    assert not div.benign and div.rank_in_golden is None
    div = compare.first_divergence([7, 4, 8], [7, 4, 8], ids, lp, Tolerance())
    assert div.step is None and div.benign
    narrow = Tolerance(within_top_k=1)
    assert not compare.first_divergence([7, 4, 8], [3, 4, 8], ids, lp, narrow).benign


def test_divergence_length_change_fails():
    ids, lp = _golden_steps()
    assert not compare.first_divergence([7, 4, 8], [7, 4], ids, lp, Tolerance()).benign
    assert not compare.first_divergence([7, 4], [7, 4, 8], ids[:2], lp[:2], Tolerance()).benign


def test_expectations():
    exp = {"startswith": " Paris", "contains": ["Paris", "France"], "not_contains": "Berlin",
           "equals": " Paris, France", "regex": r"P\w+s", "token_ids": [5, 6],
           "min_prob": 0.5}
    results = compare.expectations(exp, " Paris, France", [5, 6, 7], math.log(0.6))
    assert all(r.passed for r in results), results
    results = compare.expectations(exp, " Berlin", [5, 7], math.log(0.4))
    failed = {r.name for r in results if not r.passed}
    assert failed == {"startswith", "contains", "not_contains", "equals", "regex",
                      "token_ids", "min_prob"}


def test_repeatability():
    lp = np.log(np.full((3, 2), 0.5))
    ok = compare.repeatability([1, 2, 3], lp, [1, 2, 3], lp.copy(), 0.0, "run 2")
    assert ok.passed and ok.first_diff_step is None
    drift = lp.copy()
    drift[1, 0] += 1e-6
    bad = compare.repeatability([1, 2, 3], lp, [1, 2, 3], drift, 0.0, "run 2")
    assert not bad.passed and bad.first_diff_step == 1 and bad.identical_tokens
    assert compare.repeatability([1, 2, 3], lp, [1, 2, 3], drift, 1e-5, "run 2").passed
    tok = compare.repeatability([1, 2, 3], lp, [1, 5, 3], lp, 0.0, "run 2")
    assert not tok.passed and tok.first_diff_step == 1 and not tok.identical_tokens
