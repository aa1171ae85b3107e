"""The torch runtime's device layer on fakes: every family's branch (cuda through
`torch.accelerator` and through `torch.cuda`, npu, xpu, mps, cpu) runs here without the
device, and the NPU layer runs end to end against a fake `torch_npu`."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from specengine.backends.torch.device import CUBLAS_WORKSPACE, TorchDevice
from specengine.errors import BackendUnavailable


class Recorder:
    """A fake device module (or torch.accelerator): each call is logged with its args."""

    def __init__(self, name: str, log: list, available=True, count=2, peak=12345,
                 omit=(), device_type=None):
        self._name, self._log = name, log
        self._values = {"is_available": available, "device_count": count,
                        "max_memory_allocated": peak,
                        "get_device_name": f"Fake {name.split('.')[-1].upper()} 9000"}
        if device_type is not None:
            self._values["current_accelerator"] = SimpleNamespace(type=device_type)
        self._omit = set(omit)

    def __getattr__(self, attr):
        if attr.startswith("_") or attr in self._omit:
            raise AttributeError(attr)

        def call(*args, **kwargs):
            self._log.append((f"{self._name}.{attr}", args))
            value = self._values.get(attr)
            if isinstance(value, Exception):
                raise value
            return value
        return call


def fake_torch(log, family="cuda", accelerator=True, acc_omit=(), mod_omit=(), **mod):
    matmul = SimpleNamespace(fp32_precision="tf32", allow_bf16_reduced_precision_reduction=True)
    torch = SimpleNamespace(
        __version__="9.9.0", version=SimpleNamespace(cuda="12.8"),
        backends=SimpleNamespace(cudnn=SimpleNamespace(benchmark=True, deterministic=False),
                                 cuda=SimpleNamespace(matmul=matmul)),
        use_deterministic_algorithms=lambda flag, warn_only=False: log.append(
            ("torch.use_deterministic_algorithms", (flag, warn_only))))
    setattr(torch, family, Recorder(f"torch.{family}", log, omit=mod_omit, **mod))
    if accelerator:
        torch.accelerator = Recorder("torch.accelerator", log, omit=acc_omit, device_type=family)
    return torch


def names(log):
    return [name for name, _ in log]


def test_cuda_goes_through_torch_accelerator():
    log = []
    dev = TorchDevice(fake_torch(log), "cuda")
    dev.check_available("cuda")
    dev.synchronize()
    dev.reset_peak_memory()
    assert dev.peak_memory_bytes() == 12345
    dev.empty_cache()
    assert dev.name() == "Fake CUDA 9000"
    assert dev.peak_memory_source() == "torch.accelerator.max_memory_allocated"
    calls = names(log)
    for call in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated", "empty_cache"):
        assert f"torch.accelerator.{call}" in calls and f"torch.cuda.{call}" not in calls
    assert ("torch.accelerator.synchronize", ("cuda",)) in log
    assert "torch.cuda.is_available" in calls and "torch.cuda.get_device_name" in calls


def test_older_torch_falls_back_to_the_device_module():
    """torch.accelerator without the memory calls (torch < 2.9), and no accelerator API."""
    log = []
    dev = TorchDevice(fake_torch(log, acc_omit=("max_memory_allocated", "reset_peak_memory_stats",
                                                "empty_cache", "memory")), "cuda:1")
    assert dev.peak_memory_bytes() == 12345
    dev.reset_peak_memory()
    dev.synchronize()
    assert ("torch.cuda.max_memory_allocated", ("cuda:1",)) in log
    assert ("torch.cuda.reset_peak_memory_stats", ("cuda:1",)) in log
    assert ("torch.accelerator.synchronize", ("cuda:1",)) in log
    assert dev.peak_memory_source() == "torch.cuda.max_memory_allocated"

    log2 = []
    plain = TorchDevice(fake_torch(log2, accelerator=False), "cuda")
    plain.synchronize()
    plain.empty_cache()
    assert names(log2) == ["torch.cuda.synchronize", "torch.cuda.empty_cache"]


@pytest.mark.parametrize("family", ["npu", "xpu"])
def test_npu_and_xpu_share_the_path(family):
    log = []
    torch = fake_torch(log, family=family)
    dev = TorchDevice(torch, f"{family}:1")
    dev.check_available(family)
    dev.synchronize()
    assert dev.peak_memory_bytes() == 12345
    assert dev.name() == f"Fake {family.upper()} 9000"
    assert ("torch.accelerator.synchronize", (f"{family}:1",)) in log
    assert dev.apply_determinism() == {"torch.use_deterministic_algorithms": "True (warn_only)"}
    # another family being the current accelerator: the device module answers
    torch.accelerator = Recorder("torch.accelerator", log, device_type="cuda")
    log.clear()
    dev.synchronize()
    assert [n for n in names(log) if n.endswith("synchronize")] == [f"torch.{family}.synchronize"]


def test_a_family_without_allocator_statistics():
    log = []
    dev = TorchDevice(fake_torch(log, family="mps", accelerator=False,
                                 mod_omit=("max_memory_allocated", "reset_peak_memory_stats",
                                           "get_device_name")), "mps")
    dev.check_available("mps")
    assert dev.peak_memory_bytes() is None
    dev.reset_peak_memory()                      # a no-op, not an error
    assert dev.peak_memory_source().startswith("none (mps")
    assert dev.name().startswith("mps (")


def test_an_allocator_call_that_raises_reads_as_unknown():
    log = []
    torch = fake_torch(log, accelerator=False)
    torch.cuda._values["max_memory_allocated"] = NotImplementedError("no stats")
    assert TorchDevice(torch, "cuda").peak_memory_bytes() is None


def test_unavailable_devices_are_exit_3_with_the_reason():
    log = []
    with pytest.raises(BackendUnavailable, match=r"no CUDA device is visible to torch 9\.9\.0 "
                                                 r"\(CUDA build: 12\.8\)"):
        TorchDevice(fake_torch(log, available=False), "cuda").check_available("cuda")
    with pytest.raises(BackendUnavailable, match="no xpu device is visible"):
        TorchDevice(fake_torch(log, family="xpu", available=False), "xpu").check_available("x")
    broken = fake_torch(log, family="xpu", available=RuntimeError("driver"))
    with pytest.raises(BackendUnavailable, match="no xpu device"):
        TorchDevice(broken, "xpu").check_available("x")
    with pytest.raises(BackendUnavailable, match=r"'cuda:3' requested but torch sees 2 cuda"):
        TorchDevice(fake_torch(log), "cuda:3").check_available("cuda")
    with pytest.raises(BackendUnavailable, match="'tpu' is not supported by the torch runtime"):
        TorchDevice(fake_torch(log), "tpu").check_available("t")
    with pytest.raises(BackendUnavailable, match="no npu device"):   # torch_npu not imported
        TorchDevice(fake_torch(log), "npu").check_available("npu")


def test_cuda_deterministic_switches(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    log = []
    torch = fake_torch(log)
    settings = TorchDevice(torch, "cuda").apply_determinism()
    assert ("torch.use_deterministic_algorithms", (True, True)) in log
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    import os
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert settings["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert settings["cuda.matmul.fp32_precision"] == "ieee"
    assert settings["cuda.matmul.allow_bf16_reduced_precision_reduction"] == "True"
    # a user's own workspace setting is kept; torch < 2.9 gets the legacy TF32 switch
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    legacy = fake_torch(log)
    legacy.backends.cuda.matmul = SimpleNamespace(allow_tf32=True)
    settings = TorchDevice(legacy, "cuda").apply_determinism()
    assert settings["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert legacy.backends.cuda.matmul.allow_tf32 is False
    assert settings["cuda.matmul.allow_tf32"] == "False"


def test_the_host_touches_no_device_module():
    log = []
    dev = TorchDevice(fake_torch(log), "cpu")
    dev.check_available("cpu")
    dev.synchronize()
    dev.reset_peak_memory()
    dev.empty_cache()
    assert dev.peak_memory_bytes() > 0 and dev.name()
    assert dev.peak_memory_source() == "host peak RSS"
    assert "cuda" not in " ".join(names(log))


def test_the_npu_layer_on_a_fake_torch_npu(monkeypatch):
    """NpuBackend is the import plus Ascend's switches; all else is the generic layer."""
    import torch

    from specengine.backends.base import BackendConfig
    from specengine.backends.torch.npu import NpuBackend

    log = []
    npu = Recorder("torch.npu", log)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setitem(sys.modules, "torch_npu", types.SimpleNamespace(__version__="2.13.0.post1"))
    monkeypatch.delenv("HCCL_DETERMINISTIC", raising=False)
    backend = NpuBackend(BackendConfig("npu", "torch", "npu:0", "bfloat16"))
    assert backend.settings["HCCL_DETERMINISTIC"] == "true"
    assert backend.settings["npu.jit_compile"] == "False"
    assert ("torch.npu.set_compile_mode", ()) in [(n, a) for n, a in log]
    backend.synchronize()
    backend.reset_peak_memory()
    assert backend.peak_memory_bytes() == 12345
    assert backend.device_name() == "Fake NPU 9000"
    assert backend.extra_versions() == {"torch_npu": "2.13.0.post1"}
    backend.close()
    calls = names(log)
    for call in ("is_available", "synchronize", "reset_peak_memory_stats",
                 "max_memory_allocated", "empty_cache"):
        assert f"torch.npu.{call}" in calls, calls
    assert ("torch.npu.synchronize", ("npu:0",)) in log


def test_the_npu_layer_without_torch_npu(monkeypatch):
    from specengine.backends.base import BackendConfig
    from specengine.backends.torch.npu import NpuBackend

    monkeypatch.setitem(sys.modules, "torch_npu", None)     # import raises ImportError
    with pytest.raises(BackendUnavailable, match="needs torch_npu, which is not installed"):
        NpuBackend(BackendConfig("npu", "torch", "npu", "bfloat16"))


def test_perf_names_the_allocator_call():
    from specengine.kinds.timing import PeakMemory

    backend = SimpleNamespace(config=SimpleNamespace(device="cuda"),
                              peak_memory_source=lambda: "torch.accelerator.max_memory_allocated",
                              reset_peak_memory=lambda: None, peak_memory_bytes=lambda: 7)
    memory = PeakMemory(backend)
    assert memory.kind == ("device allocator peak (torch.accelerator.max_memory_allocated, "
                           "reset per batch size)")
    memory.reset()
    assert memory.read() == 7
