"""The tiny stand-ins of specs/tiny/ (one per model family our first users port):
their committed cpu goldens are reproducible, they pass on cpu-bf16 with their own
tolerances and on onnx (float32 onnxruntime), and a deliberately broken layer (a permuted MoE router, a sign-flipped output
projection) fails their check.

Models are synthetic (seeded, built once into the cache folder: $SPECENGINE_CACHE, else
the default cache). The CLI runs in a subprocess, as a user would run it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REPO, cli, load_json, perturb_model

TINY = REPO / "specs" / "tiny"
GOLDEN = REPO / "golden"

# stand-in -> the broken layer its gate must catch (weight name, how it is broken)
STANDINS = {
    "internlm25-tiny": ("model.layers.1.self_attn.o_proj.weight", "sign"),
    "qwen35-tiny": ("model.layers.1.linear_attn.out_proj.weight", "sign"),
    "intern-s2-tiny": ("model.layers.0.mlp.gate.weight", "permute"),
    "ernie45-tiny": ("model.layers.1.mlp.gate.weight", "permute"),
}
MOE = ["intern-s2-tiny", "ernie45-tiny"]


def spec_path(name: str) -> Path:
    return TINY / f"{name}.yaml"


def model_dir(name: str) -> Path:
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    return resolve(load_spec(spec_path(name)).model).hf_dir


def teacher_forced(case: dict) -> dict:
    return next(c for c in case["checks"] if c["name"] == "teacher-forced")


def break_layer(key: str, how: str):
    def edit(tensors):
        import torch

        assert key in tensors, sorted(tensors)[:8]
        weight = tensors[key]
        if how == "sign":
            tensors[key] = (-weight).contiguous()
        else:   # route every token by another expert's router row
            perm = torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(123))
            assert not torch.equal(perm, torch.arange(weight.shape[0]))
            tensors[key] = weight[perm].contiguous()
    return edit


# One CLI process per step for all four stand-ins (a spec folder or several specs per
# command), so the suite pays torch's import once per step, not once per model.

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    golden = tmp_path_factory.mktemp("recorded")
    # one CPU thread, as the committed goldens were recorded (float32 sums are reduced in
    # another order with more threads, and the comparison here is byte for byte)
    # the committed goldens carry the reference's own float32 and half noise, the
    # yardstick of the stand-ins' relative float32 limits
    result = cli("record-golden", *[spec_path(n) for n in sorted(STANDINS)], "--backend", "cpu",
                 "--noise", "float32", "--noise", "half", "--golden-dir", golden,
                 env={"OMP_NUM_THREADS": "1"})
    assert result.rc == 0, result.text
    return golden


@pytest.fixture(scope="module")
def bf16_runs(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("bf16") / "bf16.json"
    result = cli("check", *[spec_path(n) for n in sorted(STANDINS)], "--backend", "cpu-bf16",
                 "--golden-dir", GOLDEN, "--json", out)
    assert result.rc == 0, result.text
    return {run["spec_name"]: run for run in load_json(out)["runs"]}


@pytest.fixture(scope="module")
def broken_runs(tmp_path_factory) -> tuple[dict[str, dict], str]:
    """Each stand-in with one layer broken (MoE: the router's rows permuted, so tokens go
    to the wrong experts; dense: an output projection sign-flipped), as a spec-defined
    backend `broken` in a copy of its spec."""
    root = tmp_path_factory.mktemp("broken")
    specs = []
    for name, (key, how) in sorted(STANDINS.items()):
        broken = perturb_model(model_dir(name), root / f"{name}-model", break_layer(key, how))
        text = spec_path(name).read_text("utf-8")
        assert "\nreference: cpu\n" in text
        text = text.replace("\nreference: cpu\n", "\nreference: cpu\nbackends:\n  broken: {runtime: "
                            f"torch, device: cpu, dtype: float32, model: {{path: '{broken}'}}}}\n", 1)
        # the repeat check is not what this test is about: one run per case is enough
        text = text.replace("determinism: {runs: 2}", "determinism: {runs: 1}")
        specs.append(root / f"{name}.yaml")
        specs[-1].write_text(text, encoding="utf-8")
    out = root / "broken.json"
    result = cli("check", *specs, "--backend", "broken", "--golden-dir", GOLDEN, "--json", out,
                 "--case", "capital-fr", "--case", "capital-zh")
    assert result.rc == 1, result.text
    return {run["spec_name"]: run for run in load_json(out)["runs"]}, result.out


def _without_noise(data: dict) -> dict:
    """A golden without what its recording host measured about itself: the noise records
    (machine-dependent by nature) and the content hash over them."""
    data = {k: v for k, v in data.items() if k not in ("noise", "content_sha256")}
    data["cases"] = {cid: {k: v for k, v in rec.items() if k != "noise"}
                     for cid, rec in data["cases"].items()}
    return data


def _float_drift(fresh, committed, path: str = "") -> list[str] | None:
    """Where two goldens differ, compared as a recording on another CPU model may differ:
    None when anything but a float differs (ids, text, hashes, keys, lengths); else the
    paths of floats further apart than 1e-4 (sketch norms, kept to 4 significant digits:
    plus one unit in the last) — float32 kernels of another instruction set reduce in
    another order; measured AMD EPYC against Intel Xeon: at most 4e-5."""
    if isinstance(fresh, dict) and isinstance(committed, dict):
        if set(fresh) != set(committed):
            return None
        parts = [_float_drift(fresh[k], committed[k], f"{path}/{k}") for k in fresh]
    elif isinstance(fresh, list) and isinstance(committed, list):
        if len(fresh) != len(committed):
            return None
        parts = [_float_drift(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(fresh, committed))]
    elif isinstance(fresh, float) or isinstance(committed, float):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in (fresh, committed)):
            return None
        digit = 1e-3 * max(abs(fresh), abs(committed)) if "/norms[" in path else 0.0
        far = abs(fresh - committed) > 1e-4 + digit
        return [f"{path}: {committed} -> {fresh}"] if far else []
    else:
        return [] if fresh == committed else None
    if any(p is None for p in parts):
        return None
    return [line for p in parts for line in p]


def test_float_drift_allows_another_cpu_and_nothing_else():
    golden = {"ids": [1, 2], "text": "a", "v": [0.091732, -3.202036], "norms": [30.18]}
    assert _float_drift({**golden, "norms": [30.3]}, golden) == ["/norms[0]: 30.18 -> 30.3"]
    assert _float_drift(golden, golden) == []
    assert _float_drift({**golden, "v": [0.091733, -3.202021], "norms": [30.19]}, golden) == []
    assert _float_drift({**golden, "v": [0.092, -3.202036]}, golden) == ["/v[0]: 0.091732 -> 0.092"]
    assert _float_drift({**golden, "v": [0.091732, -3.21]}, golden) == ["/v[1]: -3.202036 -> -3.21"]
    assert _float_drift({**golden, "ids": [1, 3]}, golden) is None
    assert _float_drift({**golden, "text": "b"}, golden) is None
    assert _float_drift({**golden, "v": [0.091732]}, golden) is None
    assert _float_drift({**golden, "extra": 1}, golden) is None


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_committed_golden_is_reproduced(name, recorded):
    """Recording again (same pinned versions, seeded weights) gives the committed golden:
    byte for byte on the CPU model that recorded it; on another CPU model every id, text
    and hash the same and the floats within one stored digit (float32 kernels of another
    instruction set round differently). The noise the recording host measured is there for
    both classes, on both paths."""
    fresh = load_json(recorded / name / "cpu.json")
    committed = load_json(GOLDEN / name / "cpu.json")
    how = (f"golden/{name}/cpu.json differs from a fresh recording: the synthetic model or the "
           "engine changed; re-record with `specengine record-golden specs/tiny/"
           f"{name}.yaml --backend cpu --noise float32 --noise half --golden-dir golden --update` "
           "with OMP_NUM_THREADS=1 and review the diff")
    host = fresh["recorded_with"]["device_name"]
    if host == committed["recorded_with"]["device_name"]:
        assert _without_noise(fresh) == _without_noise(committed), how
    else:
        fresh["recorded_with"]["device_name"] = committed["recorded_with"]["device_name"]
        drift = _float_drift(_without_noise(fresh), _without_noise(committed))
        assert drift == [], f"{how} (recorded here on {host}): {drift and drift[:5]}"
    for data in (fresh, committed):
        assert set(data["noise"]) == {"float32", "half"}
        for rec in data["cases"].values():
            for klass in ("float32", "half"):
                for path in ("prefill", "decode"):
                    noise = rec["noise"][klass][path]
                    assert 0 <= noise["kl_mean"] <= noise["kl_max"], noise
            # half noise is bf16 rounding, float32 noise a re-run of the same maths
            assert rec["noise"]["float32"]["prefill"]["kl_mean"] < \
                rec["noise"]["half"]["prefill"]["kl_mean"]


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_bf16_passes_with_the_spec_tolerances(name, bf16_runs):
    run = bf16_runs[name]
    assert run["status"] == "pass"
    assert run["comparison"] == "cross-backend"
    assert run["candidate"]["dtype"] == "bfloat16" and run["reference"]["dtype"] == "float32"
    assert len(run["cases"]) == 6
    for case in run["cases"]:
        assert case["status"] == "pass", (case["id"], [c["message"] for c in case["checks"]])
        metrics = teacher_forced(case)["metrics"]
        # bf16 is not free: the comparison saw real differences, within the tolerance
        assert 0 < metrics["kl_mean"] <= metrics["tolerance"]["kl_mean_max"]
        assert next(c for c in case["checks"] if c["name"] == "determinism")["status"] == "pass"


@pytest.mark.parametrize("name", sorted(STANDINS))
def test_a_broken_layer_fails(name, broken_runs):
    """The broken copy fails, and the reports name the failing metrics."""
    runs, terminal = broken_runs
    run = runs[name]
    assert run["status"] == "fail"
    assert run["candidate"]["model_override"] is True
    assert [c["id"] for c in run["cases"]] == ["capital-fr", "capital-zh"]
    for case in run["cases"]:
        assert case["status"] == "fail", case["id"]
        tf = teacher_forced(case)
        assert tf["status"] == "fail"
        assert "KL mean" in tf["message"], tf["message"]
        assert tf["metrics"]["kl_mean"] > 3 * tf["metrics"]["tolerance"]["kl_mean_max"]
    assert "KL mean" in terminal        # the terminal summary names it too


# internlm25-tiny keeps InternLM2.5's dynamic NTK rope scaling, whose data-dependent
# branch the ONNX exporter refuses (exit 3, "export the graph yourself"); the other three
# export and run under onnxruntime.
ONNX = ["ernie45-tiny", "intern-s2-tiny", "qwen35-tiny"]


@pytest.fixture(scope="module")
def onnx_runs(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("onnx") / "onnx.json"
    result = cli("check", *[spec_path(n) for n in ONNX], "--backend", "onnx", "--golden-dir",
                 GOLDEN, "--json", out)
    if result.rc == 3 and "not installed" in result.err:
        pytest.skip(f"onnx backend unavailable: {result.err.strip()}")
    assert result.rc == 0, result.text
    return {run["spec_name"]: run for run in load_json(out)["runs"]}


@pytest.mark.parametrize("name", ONNX)
def test_onnx_passes(name, onnx_runs):
    run = onnx_runs[name]
    assert run["status"] == "pass"
    assert run["comparison"] == "cross-backend" and run["candidate"]["backend"] == "onnx"
    for case in run["cases"]:
        assert case["status"] == "pass", (case["id"], [c["message"] for c in case["checks"]])


def test_moe_standins_keep_the_routing_shape():
    """What makes the MoE families distinct survives the scaling down."""
    from specengine.spec import load_spec

    s2 = load_spec(spec_path("intern-s2-tiny")).model.synthetic["config"]
    assert s2["num_experts"] / s2["num_experts_per_tok"] == 256 / 8
    assert s2["shared_expert_intermediate_size"] > 0
    assert s2["layer_types"] == ["linear_attention"] * 3 + ["full_attention"] + \
        ["linear_attention"] * 3 + ["full_attention"]
    ernie = load_spec(spec_path("ernie45-tiny")).model.synthetic["config"]
    assert ernie["moe_num_experts"] / ernie["moe_k"] == pytest.approx(64 / 6, rel=0.01)
    assert ernie["moe_num_shared_experts"] == 2
    assert ernie["num_attention_heads"] / ernie["num_key_value_heads"] == 20 / 4
    llama = load_spec(spec_path("internlm25-tiny")).model.synthetic["config"]
    assert llama["num_attention_heads"] / llama["num_key_value_heads"] == 32 / 8
    qwen = load_spec(spec_path("qwen35-tiny")).model.synthetic["config"]
    assert qwen["layer_types"] == (["linear_attention"] * 3 + ["full_attention"]) * 2
