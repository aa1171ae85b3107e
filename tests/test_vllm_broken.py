"""A real vLLM serving a broken SmolLM2 — a bug the suite plants in a copy of the
converted folder: RMSNorm's epsilon ×100 in config.json, the kind of config slip a port
makes — checked against the golden of the clean model: every case fails under the float32
class, while the server itself stays greedy (the failure is the model's, not the
sampler's). One server for the module (tests/vllm_server.py)."""

from __future__ import annotations

import json

import pytest

import vllm_server
from helpers import checks_by_case, copy_model
from vllm_server import check, served_spec


def planted_bug(clean, folder):
    """A copy of the clean folder (weights hard-linked) with rms_norm_eps ×100."""
    copy_model(clean, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = config["rms_norm_eps"] * 100
    (folder / "config.json").unlink()            # a hard link: replace, never write into
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    broken = planted_bug(smollm2_dir, tmp_path_factory.mktemp("broken") / "smollm2-eps100")
    assert json.loads((smollm2_dir / "config.json").read_text())["rms_norm_eps"] < 1e-4
    yield from vllm_server.module_server(broken, tmp_path_factory)


def test_a_broken_model_served_by_vllm_fails_every_case(server, tmp_path):
    spec = served_spec(tmp_path / "vllm.yaml", server.base_url, runs=1)
    result, run = check(spec, tmp_path)
    assert result.rc == 1, result.text
    assert run["tolerance_class"] == "float32" and run["status"] == "fail"
    checks = checks_by_case(run)
    assert len(checks) == 6
    for case, got in checks.items():
        assert {c["status"] for c in got.values()} <= {"pass", "fail"}, (case, got)   # no errors
        tf = got["teacher-forced"]
        assert tf["status"] == "fail" and tf["metrics"]["kl_mean"] > 1e-4, (case, tf)
        assert got["greedy"]["status"] == "pass", (case, got["greedy"])
    assert all(c["status"] == "fail" for c in run["cases"])
