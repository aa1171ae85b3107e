"""Perf: the pure summaries and judges, the measuring loop on a fake backend, and end to
end on a tiny synthetic model — an impossible budget fails (exit 1), a lax one passes;
a backend slowed on purpose fails the relative gate, the same backend unslowed passes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from specengine.errors import GoldenError, UsageError
from specengine.kinds.causal_lm.perf import (BatchSamples, PerfSettings, device_class,
                                             judge_budgets, judge_regression, measure,
                                             perf_prompts, relative_iqr, slowdown, summarise)
from specengine.kinds.causal_lm.perf_golden import (load_perf_data, load_perf_golden, medians,
                                                    perf_golden_path)

TESTS = Path(__file__).resolve().parent


# -- pure functions ------------------------------------------------------------------

def test_summarise_definitions():
    b = BatchSamples(batch_size=4, ttft_s=[0.010, 0.012, 0.011], total_s=[0.110, 0.112, 0.121],
                     tokens_per_row=11, peak_mem_bytes=3 << 30)
    row = summarise(b, "cpu")
    assert row["ttft_ms"]["p50"] == pytest.approx(11.0)
    # TPOT = (total - ttft) / (tokens - 1): 10 ms, 10 ms, 11 ms
    assert row["tpot_ms"]["p50"] == pytest.approx(10.0)
    assert row["tpot_ms"]["p99"] == pytest.approx(10.98, abs=1e-6)
    assert row["tokens_per_s"] == pytest.approx(4 * 11 / 0.112)
    assert row["peak_mem_gib"] == pytest.approx(3.0)
    assert row["ttft_ms"]["p50"] <= row["ttft_ms"]["p90"] <= row["ttft_ms"]["p99"]
    assert row["samples"]["total_ms"] == [110.0, 112.0, 121.0]


def test_relative_iqr():
    assert relative_iqr([10, 10, 10, 10]) == 0.0
    assert relative_iqr([8, 9, 10, 11, 12]) == pytest.approx(2 / 10)


def row(b=1, ttft=10.0, tpot=5.0, tps=100.0, mem=1.0, spread=0.0):
    return {"backend": "cpu", "batch_size": b, "ttft_ms": {"p50": ttft, "p90": ttft * 1.1,
            "p99": ttft * 1.2}, "tpot_ms": {"p50": tpot, "p90": tpot, "p99": tpot},
            "tokens_per_s": tps, "peak_mem_gib": mem,
            "spread": {"ttft_ms": spread, "tpot_ms": spread, "tokens_per_s": spread}}


def test_budgets_impossible_and_lax():
    rows = [row(1), row(8, ttft=40.0, tps=600.0)]
    impossible = {"ttft_ms": {"p50": 0.001, "p99": 0.001}, "tpot_ms": {"p50": 0.001},
                  "tokens_per_s": {"min": 1e9}, "peak_mem_gib": {"max": 0.001}, "load_s": {"max": 0.0}}
    failures = judge_budgets(rows, 2.5, impossible)
    text = "\n".join(failures)
    assert "load time 2.5 s > budget 0 s" in text
    assert "batch 8: TTFT p99 48 ms > budget 0.001 ms" in text
    assert "batch 1: 100 tokens/s < budget 1e+09" in text
    assert "peak memory" in text and "TPOT p50" in text
    lax = {"ttft_ms": {"p50": 1e6, "p90": 1e6, "p99": 1e6}, "tpot_ms": {"p50": 1e6},
           "tokens_per_s": {"min": 1}, "peak_mem_gib": {"max": 1e3}, "load_s": {"max": 1e3}}
    assert judge_budgets(rows, 2.5, lax) == []
    assert judge_budgets(rows, 2.5, None) == []
    # batch_sizes narrows a budget to some rows
    only8 = {"ttft_ms": {"p50": 20.0}, "batch_sizes": [8]}
    assert judge_budgets(rows, None, only8) == ["batch 8: TTFT p50 40 ms > budget 20 ms"]


def _m(rows):
    return [medians(r) for r in rows]


def test_regression_rule():
    golden = [row(1, ttft=10.0, tpot=5.0, tps=100.0, spread=0.02)]
    # 30% slower, quiet runs: fails on all three medians
    slow = [row(1, ttft=13.0, tpot=6.5, tps=100 / 1.3, spread=0.02)]
    regs = judge_regression(_m(slow), _m(golden), 0.10)
    assert [r.metric for r in regs if r.regressed] == ["ttft_ms", "tpot_ms", "tokens_per_s"]
    assert regs[1].slowdown == pytest.approx(0.3)
    assert regs[1].allowed == pytest.approx(0.10)
    assert "TPOT p50 6.5 ms vs golden 5 ms: +30.0% slower, allowed 10.0%" in regs[1].describe()
    # the same slowdown on a noisy machine (rIQR 0.2 on each side) stays within the spread
    noisy_g = [row(1, ttft=10.0, tpot=5.0, tps=100.0, spread=0.2)]
    noisy_c = [row(1, ttft=13.0, tpot=6.5, tps=100 / 1.3, spread=0.2)]
    regs = judge_regression(_m(noisy_c), _m(noisy_g), 0.10)
    assert not any(r.regressed for r in regs)
    assert regs[0].spread == pytest.approx(0.4) and regs[0].allowed == pytest.approx(0.4)
    # spread_k 0: only regression_max counts
    assert all(r.regressed for r in judge_regression(_m(noisy_c), _m(noisy_g), 0.10, spread_k=0))
    # faster is never a regression; batch sizes missing from the golden are skipped
    fast = [row(1, ttft=5.0, tpot=2.0, tps=300.0), row(4)]
    regs = judge_regression(_m(fast), _m(golden), 0.0)
    assert len(regs) == 3 and not any(r.regressed for r in regs)
    assert slowdown("tokens_per_s", 100.0, 50.0) == pytest.approx(1.0)
    assert slowdown("tpot_ms", 5.0, 10.0) == pytest.approx(1.0)


def test_perf_prompts():
    streams = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert perf_prompts(streams, 2, None) == [[1, 2, 3], [1, 2, 3]]
    rows = perf_prompts(streams, 3, 20)
    assert all(len(r) == 20 for r in rows) and rows[0] != rows[1]
    assert rows[0][:8] == [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(UsageError):
        perf_prompts([[]], 1, None)


def test_perf_golden_path_is_confined(tmp_path):
    path = perf_golden_path(tmp_path, "tiny", "npu", "Ascend 910B3", "bfloat16")
    assert path == (tmp_path / "tiny" / "perf" / "npu--ascend-910b3--bfloat16.json").resolve()
    assert device_class("cpu", "AMD EPYC 9654 96-Core Processor", "float32") == \
        "cpu--amd-epyc-9654-96-core-processor--float32"
    assert "/" not in device_class("x", "../../etc/passwd", "../f")
    for spec, backend in (("..", "cpu"), ("tiny", "../x"), ("tiny", "a/b")):
        with pytest.raises(UsageError):
            perf_golden_path(tmp_path, spec, backend, "cpu", "float32")


def test_settings_defaults():
    s = PerfSettings.from_spec(None)
    assert (s.warmup, s.runs, s.batch_sizes, s.new_tokens, s.prompt_tokens) == (1, 5, (1,), 32, None)
    s = PerfSettings.from_spec({"batch_sizes": [4, 1, 4], "regression_max": 0.1})
    assert s.batch_sizes == (4, 1) and s.regression_max == 0.1 and s.spread_k == 1.0


# -- the measuring loop on a fake backend ---------------------------------------------

class _Config:
    device = "cpu"


class FakeBackend:
    """Generates `max_new_tokens` tokens with fixed reported timings; counts calls."""

    name = "fake"
    config = _Config()
    load_s = 1.5

    def __init__(self, timings=True):
        self.calls = []
        self.syncs = 0
        self.timings = timings

    def synchronize(self):
        self.syncs += 1

    def generate(self, prompts, max_new_tokens, top_k, stop_ids=()):
        from specengine.backends.base import Generation

        assert stop_ids == ()            # perf always generates the full length
        self.calls.append((len(prompts), len(prompts[0]), max_new_tokens))
        t = {"ttft_s": 0.002, "total_s": 0.002 + 0.001 * (max_new_tokens - 1)} if self.timings else {}
        return [Generation(list(p), [5] * max_new_tokens, np.zeros((max_new_tokens, 1), np.int64),
                           np.zeros((max_new_tokens, 1), np.float32),
                           np.zeros(max_new_tokens, np.float32), dict(t)) for p in prompts]

    def environment(self):
        return {"runtime": "fake", "device": "cpu", "device_name": "Fake CPU", "dtype": "float32"}


def test_measure_excludes_warmup_and_uses_backend_timings():
    backend = FakeBackend()
    settings = PerfSettings(warmup=2, runs=3, batch_sizes=(1, 4), prompt_tokens=6, new_tokens=9)
    m = measure(backend, [[1, 2, 3]], settings)
    assert [c[0] for c in backend.calls] == [1] * 5 + [4] * 5
    assert all(c[1] == 6 and c[2] == 9 for c in backend.calls)
    assert [len(b.ttft_s) for b in m.batches] == [3, 3]
    row = summarise(m.batches[1], m.backend)
    assert row["ttft_ms"]["p50"] == pytest.approx(2.0)
    assert row["tpot_ms"]["p50"] == pytest.approx(1.0)
    assert row["tokens_per_s"] == pytest.approx(4 * 9 / 0.010)
    assert m.load_s == 1.5 and m.device_class == "fake--fake-cpu--float32"
    assert m.batches[0].peak_mem_bytes and m.peak_mem_kind.startswith("host peak RSS")
    assert backend.syncs >= 2 * len(backend.calls)        # before and after every clock read


def test_measure_times_a_backend_without_timings():
    backend = FakeBackend(timings=False)
    m = measure(backend, [[1, 2, 3]], PerfSettings(warmup=0, runs=2, new_tokens=4))
    # each run: a full generation, then a one-token generation for the TTFT
    assert [c[2] for c in backend.calls] == [4, 1, 4, 1]
    assert all(t > 0 for t in m.batches[0].ttft_s + m.batches[0].total_s)


# -- end to end on a tiny synthetic model ---------------------------------------------

TINY = """\
specengine: 1
name: tiny-perf
model:
  synthetic:
    model_type: llama
    config: {{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
             num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 256}}
    seed: 0
    init_std: 0.5
defaults:
  max_new_tokens: 4
  determinism: {{runs: 1}}
backends:
  strict: {{runtime: torch}}
  lax: {{runtime: torch}}
  steady: {{runtime: test-slow, options: {{sleep_ms: {sleep_ms}}}}}
cases:
  - {{id: hello, prompt: "hello world"}}
perf:
  warmup: 1
  runs: 5
  batch_sizes: [1]
  prompt_tokens: 12
  new_tokens: 6
  regression_max: 1.0
  budgets:
    strict: {{ttft_ms: {{p50: 0.001}}, tokens_per_s: {{min: 1.0e9}}}}
    lax: {{ttft_ms: {{p50: 60000, p99: 60000}}, tpot_ms: {{p50: 60000}}, tokens_per_s: {{min: 0.01}},
          peak_mem_gib: {{max: 1024}}, load_s: {{max: 3600}}}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A golden folder with the cpu output golden of the tiny spec; the cache in tmp."""
    root = tmp_path_factory.mktemp("perf")
    old = {k: os.environ.get(k) for k in ("SPECENGINE_CACHE", "SPECENGINE_PROGRESS")}
    os.environ.update(SPECENGINE_CACHE=str(root / "cache"), SPECENGINE_PROGRESS="0")
    spec = write(root / "spec.yaml", sleep_ms=20)
    assert cli("record-golden", spec, "--golden-dir", root / "golden")[0] == 0
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def write(path: Path, sleep_ms: float) -> Path:
    path.write_text(TINY.format(sleep_ms=sleep_ms), encoding="utf-8")
    return path


def cli(*args) -> tuple[int, str]:
    """The command line in-process (torch is imported once for the whole module)."""
    import contextlib
    import io

    from specengine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue() + err.getvalue()


def test_impossible_budget_fails_and_lax_budget_passes(env):
    spec, golden = env / "spec.yaml", env / "golden"
    rc, text = cli("check", spec, "--backend", "strict", "--golden-dir", golden, "--perf",
                   "--json", env / "strict.json", "--markdown", env / "strict.md",
                   "--html", env / "strict.html")
    assert rc == 1, text
    assert "perf fail" in text and "TTFT p50" in text and "> budget 0.001 ms" in text
    assert "tokens/s < budget 1e+09" in text
    data = json.loads((env / "strict.json").read_text())["runs"][0]
    assert data["status"] == "fail" and data["perf"]["status"] == "fail"
    assert all(c["status"] == "pass" for c in data["cases"])     # only perf failed
    assert "budget" in (env / "strict.md").read_text()

    rc, text = cli("check", spec, "--backend", "lax", "--golden-dir", golden, "--perf",
                   "--html", env / "lax.html", "--markdown", env / "lax.md")
    assert rc == 0, text
    assert "perf pass" in text
    assert "lax batch 1: TTFT p50/p90/p99" in text and "TPOT p50/p90/p99" in text
    html = (env / "lax.html").read_text()
    assert "perf-chart" in html and "perf-table" in html
    assert "xychart-beta" in (env / "lax.md").read_text()

    # without --perf nothing is measured (plain checks stay fast)
    rc, text = cli("check", spec, "--backend", "strict", "--golden-dir", golden)
    assert rc == 0 and "perf pass" not in text and "perf fail" not in text


def test_relative_gate_catches_a_slowed_backend(env):
    """`steady` sleeps 20 ms per forward step, so its timings are dominated by the sleep
    and stay stable on a loaded machine; regression_max 1.0 leaves room for a load spike,
    while 200 ms per step is ~7x slower."""
    golden = env / "golden"
    spec = env / "spec.yaml"
    rc, text = cli("record-golden", spec, "--backend", "steady", "--perf", "--golden-dir", golden)
    assert rc == 0, text
    files = list((golden / "tiny-perf" / "perf").glob("steady--*--float32.json"))
    assert len(files) == 1
    data = load_perf_data(files[0], "tiny-perf")
    assert data["rows"][0]["batch_size"] == 1 and len(data["rows"][0]["samples"]["ttft_ms"]) == 5
    assert load_perf_golden(files[0], "tiny-perf").rows[0].batch_size == 1
    # the output golden is untouched; re-recording the perf golden needs --update
    rc, text = cli("record-golden", spec, "--backend", "steady", "--perf", "--golden-dir", golden)
    assert rc == 2 and "--update" in text

    # the same backend, unslowed: passes the relative gate
    rc, text = cli("check", spec, "--backend", "steady", "--golden-dir", golden, "--perf",
                   "--json", env / "steady.json")
    assert rc == 0, text
    perf = json.loads((env / "steady.json").read_text())["runs"][0]["perf"]
    assert perf["status"] == "pass" and perf["relative_gate"].startswith("pass")

    # the same backend name and device class, now sleeping 10x longer per step: fails
    (env / "slowed").mkdir()
    slowed = write(env / "slowed" / "spec.yaml", sleep_ms=200)
    rc, text = cli("check", slowed, "--backend", "steady", "--golden-dir", golden, "--perf",
                   "--json", env / "slowed.json")
    assert rc == 1, text
    perf = json.loads((env / "slowed.json").read_text())["runs"][0]["perf"]
    assert perf["status"] == "fail"
    assert any("TPOT p50" in f and "slower" in f for f in perf["failures"])
    assert "regressed" in perf["relative_gate"]


def test_stale_or_edited_perf_golden_is_exit_2(env):
    golden = env / "golden"
    spec = env / "spec.yaml"
    # record one for `lax`, then change new_tokens: the golden is stale
    rc, text = cli("record-golden", spec, "--backend", "lax", "--perf", "--golden-dir", golden)
    assert rc == 0, text
    stale = env / "stale" / "spec.yaml"
    stale.parent.mkdir()
    stale.write_text(spec.read_text().replace("new_tokens: 6", "new_tokens: 5"))
    rc, text = cli("check", stale, "--backend", "lax", "--golden-dir", golden, "--perf")
    assert rc == 2 and "re-record it" in text, text
    recorded = next((golden / "tiny-perf" / "perf").glob("lax--*.json"))
    data = json.loads(recorded.read_text())
    data["rows"][0]["tokens_per_s"] *= 2
    recorded.write_text(json.dumps(data))
    with pytest.raises(GoldenError, match="edited by hand"):
        load_perf_golden(recorded, "tiny-perf")
    rc, text = cli("check", spec, "--backend", "lax", "--golden-dir", golden, "--perf")
    assert rc == 2 and "edited by hand" in text, text
