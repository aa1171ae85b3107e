"""Long-context reporting without a model: TTFT against prompt length (grouping, the
measuring loop on a fake backend, check_perf's section, schema), where drift starts over
the whole sequence (pure functions, the sweep note), and the reports of a hand-made
RunResult: the whole-sequence chart with its boundary, the TTFT chart, the Markdown table
and the terminal line."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
from jsonschema import Draft202012Validator

from specengine.kinds.causal_lm.perf import (LONG_PROMPT_TOKENS, PerfSettings, length_groups,
                                             measure_ttft_by_length, summarise_by_length)
from specengine.report.sequence import (case_drift, drift_start, first_past, sequence_chart,
                                        sequence_of)
from specengine.report.ttft import ttft_chart, ttft_line, ttft_rows
from specengine.results import Check, CaseResult, RunResult, Side
from specengine.spec import schema

EVIL = "<script>alert(1)</script>&"


# -- TTFT against prompt length: grouping and measuring -------------------------------

def test_length_groups():
    cases = [("a-512", [1] * 512), ("b", [2] * 8), ("a-1024", [3] * 1024), ("c", [4] * 8),
             ("empty", [])]
    groups = length_groups(cases, long=True)
    assert [(n, ids) for n, ids, _ in groups] == [(8, ["b", "c"]), (512, ["a-512"]),
                                                  (1024, ["a-1024"])]
    assert groups[0][2] == [2] * 8                       # the first case's own ids
    assert length_groups([("x", [1] * 8), ("y", [1] * 9)]) == []          # short spec
    assert len(length_groups([("x", [1] * 8), ("y", [1] * LONG_PROMPT_TOKENS)])) == 2
    assert length_groups([("x", [1] * 900), ("y", [1] * 900)], long=True) == []   # one length
    many = [(f"c{n}", [0] * n) for n in range(1, 31)]
    picked = [n for n, _, _ in length_groups(many, long=True, limit=5)]
    assert picked[0] == 1 and picked[-1] == 30 and len(picked) == 5


class TtftBackend:
    """Each one-token generation takes 1 ms per 100 prompt tokens (reported); records the
    order of calls and synchronisations."""

    name = "fake"

    def __init__(self, timings=True):
        self.log, self.timings = [], timings

    def synchronize(self):
        self.log.append("sync")

    def generate(self, prompts, max_new_tokens, top_k, stop_ids=()):
        from specengine.backends.base import Generation

        assert max_new_tokens == 1 and stop_ids == () and len(prompts) == 1
        self.log.append(("gen", tuple(prompts[0])))
        t = {"ttft_s": len(prompts[0]) / 1e5} if self.timings else {}
        return [Generation(list(prompts[0]), [5], np.zeros((1, 1), np.int64),
                           np.zeros((1, 1), np.float32), np.zeros(1, np.float32), t)]


def test_measure_ttft_by_length_warms_up_syncs_and_uses_the_cases_ids():
    backend = TtftBackend()
    groups = length_groups([("s-200", [7] * 200), ("s-600", [9] * 600)], long=True)
    samples = measure_ttft_by_length(backend, groups, PerfSettings(warmup=2, runs=3))
    gens = [e for e in backend.log if e != "sync"]
    assert [len(g[1]) for g in gens] == [200] * 5 + [600] * 5      # 2 warm-up + 3 runs each
    assert {g[1][0] for g in gens[:5]} == {7} and {g[1][0] for g in gens[5:]} == {9}
    for i, entry in enumerate(backend.log):      # every generation between two syncs
        if entry != "sync":
            assert backend.log[i - 1] == "sync" and backend.log[i + 1] == "sync"
    rows = summarise_by_length(samples)
    assert [r["prompt_tokens"] for r in rows] == [200, 600]
    assert [r["runs"] for r in rows] == [3, 3] and rows[1]["cases"] == ["s-600"]
    assert rows[0]["ttft_ms"]["p50"] == pytest.approx(2.0)
    assert rows[1]["ttft_ms"]["p90"] == pytest.approx(6.0)
    wall = summarise_by_length(measure_ttft_by_length(TtftBackend(timings=False), groups,
                                                      PerfSettings(warmup=0, runs=2)))
    assert all(r["ttft_ms"]["p50"] > 0 for r in wall)     # timed here when not reported


class PerfBackend(TtftBackend):
    """Also serves the per-batch-size measurement (any length, any batch)."""

    load_s = 0.5
    config = SimpleNamespace(device="cpu")

    def generate(self, prompts, max_new_tokens, top_k, stop_ids=()):
        from specengine.backends.base import Generation

        self.log.append(("gen", len(prompts[0]), max_new_tokens))
        t = {"ttft_s": len(prompts[0]) / 1e5, "total_s": len(prompts[0]) / 1e5 + max_new_tokens / 1e3}
        n = max_new_tokens
        return [Generation(list(p), [5] * n, np.zeros((n, 1), np.int64), np.zeros((n, 1), np.float32),
                           np.zeros(n, np.float32), dict(t)) for p in prompts]

    def environment(self):
        return {"runtime": "fake", "device": "cpu", "device_name": "Fake CPU", "dtype": "float32"}


def _perf_session(lengths, recipe=True):
    cases = [SimpleNamespace(id=f"s-{n}", recipe=SimpleNamespace(tokens=n) if recipe else None,
                             top_k=1) for n in lengths]
    spec = SimpleNamespace(name="fake", path="specs/fake.yaml", cases=cases,
                           perf={"warmup": 1, "runs": 2, "new_tokens": 3})
    session = SimpleNamespace(backend=PerfBackend(), spec=spec,
                              prompt_ids=lambda c: [1] * int(c.id[2:]),
                              resolved=SimpleNamespace(fingerprint="sha256:fake"))
    return session, spec


def test_check_perf_carries_ttft_by_length_and_validates():
    from specengine.kinds.causal_lm.perf_gate import check_perf

    session, spec = _perf_session([300, 100, 200])
    perf = check_perf(session, spec, None)
    assert perf["status"] == "measured" and len(perf["rows"]) == 1
    rows = perf["ttft_by_length"]
    assert [r["prompt_tokens"] for r in rows] == [100, 200, 300]
    assert [r["ttft_ms"]["p50"] for r in rows] == pytest.approx([1.0, 2.0, 3.0])
    one_token = [e for e in session.backend.log if e != "sync" and e[2] == 1]
    assert len(one_token) == 3 * (1 + 2)                  # warm-up + runs per length
    run = RunResult(spec_name="fake", spec_path="specs/fake.yaml", command="check",
                    candidate=_side("fake"), reference=_side("cpu"),
                    comparison="cross-backend", reference_kind="golden", perf=perf)
    from specengine.report.files import results_payload

    Draft202012Validator(schema("results")).validate(
        json.loads(json.dumps(results_payload([run]))))
    # a spec of short, plain prompts measures no TTFT by length
    session, spec = _perf_session([10, 20], recipe=False)
    assert "ttft_by_length" not in check_perf(session, spec, None)


# -- where drift starts ---------------------------------------------------------------

def _pp(prompt_kl, gen_kl, positions, decode_kl=None):
    pp = {"prompt_position": [float(p) for p in positions], "kl_prompt": prompt_kl,
          "abs_dlogprob_prompt": [0.0] * len(prompt_kl), "kl": gen_kl,
          "abs_dlogprob": [0.0] * len(gen_kl)}
    if decode_kl is not None:
        pp.update(kl_decode=decode_kl, abs_dlogprob_decode=[0.0] * len(decode_kl))
    return pp


def test_sequence_positions_meet_at_the_boundary():
    seq = sequence_of(_pp([0, 0, 0], [0, 0], [0, 500, 1023]), 1025)
    assert [(p.position, p.part, p.step) for p in seq.points] == [
        (0, "prompt", None), (500, "prompt", None), (1023, "prompt", None),
        (1024, "generated", 0), (1025, "generated", 1)]
    assert seq.boundary == 1024


def test_first_past_and_drift_start():
    pp = _pp([0.0, 0.0, 0.5, 0.0], [0.2, 0.0], [0, 900, 1000, 1023])
    drift = drift_start(pp, 1025, kl_max=1e-3, logprob_atol=0.02)
    assert drift.point.position == 1000 and drift.point.part == "prompt"
    assert drift.previous.position == 900 and drift.path == "one-pass"
    assert "sequence position 1000" in drift.describe() and "900" in drift.describe()
    # only a generated position past the limit: named with its step
    drift = drift_start(_pp([0.0, 0.0], [0.0, 0.0, 0.3], [0, 1023]), 1025, 1e-3, 0.02)
    assert (drift.point.position, drift.point.step) == (1026, 2)
    assert "every sampled prompt position is within" in drift.describe()
    # the decode path drifts first
    drift = drift_start(_pp([0.0], [0.0, 0.0, 0.3], [1023], decode_kl=[0.0, 0.4, 0.0]),
                        1025, 1e-3, 0.02)
    assert drift.path == "decode" and drift.point.position == 1025
    # NaN is past any limit; None (no value) is not; within everywhere gives None
    seq = sequence_of(_pp([None, float("nan")], [0.0], [0, 10]), 12)
    assert first_past(seq, 1e-3, 0.02)[0].position == 10
    assert drift_start(_pp([0.0], [0.0], [5]), 7, 1e-3, 0.02) is None
    # |Δ logprob| alone counts
    pp = _pp([0.0, 0.0], [0.0], [0, 10])
    pp["abs_dlogprob_prompt"] = [0.0, 0.5]
    assert drift_start(pp, 12, 1e-3, 0.02).point.position == 10


def test_sweep_note_names_length_and_position():
    from specengine.kinds.causal_lm.sweep import sweep_notes

    def case(n):
        return SimpleNamespace(id=f"sweep-{n}", sweep_of="sweep",
                               recipe=SimpleNamespace(tokens=n))

    results = [CaseResult(id="sweep-512", status="pass", prompt_length=512),
               CaseResult(id="sweep-1025", status="fail", prompt_length=1025,
                          per_position=_pp([0.0, 0.0, 0.4], [0.5], [0, 955, 1023])),
               CaseResult(id="sweep-2048", status="fail", prompt_length=2048)]
    tol = SimpleNamespace(kl_max=1e-3, logprob_atol=0.02)
    notes = sweep_notes([case(2048), case(512), case(1025)], results,
                        {r.id: tol for r in results})
    assert len(notes) == 1
    note = notes[0]
    assert "prompt length 1025 (sub-case sweep-1025)" in note, note
    assert "sequence position 1023 (a sampled prompt position" in note and "955" in note, note
    assert "(512) pass" in note and "failing lengths: 1025, 2048" in note, note


# -- the reports of a hand-made run ---------------------------------------------------

def _side(name):
    return Side(backend=name, runtime="torch", device="cpu", device_name="Test CPU",
                dtype="float32")


def _tf(status):
    return Check("teacher-forced", status, "KL max over limit" if status == "fail" else "ok",
                 {"kl_max": 0.5, "tolerance": {"kl_max": 1e-3, "logprob_atol": 0.02}})


def long_run() -> RunResult:
    positions = [round(i * 1023 / 15) for i in range(16)]
    fail = CaseResult(
        id=f"sweep-1025{EVIL}", status="fail", prompt_length=1025, divergence_step=1,
        golden_tokens=[" a", " b", " c"], candidate_tokens=[" a", " x", " y"],
        checks=[_tf("fail"), Check("prompt-positions", "fail", "KL max over limit")],
        per_position={"prompt_position": [float(p) for p in positions],
                      "kl_prompt": [0.0] * 15 + [0.3],
                      "abs_dlogprob_prompt": [0.001] * 15 + [0.4],
                      "kl": [0.2, float("inf"), 0.4], "abs_dlogprob": [0.3, 0.5, 0.6]})
    ok = CaseResult(id="sweep-512", status="pass", prompt_length=512, checks=[_tf("pass")],
                    per_position={"prompt_position": [0.0, 255.0, 510.0],
                                  "kl_prompt": [0.0, 0.0, 0.0], "kl": [0.0], "abs_dlogprob": [0.0]})
    run = RunResult(spec_name="long", spec_path="specs/long.yaml", command="check",
                    candidate=_side("cand"), reference=_side("cpu"), comparison="cross-backend",
                    reference_kind="golden", cases=[ok, fail],
                    notes=["length sweep 'sweep': drift starts at prompt length 1025"])
    run.perf = {"status": "measured", "rows": [], "failures": [], "ttft_by_length": [
        {"prompt_tokens": n, "ttft_ms": {"p50": n / 10, "p90": n / 9, "p99": n / 8}, "runs": 3,
         "cases": [f"sweep-{n}{EVIL}" if n == 1025 else f"sweep-{n}"], "spread": 0.01,
         "samples_ms": [n / 10] * 3} for n in (512, 1024, 1025, 2048)]}
    run.finish()
    return run


def _x_values(svg: str, tag: str = "circle") -> list[float]:
    return [float(x) for x in re.findall(rf'<{tag} cx="([0-9.]+)"', svg)]


def test_sequence_chart_covers_prompt_and_generation():
    run = long_run()
    case = run.cases[1]
    svg = str(sequence_chart(case))
    ET.fromstring(svg)                                   # well-formed XML
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    # 16 prompt + 3 generated KL points (one of them +inf, drawn as a ▲), 16 + 3 |Δ lp|
    assert svg.count("<circle") == 16 + 2 + 16 + 3 and svg.count('class="inf"') == 1
    assert "at prompt position 1023" in svg and "position 1025 (generated step 1)" in svg
    boundary = float(re.search(r'<line class="boundary"[^>]* x1="([0-9.]+)"', svg).group(1))
    drift = float(re.search(r'<line class="drift"[^>]* x1="([0-9.]+)"', svg).group(1))
    xs = _x_values(svg)
    prompt_xs, gen_xs = xs[:16], xs[16:18]
    assert max(prompt_xs) < boundary < min(gen_xs)       # prompt left, generation right
    assert drift == pytest.approx(prompt_xs[-1])         # drift at position 1023
    assert "drift starts 1023" in svg and "generated from 1024" in svg
    assert "divergence 1" in svg
    assert case_drift(case).point.position == 1023
    assert sequence_chart(CaseResult(id="short", status="pass",
                                     per_position={"kl": [0.0]})) == ""


def test_ttft_rows_line_and_chart():
    run = long_run()
    rows = ttft_rows(run.perf)
    assert [r.prompt_tokens for r in rows] == [512, 1024, 1025, 2048]
    line = ttft_line(rows)
    assert line.startswith("TTFT by prompt length (p50): 512 tok 51.2 ms") and "×4" in line
    svg = str(ttft_chart(rows))
    ET.fromstring(svg)
    assert "<script>" not in svg
    xs = _x_values(svg)
    assert len(xs) == 4 and xs == sorted(xs)
    # linear in prompt length: 1024 → 2048 spans twice 512 → 1024
    assert (xs[3] - xs[1]) == pytest.approx(2 * (xs[1] - xs[0]), rel=1e-2)
    ys = [float(y) for y in re.findall(r'<circle cx="[0-9.]+" cy="([0-9.]+)"', svg)]
    assert ys == sorted(ys, reverse=True)                # longer prompts: higher on the chart
    assert svg.count('class="whisker"') == 4
    assert ttft_rows({"ttft_by_length": [{"prompt_tokens": "x"}, {"prompt_tokens": 3}]}) == []
    assert ttft_chart(rows[:1]) == "" and ttft_line([]) == ""


def test_reports_show_ttft_and_where_drift_starts(tmp_path):
    from specengine.report.files import write_reports
    from specengine.report.markdown import render_markdown
    from specengine.report.render import render_html
    from specengine.report.terminal import render_terminal

    runs = [long_run()]
    html = render_html(runs)
    assert html.count('class="chart sequence-chart"') == 2 and 'ttft-chart' in html
    assert "Per position over the whole sequence" in html
    assert "drift starts at sequence position 1023" in html
    assert "<script>alert" not in html and "<script" not in html.replace("&lt;script", "")
    md = render_markdown(runs)
    assert "| 1025 | 102.5 | 113.9 | 128.1 | sweep-1025&lt;script&gt;" in md, md
    assert "**Where drift starts:** drift starts at sequence position 1023" in md
    text = render_terminal(runs)
    assert "TTFT by prompt length (p50): 512 tok 51.2 ms" in text
    path = tmp_path / "r.json"
    write_reports(runs, json_path=path)
    Draft202012Validator(schema("results")).validate(json.loads(path.read_text("utf-8")))
    bad = json.loads(path.read_text("utf-8"))
    bad["runs"][0]["perf"]["ttft_by_length"][0]["prompt_tokens"] = "512"
    assert list(Draft202012Validator(schema("results")).iter_errors(bad))
