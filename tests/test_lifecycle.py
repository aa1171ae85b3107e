"""The golden lifecycle end to end on the real SmolLM2-135M model:
missing -> record -> pass -> perturb -> fail -> re-record -> pass; plus the embedded
spec's committed golden checked on cpu (self-check) and cpu-bf16 (cross-backend)."""

import xml.etree.ElementTree as ET

import pytest

from helpers import REPO, SMOLLM2_SPEC, assert_clean_error, cli, copy_model, flip_o_proj, \
    load_json, perturb_model, write_spec

SPEC = """\
specengine: 1
name: smollm2-lifecycle
model:
  path: {model}
backends:
  flipped:
    runtime: torch
    device: cpu
    dtype: float32
    model: {{path: {flipped}}}
defaults:
  max_new_tokens: 12
  # one run per case: determinism is the embedded spec's check (below); this is the lifecycle
  determinism: {{runs: 1}}
cases:
  - id: capital
    prompt: "The capital of France is"
    expect: {{contains: Paris}}
  - id: zh
    prompt: "法国的首都是"
  - id: add
    messages: [{{role: user, content: "What is 2 + 3? Answer with just the number."}}]
    expect: {{contains: "5"}}
"""


@pytest.fixture(scope="module")
def models(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    good = copy_model(smollm2_dir, root / "good")
    flipped = perturb_model(smollm2_dir, root / "flipped", flip_o_proj(12))
    return good, flipped


def test_lifecycle_on_real_model(models, tmp_path):
    good, flipped = models
    spec = write_spec(tmp_path / "spec.yaml", SPEC.format(model=good, flipped=flipped))
    gdir = tmp_path / "golden"
    reports = {k: tmp_path / f"r.{k}" for k in ("json", "md", "html", "xml")}

    # 1. missing golden
    assert "no golden" in assert_clean_error(cli("check", spec, "--backend", "cpu",
                                                 "--golden-dir", gdir), 2)
    # 2. record
    rec = cli("record-golden", spec, "--backend", "cpu", "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    golden = load_json(gdir / "smollm2-lifecycle" / "cpu.json")
    assert "Paris" in golden["cases"]["capital"]["output_text"]
    # 3. pass (a self-check, labelled as such)
    ok = cli("check", spec, "--backend", "cpu", "--golden-dir", gdir, "--json", reports["json"])
    assert ok.rc == 0, ok.text
    run = load_json(reports["json"])["runs"][0]
    assert run["comparison"] == "self-check" and run["status"] == "pass"
    assert "self-check" in ok.out
    # 4. perturbed candidate fails, named in every report format
    bad = cli("check", spec, "--backend", "flipped", "--golden-dir", gdir,
              "--json", reports["json"], "--markdown", reports["md"], "--html", reports["html"],
              "--junit", reports["xml"])
    assert bad.rc == 1, bad.text
    run = load_json(reports["json"])["runs"][0]
    assert run["candidate"]["model_override"] is True
    failed = [c for c in run["cases"] if c["status"] == "fail"]
    assert failed, run["cases"]
    for case in failed:
        tf = next(c for c in case["checks"] if c["name"] == "teacher-forced")
        assert tf["status"] == "fail" and tf["metrics"]["kl_mean"] > 0.01, tf
    names = [c["id"] for c in failed]
    md, html = reports["md"].read_text(), reports["html"].read_text()
    junit = ET.parse(reports["xml"]).getroot()
    junit_failed = {tc.get("name") for tc in junit.iter("testcase") if tc.find("failure") is not None}
    for cid in names:
        assert cid in bad.out and cid in md and cid in html and cid in junit_failed
    for text in (bad.out, md, html, ET.tostring(junit, encoding="unicode")):
        assert "KL mean" in text or "kl_mean" in text
    # 5. the port's reference changes (the flipped model becomes the reference): the golden
    #    is stale, re-recording shows what changed, then the check passes again
    spec.write_text(SPEC.format(model=flipped, flipped=flipped))
    stale = assert_clean_error(cli("check", spec, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "another model" in stale
    upd = cli("record-golden", spec, "--backend", "cpu", "--golden-dir", gdir, "--update")
    assert upd.rc == 0 and "changes in" in upd.out and "output" in upd.out, upd.text
    again = cli("check", spec, "--backend", "flipped", "--golden-dir", gdir)
    assert again.rc == 0, again.text
    # a changed prompt without re-recording names the stale case
    spec.write_text(SPEC.format(model=flipped, flipped=flipped).replace("法国的首都是", "德国的首都是"))
    msg = assert_clean_error(cli("check", spec, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "case 'zh'" in msg and "stale" in msg


def test_embedded_spec_bf16_against_committed_golden(tmp_path):
    """Real bf16 noise passes the default tolerances; the report shows each case's metrics."""
    out = tmp_path / "bf16.json"
    result = cli("check", SMOLLM2_SPEC, "--backend", "cpu-bf16", "--golden-dir", REPO / "golden",
                 "--json", out, "--html", tmp_path / "bf16.html")
    assert result.rc == 0, result.text
    run = load_json(out)["runs"][0]
    assert run["comparison"] == "cross-backend"
    assert run["candidate"]["dtype"] == "bfloat16" and run["reference"]["dtype"] == "float32"
    for case in run["cases"]:
        tf = next(c for c in case["checks"] if c["name"] == "teacher-forced")
        m = tf["metrics"]
        assert 0 < m["kl_mean"] < 0.01 and m["max_abs_dlogprob"] > 0, (case["id"], m)
        assert case["id"] in result.out
    assert "cross-backend" in result.out


def test_embedded_spec_self_check_against_committed_golden(tmp_path):
    result = cli("check", SMOLLM2_SPEC, "--backend", "cpu", "--golden-dir", REPO / "golden",
                 "--json", tmp_path / "cpu.json")
    assert result.rc == 0, result.text
    assert load_json(tmp_path / "cpu.json")["runs"][0]["comparison"] == "self-check"
