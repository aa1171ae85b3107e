"""Long-context cases: prompts made by recipe (exactly N tokens), prompts from files,
length sweeps expanded into sub-cases, goldens that store a recipe and a hash instead of
the ids — and, on the real SmolLM2 model, a planted position-dependent bug that only long
prompts reach: it fails the long spec at the sub-cases past its position and passes the
short embedded spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO, SMOLLM2_SPEC, TINY_MODEL, assert_clean_error, cli, copy_model, load_json, \
    write_spec

LONG_SPEC = REPO / "specs" / "smollm2-long.yaml"
GOLDEN_DIR = REPO / "golden"


def test_builtin_text_is_deterministic_and_portable():
    from specengine.spec.long_prompt import builtin_text

    a, b = builtin_text(200, 7), builtin_text(200, 7)
    assert a == b and len(a.split()) == 200
    assert builtin_text(200, 8) != a
    # pinned: the generator uses integer arithmetic only, so these words never change
    assert a.split()[:5] == ["Night", "south", "church", "used", "early"]


def test_recipe_gives_exactly_n_tokens_of_the_tokenizer():
    from specengine.spec.long_prompt import Recipe, build_ids
    from specengine.loading.tokenizer import BytesTokenizer

    tok = BytesTokenizer()
    for n in (1, 7, 255, 256, 257, 1024):
        ids = build_ids(Recipe(tokens=n, seed=3), tok.encode)
        assert len(ids) == n
        assert ids == build_ids(Recipe(tokens=n, seed=3), tok.encode)
    # a longer prompt of the same recipe starts with the shorter one (prefix-stable)
    assert build_ids(Recipe(tokens=900, seed=3), tok.encode)[:300] == \
        build_ids(Recipe(tokens=300, seed=3), tok.encode)


def test_sweep_lengths():
    from specengine.spec.long_prompt import sweep_lengths

    assert sweep_lengths({"lengths": [1024, 512, 512]}) == [512, 1024]
    assert sweep_lengths({"around": [256, 1024], "delta": 1}) == [255, 256, 257, 1023, 1024, 1025]
    assert sweep_lengths({"around": [8], "delta": 2}) == [6, 8, 10]


TINY_LONG = """\
specengine: 1
name: tiny-long
{model}
defaults: {{max_new_tokens: 4, determinism: {{runs: 1}}}}
cases:
  - id: sweep
    long_prompt: {{seed: 2}}
    around: [64]
    delta: 1
  - id: fromfile
    prompt_file: prompt.txt
  - id: filesource
    long_prompt: {{tokens: 150, source: prompt.txt}}
perf: {{warmup: 1, runs: 3, new_tokens: 4}}
"""


def _tiny_long(tmp_path: Path, text: str = "A short text from a file.\\n") -> Path:
    (tmp_path / "prompt.txt").write_text(text, "utf-8")
    model = TINY_MODEL.replace("max_position_embeddings: 256", "max_position_embeddings: 512")
    return write_spec(tmp_path / "long.yaml", TINY_LONG.format(model=model.rstrip()))


def test_sweep_sub_cases_record_by_recipe_and_verify(tmp_path):
    spec = _tiny_long(tmp_path)
    res = cli("validate", spec)
    assert res.rc == 0, res.text
    gdir = tmp_path / "golden"
    res = cli("record-golden", spec, "--golden-dir", gdir)
    assert res.rc == 0, res.text
    golden = load_json(gdir / "tiny-long" / "cpu.json")
    assert sorted(golden["cases"]) == ["filesource", "fromfile", "sweep-63", "sweep-64",
                                       "sweep-65"]
    sub = golden["cases"]["sweep-64"]
    assert "prompt_ids" not in sub and sub["prompt_length"] == 64
    assert len(sub["prompt_ids_sha256"]) == 64
    assert sub["settings"]["prompt_recipe"]["tokens"] == 64
    assert golden["cases"]["filesource"]["prompt_length"] == 150
    assert "prompt_ids" in golden["cases"]["fromfile"]       # a file prompt is a plain prompt
    res = cli("check", spec, "--backend", "cpu", "--golden-dir", gdir, "--json", tmp_path / "r.json",
              "--perf", "--html", tmp_path / "r.html", "--markdown", tmp_path / "r.md")
    assert res.rc == 0, res.text
    run = load_json(tmp_path / "r.json")["runs"][0]
    # --perf on a long spec: TTFT per distinct prompt length, in every report
    by_length = run["perf"]["ttft_by_length"]
    assert [r["prompt_tokens"] for r in by_length] == sorted({c["prompt_length"] for c in run["cases"]})
    assert next(r for r in by_length if r["prompt_tokens"] == 64)["cases"] == ["sweep-64"]
    assert all(r["runs"] == 3 and r["ttft_ms"]["p50"] > 0 for r in by_length)
    assert "TTFT by prompt length (p50): " in res.text
    assert 'class="chart ttft-chart"' in (tmp_path / "r.html").read_text("utf-8")
    assert "| 64 | " in (tmp_path / "r.md").read_text("utf-8")
    # the long cases' per-position chart runs over the sampled prompt positions too
    assert (tmp_path / "r.html").read_text("utf-8").count('class="chart sequence-chart"') == 4
    lengths = {c["id"]: c["prompt_length"] for c in run["cases"]}
    prompt_checks = {c["id"]: [k["status"] for k in c["checks"] if k["name"] == "prompt-positions"]
                     for c in run["cases"]}
    assert prompt_checks["sweep-64"] == ["pass"] and prompt_checks["fromfile"] == []
    assert lengths["sweep-63"] == 63 and lengths["sweep-65"] == 65
    # a changed source file makes the golden stale, naming the case
    (tmp_path / "prompt.txt").write_text("Another text entirely.\n", "utf-8")
    line = assert_clean_error(cli("check", spec, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "stale" in line and ("fromfile" in line or "filesource" in line), line


def test_long_prompt_spec_errors_have_locations(tmp_path):
    spec = write_spec(tmp_path / "bad.yaml", TINY_LONG.format(model=TINY_MODEL.rstrip()).replace(
        "    long_prompt: {seed: 2}\n", "    prompt: hello\n"))
    line = assert_clean_error(cli("check", spec, "--backend", "cpu"), 2)
    assert "bad.yaml:15:13:" in line and "needs long_prompt" in line, line
    spec = write_spec(tmp_path / "nofile.yaml", TINY_LONG.format(model=TINY_MODEL.rstrip()))
    line = assert_clean_error(cli("check", spec, "--backend", "cpu"), 2)
    assert "nofile.yaml:" in line and "prompt.txt" in line, line


def test_long_spec_golden_is_small_and_by_recipe():
    golden = load_json(GOLDEN_DIR / "smollm2-long" / "cpu.json")
    assert (GOLDEN_DIR / "smollm2-long" / "cpu.json").stat().st_size <= 100_000
    lengths = sorted(c["prompt_length"] for c in golden["cases"].values())
    assert lengths == [512, 1023, 1024, 1025, 2048]
    assert all("prompt_ids" not in c for c in golden["cases"].values())
    for case in golden["cases"].values():
        positions = case["prompt_steps"]["positions"]
        assert len(positions) == 16 and positions[-1] == case["prompt_length"] - 2


# A port whose rotary positions are right below 1000 and wrong from there on (a rope
# scaling that switches on past a trained length, a kernel that changes above a size).
POSITION_BUG = '''\
import torch
from transformers import LlamaForCausalLM


class LongBugLlama(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            start = 0
            past = kwargs.get("past_key_values")
            if past is not None:
                start = past.get_seq_length()
            position_ids = torch.arange(start, start + input_ids.shape[1])[None]
        position_ids = torch.where(position_ids >= 1000, position_ids + 5, position_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, **kwargs)
'''


@pytest.fixture(scope="module")
def long_bug(smollm2_dir, tmp_path_factory):
    folder = copy_model(smollm2_dir, tmp_path_factory.mktemp("longbug") / "model")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_longbug.LongBugLlama"}
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "modeling_longbug.py").write_text(POSITION_BUG)
    return folder


def _with_backend(spec: Path, folder: Path, out: Path) -> Path:
    text = spec.read_text("utf-8").replace(
        "reference: cpu\n", "reference: cpu\nbackends:\n  long-bug:\n    runtime: torch\n"
        f"    model: {{path: {json.dumps(str(folder))}, trust_remote_code: true}}\n")
    text = text.replace("determinism: {runs: 2}", "determinism: {runs: 1}")
    out.write_text(text, "utf-8")
    return out


def test_position_bug_fails_long_sub_cases_and_passes_the_short_spec(long_bug, tmp_path):
    from specengine.run import check_spec, select_cases
    from specengine.spec import load_spec

    long_spec = load_spec(_with_backend(LONG_SPEC, long_bug, tmp_path / "long.yaml"))
    run = check_spec(long_spec, "long-bug", GOLDEN_DIR,
                     cases=select_cases(long_spec, ["sweep-512", "sweep-1025"]))
    status = {c.id: c.status for c in run.cases}
    assert status == {"sweep-512": "pass", "sweep-1025": "fail"}, \
        [(c.id, c.failures()) for c in run.cases]
    failing = next(c for c in run.cases if c.id == "sweep-1025")
    assert {c.name: c.status for c in failing.checks}["prompt-positions"] == "fail"
    note = next(n for n in run.notes if n.startswith("length sweep 'sweep'"))
    assert "prompt length 1025" in note and "sequence position" in note, note
    # where drift starts over the whole sequence: the first sampled prompt position past
    # the bug's position 1000 (0, 68, …, 955, 1023 are sampled), the one before it within
    from specengine.report.render import render_html
    from specengine.report.sequence import case_drift

    drift = case_drift(failing)
    assert (drift.point.part, drift.point.position, drift.previous.position) == \
        ("prompt", 1023, 955), drift
    assert "first past tolerance at sequence position 1023 (a sampled prompt position" in note
    assert case_drift(next(c for c in run.cases if c.id == "sweep-512")) is None
    html = render_html([run])
    assert html.count('class="chart sequence-chart"') == 2 and "drift starts 1023" in html
    short = load_spec(_with_backend(SMOLLM2_SPEC, long_bug, tmp_path / "short.yaml"))
    run = check_spec(short, "long-bug", GOLDEN_DIR,
                     cases=select_cases(short, ["relativity", "capital-zh"]))
    assert run.status == "pass", [(c.id, c.failures()) for c in run.cases]
