"""The gate on a real accelerator, with the embedded SmolLM2-135M spec.

The device is `SPECENGINE_TEST_DEVICE` (cuda, cuda:1, npu, xpu, … or cpu for a dry run on
the host), else whatever accelerator torch sees; with none, every test here skips with
the reason. The goldens are recorded on `cpu` (float32) into a temporary folder; the
candidate runs on the device in bfloat16:

* the embedded spec checked with its default tolerances (teacher-forced, decode path,
  prefill/decode consistency),
* determinism repeats and batch invariance at batch 1/4/8,
* `--perf`: TTFT/TPOT percentiles and the allocator's peak memory at batch 1/4/8,
* a planted bug (one layer's attention output projection sign-flipped) failing,
* `localize` naming that layer, on the device against the live cpu reference;

and, without SmolLM2, a tiny synthetic llama in float32 on the device (the device layer:
synchronize, the allocator's peak, the deterministic switches, against a cpu golden).

`SPECENGINE_TEST_CASES` (comma-separated case ids) narrows the cases for a quick dry run,
`SPECENGINE_TEST_DTYPE` (default bfloat16) sets the dtype of the repeat/batch/perf/planted-
bug/localize candidates (a CPU dry run uses float32: bf16 on a CPU is slow, and the
defaults check stays cpu-bf16);
`SPECENGINE_ACCEL_OUT` names a folder that receives every report these tests write (the
device check script summarises them).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import SMOLLM2_SPEC, TINY_MODEL, cli, flip_o_proj, load_json, perturb_model, \
    write_spec

pytestmark = pytest.mark.accelerator

FLIPPED_LAYER = 12
BATCH_SIZES = [1, 4, 8]
PERF_TOKENS, PERF_TOKENS_QUICK = 32, 8     # new tokens per perf run (quick: a dry run)
# bf16 kernels change with the batch shape: log-probs move by up to ~0.4 nats on cpu-bf16
# (README), tokens must not
BF16_BATCH_ATOL = 0.5

DERIVED = """\
specengine: 1
name: smollm2-accel
model:
  path: {model}
backends:
  accel: {{runtime: torch, device: "{device}", dtype: {dtype}}}
  accel-flipped: {{runtime: torch, device: "{device}", dtype: {dtype},
                  model: {{path: {flipped}}}}}
defaults:
  max_new_tokens: 16
  top_k: 10
  determinism: {{runs: {runs}, batch_sizes: {batch_sizes}, batch_atol: {batch_atol}}}
perf:
  warmup: 1
  runs: {perf_runs}
  batch_sizes: {batch_sizes}
  prompt_tokens: 32
  new_tokens: {perf_tokens}
cases:
{cases}
"""


def _wanted_device() -> str:
    """The device under test, or pytest.skip with the reason."""
    wanted = os.environ.get("SPECENGINE_TEST_DEVICE", "").strip()
    try:
        import torch
    except ImportError:
        pytest.skip("accelerator tests need torch")
    from specengine.backends.torch.device import TorchDevice
    from specengine.errors import BackendUnavailable

    if not wanted:
        acc = getattr(torch, "accelerator", None)
        current = acc.current_accelerator() if acc is not None else None
        if current is None:
            pytest.skip(f"no accelerator visible to torch {torch.__version__} (set "
                        "SPECENGINE_TEST_DEVICE=cuda|npu|xpu, or =cpu to dry-run these tests "
                        "on the host)")
        wanted = current.type
    try:
        TorchDevice(torch, wanted).check_available("accelerator tests")
    except BackendUnavailable as exc:   # asked for by name: an error, not a skip
        pytest.fail(f"SPECENGINE_TEST_DEVICE={wanted}: {exc}", pytrace=False)
    return wanted


def _dtype() -> str:
    return os.environ.get("SPECENGINE_TEST_DTYPE", "").strip() or "bfloat16"


def _builtin(device: str) -> str:
    """The built-in backend name for the device's family in bfloat16, or the spec's own."""
    return {"cuda": "cuda", "npu": "npu", "cpu": "cpu-bf16"}.get(device.split(":")[0], "accel")


def _case_args() -> list[str]:
    ids = [c.strip() for c in os.environ.get("SPECENGINE_TEST_CASES", "").split(",") if c.strip()]
    return [arg for cid in ids for arg in ("--case", cid)]


def _keep(path: Path) -> None:
    out = os.environ.get("SPECENGINE_ACCEL_OUT")
    if out and path.exists():
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(out) / path.name)


def _case_block() -> str:
    """The embedded spec's cases, verbatim (only those SPECENGINE_TEST_CASES names)."""
    text = SMOLLM2_SPEC.read_text("utf-8")
    start = text.index("cases:\n") + len("cases:\n")
    end = text.index("\n# ", start) if "\n# " in text[start:] else len(text)
    blocks = ["  - id:" + b for b in text[start:end].rstrip().split("  - id:")[1:]]
    wanted = _case_args()[1::2]
    keep = [b for b in blocks if not wanted or b.split()[2] in wanted]
    assert keep, f"SPECENGINE_TEST_CASES names no case of {SMOLLM2_SPEC.name}"
    return "".join(keep).rstrip()


TINY = """\
specengine: 1
name: tiny-accel
""" + TINY_MODEL + """backends:
  accel32: {runtime: torch, device: "DEVICE", dtype: float32}
defaults:
  max_new_tokens: 8
  determinism: {runs: 3, batch_sizes: [1, 4]}
perf: {warmup: 1, runs: 3, batch_sizes: [1, 4], prompt_tokens: 16, new_tokens: 8}
cases:
  - id: hello
    prompt: "Hello there"
  - id: chat
    messages: [{role: user, content: "What is 2 + 3?"}]
  - id: long
    prompt: "The quick brown fox jumps over the lazy dog, and then it runs away"
"""


def test_tiny_model_on_the_device_in_float32(tmp_path):
    """The device layer on a real device without SmolLM2: float32 on the device against
    the cpu golden, repeats, batch 4, and `--perf` with the allocator's peak."""
    device = _wanted_device()
    spec = write_spec(tmp_path / "tiny.yaml", TINY.replace("DEVICE", device))
    gdir, out = tmp_path / "golden", tmp_path / "tiny.json"
    rec = cli("record-golden", spec, "--backend", "cpu", "--golden-dir", gdir)
    assert rec.rc == 0, rec.text
    res = cli("check", spec, "--backend", "accel32", "--perf", "--golden-dir", gdir, "--json", out)
    _keep(out)
    assert res.rc == 0, res.text
    run = load_json(out)["runs"][0]
    assert run["candidate"]["device"] == device and run["candidate"]["device_name"]
    for case in run["cases"]:
        checks = _checks(case)
        assert checks["teacher-forced"]["metrics"]["kl_max"] < 1e-4, (case["id"], checks)
        assert checks["determinism"]["status"] == "pass", checks["determinism"]
        assert checks["batch-invariance"]["status"] == "pass", checks["batch-invariance"]
    perf = run["perf"]
    host = device == "cpu"
    assert perf["peak_mem_kind"].startswith("host peak RSS" if host else "device allocator peak")
    assert all(row["peak_mem_gib"] > 0 for row in perf["rows"]), perf["rows"]


@pytest.fixture(scope="module")
def accel(request, tmp_path_factory):
    device = _wanted_device()                    # skips before any model is touched
    from specengine.errors import ModelSourceError
    try:
        smollm2_dir = request.getfixturevalue("smollm2_dir")
    except ModelSourceError as exc:
        pytest.skip(f"SmolLM2 is not here: {exc}")
    root = tmp_path_factory.mktemp("accel")
    flipped = perturb_model(smollm2_dir, root / "flipped", flip_o_proj(FLIPPED_LAYER))
    quick = bool(os.environ.get("SPECENGINE_TEST_CASES"))
    spec = write_spec(root / "smollm2-accel.yaml", DERIVED.format(
        model=smollm2_dir, flipped=flipped, device=device, runs=3, dtype=_dtype(),
        batch_sizes=BATCH_SIZES, batch_atol=BF16_BATCH_ATOL, perf_runs=2 if quick else 10,
        perf_tokens=PERF_TOKENS_QUICK if quick else PERF_TOKENS,
        cases=_case_block()))
    # the embedded spec itself (only the selected cases, when SPECENGINE_TEST_CASES is set)
    text = SMOLLM2_SPEC.read_text("utf-8")
    start = text.index("cases:\n") + len("cases:\n")
    end = text.index("\n# ", start)
    embedded = write_spec(root / SMOLLM2_SPEC.name, text[:start] + _case_block() + text[end:])
    gdir = root / "golden"
    for target in (embedded, spec):               # the reference: cpu, float32
        rec = cli("record-golden", target, "--backend", "cpu", "--golden-dir", gdir)
        assert rec.rc == 0, rec.text
    return {"device": device, "spec": spec, "embedded": embedded, "gdir": gdir, "root": root}


def _run(accel, *args):
    return cli(*args, "--golden-dir", accel["gdir"])


def _checks(case: dict) -> dict[str, dict]:
    return {c["name"]: c for c in case["checks"]}


def test_embedded_spec_on_the_device_with_defaults(accel):
    out = accel["root"] / "check-defaults.json"
    html = accel["root"] / "check-defaults.html"
    backend = _builtin(accel["device"])
    spec = accel["embedded"] if backend != "accel" else accel["spec"]
    res = cli("check", spec, "--backend", backend, "--golden-dir", accel["gdir"],
              "--json", out, "--html", html)
    _keep(out), _keep(html)
    assert res.rc == 0, res.text
    run = load_json(out)["runs"][0]
    assert run["comparison"] == "cross-backend"
    cand = run["candidate"]
    assert cand["device"].split(":")[0] == accel["device"].split(":")[0]
    assert cand["dtype"] == "bfloat16" and run["reference"]["dtype"] == "float32"
    assert cand["device_name"]
    assert cand["settings"]["torch.use_deterministic_algorithms"] == "True (warn_only)"
    for case in run["cases"]:
        checks = _checks(case)
        tf = checks["teacher-forced"]
        assert tf["status"] == "pass" and 0 < tf["metrics"]["kl_mean"] < 0.01, (case["id"], tf)
        for name in ("decode", "consistency"):
            assert name in checks, (case["id"], sorted(checks))
            assert checks[name]["status"] == "pass", (case["id"], checks[name])
    assert "cross-backend" in res.out


@pytest.fixture(scope="module")
def accel_perf(accel):
    """One `check --perf` of the bf16 candidate: its checks (repeats, batch invariance)
    and its perf section, shared by the two tests below."""
    out = accel["root"] / "perf.json"
    res = _run(accel, "check", accel["spec"], "--backend", "accel", "--perf", "--json", out)
    _keep(out)
    return res, load_json(out) if out.exists() else None


def test_determinism_and_batch_invariance_on_the_device(accel_perf):
    res, report = accel_perf
    assert report is not None, res.text
    run = report["runs"][0]
    for case in run["cases"]:
        checks = _checks(case)
        det = checks["determinism"]
        assert det["metrics"]["runs"] == 3
        assert det["status"] == "pass" and det["metrics"]["identical_tokens"], (case["id"], det)
        batch = checks["batch-invariance"]
        assert [s for s in batch["metrics"]["batch_sizes"] if s > 1] == [4, 8], batch
        assert batch["status"] == "pass", (case["id"], batch["message"])
    assert res.rc == 0, res.text


def test_perf_on_the_device(accel, accel_perf):
    res, report = accel_perf
    assert res.rc == 0, res.text
    perf = report["runs"][0]["perf"]
    host = accel["device"] == "cpu"
    assert perf["peak_mem_kind"].startswith("host peak RSS" if host else "device allocator peak")
    assert [row["batch_size"] for row in perf["rows"]] == BATCH_SIZES
    weights_gib = 135e6 * 2 / 2**30          # the bf16 weights are on the device
    for row in perf["rows"]:
        for metric in ("ttft_ms", "tpot_ms"):
            p = row[metric]
            assert 0 < p["p50"] <= p["p90"] <= p["p99"], (metric, row)
        assert row["tokens_per_s"] > 0 and row["tokens_per_row"] == perf["new_tokens"]
        assert row["peak_mem_gib"] > weights_gib, row
    # on an accelerator a batch of 8 decodes more tokens per second than one row does
    if not host:
        tps = [row["tokens_per_s"] for row in perf["rows"]]
        assert tps[-1] > tps[0], tps


def test_planted_bug_fails_on_the_device(accel):
    out = accel["root"] / "planted.json"
    res = _run(accel, "check", accel["spec"], "--backend", "accel-flipped", "--json", out)
    _keep(out)
    assert res.rc == 1, res.text
    run = load_json(out)["runs"][0]
    assert run["candidate"]["model_override"] is True
    for case in run["cases"]:
        tf = _checks(case)["teacher-forced"]
        assert case["status"] == "fail" and tf["status"] == "fail", (case["id"], tf)
        assert tf["metrics"]["kl_mean"] > 0.01, (case["id"], tf["metrics"])


def test_localize_on_the_device(accel):
    out = accel["root"] / "localize.json"
    cases = ["--case", _case_args()[1] if _case_args() else "capital-fr"]
    res = cli("localize", accel["spec"], "--backend", "accel-flipped", "--against", "cpu",
              "--golden-dir", accel["gdir"], *cases, "--json", out)
    _keep(out)
    assert res.rc == 1, res.text
    locs = load_json(out)["localizations"]
    assert locs and all(loc["mode"] == "full" for loc in locs), locs
    assert {loc["first_flagged_name"] for loc in locs} == {f"layer.{FLIPPED_LAYER}"}, res.out
