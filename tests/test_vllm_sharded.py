"""A real vLLM deployment sharded over processes — tensor parallel 3 (SmolLM2's 9 attention
heads and 3 KV heads split over 3 ranks; 2 would not divide them), the workers talking
over gloo, started with `--distributed-executor-backend mp` — checked against the same
float32 golden as the single-process server: the shape of an ERNIE-4.5 TP8 deployment on
vLLM-Ascend, on 2 CPU cores. A raw and a chat case keep it short (3 ranks on 2 cores are
slow). One server for the module (tests/vllm_server.py)."""

from __future__ import annotations

import pytest

import vllm_server
from helpers import checks_by_case
from vllm_server import check, served_spec

TP = "3"


@pytest.fixture(scope="module")
def server(smollm2_dir, tmp_path_factory):
    yield from vllm_server.module_server(smollm2_dir, tmp_path_factory,
                                         "--tensor-parallel-size", TP,
                                         "--distributed-executor-backend", "mp")


def test_tensor_parallel_3_passes_against_the_same_golden(server, tmp_path):
    assert server.facts().get("world_size") == TP, server.tail()
    spec = served_spec(tmp_path / "vllm.yaml", server.base_url)
    result, run = check(spec, tmp_path, cases=("capital-fr", "add-chat"))
    assert result.rc == 0, result.text
    assert run["tolerance_class"] == "float32"
    for case, got in checks_by_case(run).items():
        assert all(c["status"] == "pass" for c in got.values()), (case, got)
        assert got["divergence"]["message"] == "identical greedy tokens"
        # the all-reduce over ranks changes summation order: still float32 noise
        assert got["teacher-forced"]["metrics"]["kl_mean"] < 1e-4
        assert got["determinism"]["status"] == "pass"
