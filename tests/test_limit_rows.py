"""The per-limit rows every report shows (value, limit, headroom, origin, ÷ noise), from
the metrics a check recorded — against a plain oracle written from the definitions:
an upper limit's headroom is 1 - value/limit, a lower one's (value - limit)/(1 - limit);
a broken upper limit reads "N× over", a broken lower one "D under"."""

from __future__ import annotations

import numpy as np
import pytest

from specengine.report.limits import headroom_cell, limit_rows, noise_cell, tightest
from specengine.results import CaseResult, Check

TOL = {"kl_mean_max": 0.01, "kl_max": 0.05, "top1_agreement_min": 0.9, "logprob_atol": 0.5}
SOURCES = {"kl_mean_max": "float32: spec", "kl_max": "float32: case",
           "top1_agreement_min": "float32: float32 default", "logprob_atol": "float32: backend"}


def check(name: str, kl_mean, kl_max, top1, dlp, noise=None) -> Check:
    metrics = {"kl_mean": kl_mean, "kl_max": kl_max, "top1_agreement": top1,
               "max_abs_dlogprob": dlp, "tolerance": dict(TOL), "limit_sources": dict(SOURCES),
               "tolerance_class": "float32"}
    if noise is not None:
        metrics["noise_ratio"] = noise
    return Check(name, "fail", "", metrics)


def oracle_headroom(value: float, limit: float, direction: str) -> float:
    if direction == "max":
        return float(np.float64(1.0) - np.float64(value) / np.float64(limit))
    return float((np.float64(value) - limit) / (np.float64(1.0) - limit))


CASE = CaseResult("c", "fail", checks=[
    check("teacher-forced", 0.2436, 0.7156, 0.75, 2.624, noise={"kl_mean": 812.0}),
    check("decode", 0.002, 0.01, 0.95, 0.1),
    check("consistency", 4.6e-8, 1.3e-7, 1.0, 1.6e-5),
    Check("determinism", "pass", "", {"runs": 2}),          # no tolerance: no rows
])


def test_rows_follow_each_path_and_metric_with_its_origin():
    rows = limit_rows(CASE)
    assert [(r.path, r.metric) for r in rows] == [
        (path, metric) for path in ("one-pass", "decode", "consistency")
        for metric in ("KL mean", "KL max", "top-1", "max |Δ logprob|")]
    assert {r.origin for r in rows if r.metric == "KL max"} == {"float32: case"}
    assert {r.klass for r in rows} == {"float32"}
    one_pass_kl = rows[0]
    assert one_pass_kl.noise_ratio == 812.0 and one_pass_kl.noise_text() == "812×"
    assert all(r.noise_ratio is None for r in rows[1:])
    assert noise_cell(CASE) == "812×"


@pytest.mark.parametrize("value,limit,direction", [
    (0.2436, 0.01, "max"), (0.002, 0.01, "max"), (0.0, 0.5, "max"), (0.5, 0.5, "max"),
    (0.75, 0.9, "min"), (0.95, 0.9, "min"), (1.0, 0.9, "min"), (0.9, 0.9, "min")])
def test_headroom_and_verdict_match_the_oracle(value, limit, direction):
    tol = dict(TOL)
    key = "kl_mean_max" if direction == "max" else "top1_agreement_min"
    tol[key] = limit
    metrics = {"kl_mean": value if direction == "max" else 0.0,
               "top1_agreement": value if direction == "min" else 1.0,
               "tolerance": tol, "limit_sources": SOURCES, "tolerance_class": "half"}
    rows = limit_rows(CaseResult("c", "pass", checks=[Check("teacher-forced", "pass", "", metrics)]))
    row = next(r for r in rows if r.direction == direction)
    assert row.headroom == pytest.approx(oracle_headroom(value, limit, direction), abs=1e-12)
    assert row.ok == (value <= limit if direction == "max" else value >= limit)
    assert row.ok == (row.headroom >= 0)


def test_headroom_text_says_how_a_limit_broke():
    rows = {(r.path, r.metric): r for r in limit_rows(CASE)}
    assert rows["one-pass", "KL mean"].headroom_text() == "24.4× over"
    assert rows["one-pass", "KL max"].headroom_text() == "14.3× over"
    assert rows["one-pass", "top-1"].headroom_text() == "0.15 under"
    assert rows["one-pass", "top-1"].relation() == "0.75 < 0.9"
    assert rows["decode", "KL mean"].headroom_text() == "80%"
    assert rows["decode", "top-1"].headroom_text() == "50%"
    assert rows["consistency", "top-1"].relation() == "1 ≥ 0.9"


def test_the_tightest_limit_is_the_least_headroom_on_one_pass_or_decode():
    row = tightest(CASE)
    expected = min(((path, metric, oracle_headroom(v, TOL[k], d))
                    for path, values in (("one-pass", (0.2436, 0.7156, 0.75, 2.624)),
                                         ("decode", (0.002, 0.01, 0.95, 0.1)))
                    for (metric, k, d), v in zip(
                        (("KL mean", "kl_mean_max", "max"), ("KL max", "kl_max", "max"),
                         ("top-1", "top1_agreement_min", "min"),
                         ("max |Δ logprob|", "logprob_atol", "max")), values)),
                   key=lambda t: t[2])
    assert (row.path, row.metric) == expected[:2] == ("one-pass", "KL mean")
    assert headroom_cell(CASE) == "24.4× over KL mean"
    # consistency rows never decide the tightest, however close they are
    close = CaseResult("c", "pass", checks=[check("teacher-forced", 0.0, 0.0, 1.0, 0.0),
                                            check("consistency", 0.0099, 0.0, 1.0, 0.0)])
    assert tightest(close).path == "one-pass"
    assert headroom_cell(CaseResult("c", "pass")) == "—"
