"""First-try readability: HTML cases collapsed unless they fail, chart labels that never
overlap, `validate` listing every error of every file with a summary line, `init` with a
relative schema path / chat cases for GGUF folders / explicit embedding tolerances, and
`record-golden` printing continuations and near-tie warnings."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import write_spec
from test_cli_output import run_main
from test_ci_outputs import GATE_SPEC

from specengine.report import render_html
from specengine.report.charts import label_box, position_chart
from specengine.results import CaseResult, Check, RunResult, Side


def _run(cases) -> RunResult:
    side = Side(backend="cpu", runtime="torch", device="cpu", dtype="float32")
    return RunResult(spec_name="s", spec_path="s.yaml", command="check", candidate=side,
                     reference=side, comparison="cross-backend", reference_kind="golden",
                     cases=cases)


def test_html_collapses_passing_cases_and_opens_failing_ones():
    cases = [CaseResult(id=f"p{i}", status="pass") for i in range(3)]
    cases.append(CaseResult(id="bad", status="fail", checks=[Check("expect.contains", "fail")]))
    html = render_html([_run(cases)])
    tags = dict(re.findall(r'<details class="case case-(\w+)" id="[^"]+"( open)?>', html))
    opened = re.findall(r'<details class="case case-(\w+)"[^>]*?( open)?>', html)
    assert [status for status, flag in opened if flag] == ["fail"], tags
    assert sum(1 for status, flag in opened if status == "pass" and not flag) == 3


def _labels(svg: str) -> dict[str, tuple[float, float]]:
    out = {}
    for x, y, anchor, cls, text in re.findall(
            r'<text x="([\d.]+)" y="([\d.]+)" text-anchor="(\w+)" class="(\w+)-label"[^>]*>([^<]*)</text>',
            svg):
        out[cls] = (float(x), float(y), anchor, text)
    return out


def test_chart_marker_labels_never_overlap():
    for worst, div in ((3, 3), (3, 4), (15, 15), (0, 15)):
        case = CaseResult(id="c", status="fail", divergence_step=div, worst_position=worst,
                          per_position={"kl": [0.1] * 16, "abs_dlogprob": [0.2] * 16})
        labels = _labels(str(position_chart(case)))
        (wx, wy, wa, wt), (dx, dy, da, dt) = labels["worst"], labels["divergence"]
        boxes = []
        for x, y, anchor, text in ((wx, wy, wa, wt), (dx, dy, da, dt)):
            width = 7.0 * len(text)
            left = x if anchor == "start" else x - width
            boxes.append((left, left + width, y))
        (l1, r1, y1), (l2, r2, y2) = boxes
        assert y1 != y2 or r1 <= l2 or r2 <= l1, (worst, div, labels)
        assert max(r1, r2) <= 680, labels              # inside the chart
    assert label_box(670, "divergence 15")[2] == "end"


def test_validate_lists_every_error_and_a_summary(tmp_path):
    write_spec(tmp_path / "bad.yaml", """\
specengine: 1
name: Bad_Name
model: {synthetic: {model_type: llama, seed: 1}}
bogus: 3
cases:
  - {id: a, prompt: "x", max_new_tokens: 0}
  - {id: b, promt: "y"}
""")
    write_spec(tmp_path / "dup.yaml", """\
specengine: 1
name: dup
model: {synthetic: {model_type: llama, seed: 1}}
cases:
  - {id: a, prompt: "x", expect: {regex: "("}}
  - {id: b, prompt: "x", expect: {regex: "[z"}}
  - {id: a, prompt: "z"}
""")
    write_spec(tmp_path / "good.yaml", GATE_SPEC)
    rc, out, err = run_main("validate", tmp_path)
    assert rc == 2
    lines = err.strip().splitlines()
    bad = [line for line in lines if "bad.yaml:" in line]
    assert [line.split(":")[1] for line in bad] == ["2", "4", "6", "7"], err
    dup = [line for line in lines if "dup.yaml:" in line]
    assert len(dup) == 3 and "duplicate case id 'a'" in dup[-1], err
    assert any("regular expression" in line and ":5:" in line for line in dup)
    assert any("regular expression" in line and ":6:" in line for line in dup)
    assert out.strip().splitlines()[-1] == "7 errors in 2 of 3 files; 1 valid"
    assert "ok " in out and "good.yaml" in out


def test_init_schema_path_is_relative_and_gguf_gets_a_chat_case(tmp_path, monkeypatch):
    from specengine.cli.init_spec import gguf_has_chat_template

    folder = tmp_path / "m"
    folder.mkdir()
    blob = b"GGUF" + b"\0" * 2_000_000 + b"tokenizer.chat_template" + b"\0" * 64
    (folder / "tiny.gguf").write_bytes(blob)
    assert gguf_has_chat_template(folder / "tiny.gguf")
    (tmp_path / "plain.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    assert not gguf_has_chat_template(tmp_path / "plain.gguf")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main("init", folder, "-o", tmp_path / "specs" / "m.yaml")
    assert rc == 0, out + err
    text = (tmp_path / "specs" / "m.yaml").read_text()
    schema = text.splitlines()[0].split("$schema=")[1]
    assert not schema.startswith("/") and schema.endswith("spec.schema.json")
    assert "messages:" in text and "gguf:" in text


def test_init_embedding_spec_spells_out_its_tolerances(tmp_path, monkeypatch):
    import json

    folder = tmp_path / "enc"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"],
                                                    "model_type": "bert", "vocab_size": 30}))
    (folder / "tokenizer.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main("init", folder, "-o", tmp_path / "specs" / "e.yaml")
    assert rc == 0, out + err
    text = (tmp_path / "specs" / "e.yaml").read_text()
    assert "cosine_min: 0.999" in text and "hidden_cosine_min: 0.99" in text


def test_record_golden_prints_continuations_and_near_ties(tmp_path):
    from specengine.kinds.causal_lm.golden import Steps
    from specengine.kinds.causal_lm.record_summary import near_ties

    record = Steps.rounded([[5, 6], [7, 8]], [[-0.1, -3.0], [-0.7, -0.9]], [-4.0, -3.0])
    assert near_ties(record, 0.5) == [(1, near_ties(record, 0.5)[0][1], 7, 8)]
    assert abs(near_ties(record, 0.5)[0][1] - 0.2) < 1e-9
    spec = write_spec(tmp_path / "specs" / "ci.yaml", GATE_SPEC.replace(
        "tags: [english, smoke]", 'tags: [english, smoke]\n    expect: {contains: "x"}'))
    # the reference itself does not write "x": refused, then recorded with the case marked
    rc, out, err = run_main("record-golden", spec, "--golden-dir", tmp_path / "golden")
    assert rc == 1 and "fails its own spec's expectations" in err, out + err
    rc, out, err = run_main("record-golden", spec, "--golden-dir", tmp_path / "golden",
                            "--allow-failing-expectations")
    assert rc == 0, out + err
    lines = out.splitlines()
    for cid in ("hello", "chat", "count"):
        assert any(line.startswith(f"  {cid}: ") for line in lines), out
    # the tiny model's near-ties (seeded): a warning on the case with an expectation
    assert "warning: expect.contains is fragile: near-tie step" in out, out
    assert Path(tmp_path / "golden" / "ci-tiny" / "cpu.json").is_file()


def test_provenance_has_no_machine_paths(tmp_path, monkeypatch):
    import sys

    from specengine.loading.provenance import portable_path

    site = tmp_path / "venv" / "lib" / "site-packages"
    (site / "somepkg" / "model").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(site)] + sys.path)
    assert portable_path(site / "somepkg" / "model") == "pkg://somepkg/model"
    project = tmp_path / "proj"
    (project / "models" / "m").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    spec = write_spec(project / "specs" / "x.yaml", "x: 1\n")
    assert portable_path(project / "models" / "m", spec) == "models/m"
    assert portable_path("/opt/elsewhere/m", spec) == "/opt/elsewhere/m"


def test_committed_goldens_and_origins_are_portable():
    import json

    from helpers import REPO
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    for name, spec in (("smollm2-135m", "specs/smollm2-135m.yaml"),
                       ("minilm-l6", "specs/minilm-l6.yaml")):
        source = json.loads((REPO / "golden" / name / "cpu.json").read_text())["model"]["source"]
        assert "pkg://" in source and str(REPO) not in source and "/tmp" not in source, source
        origin = resolve(load_spec(REPO / spec).model).origin
        assert origin == source, (origin, source)


def test_equal_fingerprints_are_not_flagged_as_another_source():
    from specengine.report import render_markdown
    from specengine.report.model import env_rows

    ref = Side(backend="cpu", model_fingerprint="sha256:aa", model_source="path /a/m")
    cand = Side(backend="cpu-bf16", model_fingerprint="sha256:aa", model_source="path /b/m")
    run = RunResult(spec_name="s", spec_path="s.yaml", command="check", candidate=cand,
                    reference=ref, comparison="cross-backend", reference_kind="golden")
    row = next(r for r in env_rows(run) if r.label == "model source")
    assert not row.differs
    assert "/b/m ≠" not in render_markdown([run])
    cand.model_fingerprint = "sha256:bb"
    assert next(r for r in env_rows(run) if r.label == "model source").differs


def test_a_tie_after_the_expectation_is_met_is_not_a_warning():
    from specengine.kinds.causal_lm.record_summary import settled_step

    pieces = ["", " Paris", ".", " It", " is"]
    decode = lambda ids: "".join(pieces[i] for i in ids)   # noqa: E731
    ids = [1, 2, 3, 4]
    assert settled_step({"contains": "Paris"}, ids, decode) == 1
    assert settled_step({"startswith": " Paris."}, ids, decode) == 2
    assert settled_step({"contains": "Rome"}, ids, decode) == 4
    assert settled_step({"regex": "P"}, ids, decode) == 4
    assert settled_step({"min_prob": 0.1}, ids, decode) == 0
