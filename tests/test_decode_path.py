"""The decode path, prefill/decode consistency, dtype-aware tolerances and the port's own
code, on the real SmolLM2-135M model with planted bugs of each class:

- decode-only bugs (a KV-cache position off by one on decode steps; fixed noise added to
  the logits of decode steps only), in a model folder that ships its own modeling code;
- the same folder without `trust_remote_code` (exit 2: the port's code is never skipped);
- float32 candidates with a wrong normalisation constant (rms_norm_eps × 100, the final
  norm's weight × 1.05), which bf16-sized tolerances would pass;
- an unmodified float32 copy (passes, labelled cross-model only if its bytes differ).

Every planted bug must fail every case, with the failing path named.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import REPO, SMOLLM2_SPEC, assert_clean_error, cli, copy_model, perturb_model

GOLDEN_DIR = REPO / "golden"

# Modeling code a port would ship: the built-in Llama with a decode-path bug switched by
# the config. Decode steps are the forward calls that extend a non-empty KV cache.
BUGGY_CODE = '''\
import torch
from transformers import LlamaForCausalLM


class DecodeBugLlama(LlamaForCausalLM):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, **kwargs):
        decoding = past_key_values is not None and past_key_values.get_seq_length() > 0
        bug = getattr(self.config, "planted_bug", "")
        if decoding and bug == "position" and position_ids is not None:
            position_ids = position_ids + 1
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids, past_key_values=past_key_values,
                              **kwargs)
        if decoding and bug == "noise":
            gen = torch.Generator().manual_seed(1234)
            noise = torch.randn(out.logits.shape[-1], generator=gen) * 0.3
            out.logits = out.logits + noise.to(out.logits.dtype)
        return out
'''


def _spec_text(backends: dict[str, dict]) -> str:
    """The embedded spec with candidate backends added (case settings unchanged, so the
    committed golden stays valid) and one run per case (no determinism repeats)."""
    text = SMOLLM2_SPEC.read_text("utf-8")
    text = text.replace("determinism: {runs: 2}", "determinism: {runs: 1}")
    lines = ["backends:"]
    for name, entry in backends.items():
        lines.append(f"  {name}:")
        lines.append("    runtime: torch")
        lines.append("    device: cpu")
        lines.append(f"    dtype: {entry.get('dtype', 'float32')}")
        model = entry["model"]
        lines.append(f"    model: {json.dumps(model)}")
    return text.replace("reference: cpu\n", "reference: cpu\n" + "\n".join(lines) + "\n")


def _folder_with_code(base: Path, dst: Path, bug: str, auto_map: bool = True) -> Path:
    copy_model(base, dst)
    config = json.loads((dst / "config.json").read_text())
    config["planted_bug"] = bug
    if auto_map:
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_decodebug.DecodeBugLlama"}
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    (dst / "modeling_decodebug.py").write_text(BUGGY_CODE)
    return dst


def _edit_config(base: Path, dst: Path, **changes) -> Path:
    copy_model(base, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def _scale_final_norm(factor: float):
    def edit(tensors):
        tensors["model.norm.weight"] = tensors["model.norm.weight"] * factor
    return edit


@pytest.fixture(scope="module")
def candidates(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decode-candidates")
    cfg = json.loads((Path(smollm2_dir) / "config.json").read_text())
    return {
        "position": _folder_with_code(smollm2_dir, root / "position", "position"),
        "noise": _folder_with_code(smollm2_dir, root / "noise", "noise"),
        "eps": _edit_config(smollm2_dir, root / "eps", rms_norm_eps=cfg["rms_norm_eps"] * 100),
        "norm": perturb_model(smollm2_dir, root / "norm", _scale_final_norm(1.05)),
        "copy": copy_model(smollm2_dir, root / "copy"),
    }


@pytest.fixture(scope="module")
def spec_file(candidates, tmp_path_factory):
    backends = {"pos-bug": {"model": {"path": str(candidates["position"]),
                                      "trust_remote_code": True}},
                "noise-bug": {"model": {"path": str(candidates["noise"]),
                                        "trust_remote_code": True}},
                "eps-bug": {"model": {"path": str(candidates["eps"])}},
                "norm-bug": {"model": {"path": str(candidates["norm"])}},
                "fp32-copy": {"model": {"path": str(candidates["copy"])}}}
    path = tmp_path_factory.mktemp("decode-spec") / "smollm2.yaml"
    path.write_text(_spec_text(backends), "utf-8")
    return path


# three of the embedded spec's six cases (a plain prompt, a Chinese prompt, a chat): the
# suite's time budget; the planted bugs fail the other three just the same
CASES = ["relativity", "capital-zh", "water-chat"]


def _check(spec_file: Path, backend: str):
    from specengine.run import check_spec, select_cases
    from specengine.spec import load_spec

    spec = load_spec(spec_file)
    return check_spec(spec, backend, GOLDEN_DIR, cases=select_cases(spec, CASES))


def _status(case, name):
    return next(c for c in case.checks if c.name == name)


@pytest.mark.parametrize("backend", ["pos-bug", "noise-bug"])
def test_decode_only_bug_fails_every_case_through_the_decode_path(spec_file, backend):
    run = _check(spec_file, backend)
    assert run.status == "fail"
    assert run.tolerance_class == "float32"
    for case in run.cases:
        assert case.status == "fail", (case.id, [(c.name, c.status, c.message) for c in case.checks])
        # the one-pass forward is exact: the bug is seen on the decode path only
        assert _status(case, "teacher-forced").status == "pass", case.id
        assert _status(case, "decode").status == "fail", case.id
        assert _status(case, "consistency").status == "fail", case.id
    # the port's own code ran, and the environment says which
    modeling = run.candidate.modeling
    assert modeling["class"] == "DecodeBugLlama" and modeling["folder_code_ran"] is True
    assert len(modeling["folder_code_sha256"]) == 64
    assert run.comparison == "cross-model"
    decode_stats = run.distribution["decode"]
    assert decode_stats["kl_mean"] > 10 * run.distribution["prefill"]["kl_mean"]


def test_folder_code_without_trust_is_refused(candidates, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_text({"pos-bug": {"model": {"path": str(candidates["position"])}}}))
    res = cli("check", spec, "--backend", "pos-bug", "--golden-dir", GOLDEN_DIR)
    line = assert_clean_error(res, 2)
    assert "trust_remote_code: true" in line and "use_builtin_class: true" in line, line
    # the knowing opt-out loads the built-in class, and says so
    spec.write_text(_spec_text({"pos-bug": {"model": {"path": str(candidates["position"]),
                                                      "use_builtin_class": True}}}))
    run = _check(spec, "pos-bug")
    assert run.candidate.modeling["class"] == "LlamaForCausalLM"
    assert run.candidate.modeling["folder_code_ran"] is False
    assert run.status == "pass", [c.failures() for c in run.cases]


@pytest.mark.parametrize("backend", ["eps-bug", "norm-bug"])
def test_float32_normalisation_bug_fails_at_float32_tolerance(spec_file, backend):
    run = _check(spec_file, backend)
    assert run.tolerance_class == "float32"
    for case in run.cases:
        assert case.status == "fail", (case.id, case.failures())
        assert _status(case, "teacher-forced").status == "fail", case.id
        tf = _status(case, "teacher-forced")
        assert tf.metrics["tolerance_set"] == "float32: class defaults", tf.metrics
        assert tf.metrics["limit_sources"]["kl_mean_max"] == "float32 default"
        # the same numbers are inside the half-precision set: that is why the class matters
    assert max(c.checks[0].metrics.get("kl_mean", 0) for c in run.cases) < 1.0


def test_unmodified_float32_copy_passes(spec_file):
    run = _check(spec_file, "fp32-copy")
    assert run.status == "pass", [(c.id, c.failures()) for c in run.cases]
    assert run.tolerance_class == "float32"
    # the golden names the GGUF file; a converted folder is another artifact (another
    # fingerprint) with the same numbers: labelled cross-model, never self-check
    assert run.comparison == "cross-model"
    for case in run.cases:
        assert _status(case, "decode").status == "pass"
        assert _status(case, "consistency").status == "pass"
        assert _status(case, "decode").metrics["max_abs_dlogprob"] < 5e-3


def test_inconsistent_reference_is_not_recorded(candidates, tmp_path):
    """A reference whose own decode path disagrees with its one-pass forward is refused
    as a golden (exit 1), unless --allow-inconsistent-reference, which the golden records."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
specengine: 1
name: smollm2-badref
model: {{path: {json.dumps(str(candidates["position"]))}, trust_remote_code: true}}
defaults: {{max_new_tokens: 8}}
cases:
  - id: capital-fr
    prompt: "The capital of France is"
""")
    gdir = tmp_path / "golden"
    res = cli("record-golden", spec, "--golden-dir", gdir)
    assert res.rc == 1, res.text
    assert "Traceback" not in res.text
    assert "disagrees with itself" in res.err and "--allow-inconsistent-reference" in res.err
    assert not (gdir / "smollm2-badref" / "cpu.json").exists()
    res = cli("record-golden", spec, "--golden-dir", gdir, "--allow-inconsistent-reference")
    assert res.rc == 0, res.text
    golden = json.loads((gdir / "smollm2-badref" / "cpu.json").read_text())
    assert golden["inconsistent_reference"] and "capital-fr" in golden["inconsistent_reference"][0]
    # the golden still loads and verifies (the field is part of its hashed content)
    from specengine.kinds.causal_lm.golden import load_golden

    assert load_golden(gdir / "smollm2-badref" / "cpu.json",
                       "smollm2-badref").inconsistent_reference


def test_localize_decode_path_names_the_layer(spec_file):
    """--path decode: the position bug departs at the first decoder layer (the rope of the
    decode step's query and key); logit noise departs at no layer (after the final norm)."""
    res = cli("localize", spec_file, "--backend", "pos-bug", "--path", "decode", "--case",
              "capital-fr", "--golden-dir", GOLDEN_DIR)
    assert res.rc == 1, res.text
    assert "first flagged layer: layer.0" in res.out, res.out
    assert "decode step" in res.out
    res = cli("localize", spec_file, "--backend", "noise-bug", "--path", "decode", "--case",
              "capital-fr", "--golden-dir", GOLDEN_DIR)
    assert res.rc == 0, res.text
    assert "after the final norm" in res.out, res.out


def test_check_localize_uses_the_decode_path_for_a_decode_failure(spec_file):
    from specengine.run import check_spec, select_cases
    from specengine.spec import load_spec

    spec = load_spec(spec_file)
    run = check_spec(spec, "pos-bug", GOLDEN_DIR, cases=select_cases(spec, ["relativity"]),
                     localize=True)
    loc = run.cases[0].localization
    assert loc and loc.get("mode") == "decode", loc
    assert loc["first_flagged_name"] == "layer.0", loc
