"""One torch device behind one small interface: the accelerator layer of the torch runtime.

A `TorchDevice` is a device string (`cpu`, `cuda`, `cuda:1`, `npu:0`, `xpu`, `mps`) seen
through the torch module that runs it. Everything the torch backend needs from an
accelerator goes through it, with one code path for every family: the availability check,
synchronize, the allocator's peak memory and its reset, the cache release, the device name
and the deterministic switches.

Each call goes first to `torch.accelerator` (torch's device-generic API) when the device's
family is the current accelerator and that API has the call, and otherwise to the family's
own device module (`torch.cuda`, `torch.npu` once `torch_npu` is imported, `torch.xpu`,
`torch.mps`). A call neither offers is a no-op (synchronize, reset, cache release) or an
unknown value (None), never an error. The host (`cpu`) has no allocator statistics: its
peak is the process's peak resident set size.

The torch module is passed in, so tests drive every branch with a fake one.
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable

from specengine.backends.host import cpu_name, host_peak_rss
from specengine.errors import BackendUnavailable

#: device families the torch runtime runs (npu only once torch_npu has registered it)
FAMILIES = ("cpu", "cuda", "npu", "xpu", "mps")

#: cuBLAS needs a fixed workspace for reproducible GEMMs under deterministic algorithms
CUBLAS_WORKSPACE = ":4096:8"


class TorchDevice:
    """A device string and the torch module that runs it (see the module docstring)."""

    def __init__(self, torch: Any, device: str):
        self.torch = torch
        self.device = device
        family, _, index = device.partition(":")
        self.family = family
        self.index = int(index) if index.isdigit() else None
        self.module = None if family == "cpu" else getattr(torch, family, None)

    @property
    def is_host(self) -> bool:
        return self.family == "cpu"

    # -- which API answers ------------------------------------------------------------
    def _generic(self) -> Any:
        """`torch.accelerator` when this device's family is the current accelerator."""
        acc = getattr(self.torch, "accelerator", None)
        if acc is None or self.is_host:
            return None
        try:
            current = acc.current_accelerator()
        except Exception:   # noqa: BLE001  an accelerator API that cannot answer
            return None
        return acc if current is not None and getattr(current, "type", None) == self.family else None

    def _find(self, name: str) -> tuple[Callable | None, str]:
        """The function `name` and where it comes from ("torch.accelerator", "torch.cuda")."""
        generic = self._generic()
        if generic is not None:
            fn = getattr(generic, name, None) or getattr(getattr(generic, "memory", None), name, None)
            if callable(fn):
                return fn, "torch.accelerator"
        fn = getattr(self.module, name, None) if self.module is not None else None
        if callable(fn):
            return fn, f"torch.{self.family}"
        return None, ""

    def _target(self) -> Any:
        """What the per-device calls take: the index when one was given, else the string."""
        return self.device if self.index is None else f"{self.family}:{self.index}"

    # -- availability -----------------------------------------------------------------
    def check_available(self, backend: str) -> None:
        """BackendUnavailable (exit 3) unless torch can run on this device."""
        torch = self.torch
        if self.family not in FAMILIES:
            raise BackendUnavailable(f"backend '{backend}': device '{self.device}' is not "
                                     f"supported by the torch runtime (families: "
                                     f"{', '.join(FAMILIES)})")
        if self.is_host:
            return
        version = getattr(torch, "__version__", "?")
        if self.module is None or not _call_bool(getattr(self.module, "is_available", None)):
            if self.family == "cuda":
                cuda = getattr(getattr(torch, "version", None), "cuda", None)
                raise BackendUnavailable(
                    f"backend '{backend}': no CUDA device is visible to torch {version} "
                    f"(CUDA build: {cuda or 'no'})")
            raise BackendUnavailable(f"backend '{backend}': no {self.family} device is "
                                     f"visible to torch {version}")
        count = self.device_count()
        if self.index is not None and count is not None and self.index >= count:
            raise BackendUnavailable(f"backend '{backend}': device '{self.device}' requested "
                                     f"but torch sees {count} {self.family} device(s)")

    def device_count(self) -> int | None:
        fn = getattr(self.module, "device_count", None) if self.module is not None else None
        try:
            return int(fn()) if callable(fn) else None
        except Exception:   # noqa: BLE001
            return None

    # -- the calls --------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until every queued kernel on the device has finished (host: nothing)."""
        if self.is_host:
            return
        fn, _ = self._find("synchronize")
        if fn is not None:
            fn(self._target())

    def name(self) -> str:
        """The device's marketing name (e.g. 'NVIDIA H200'), or the CPU model on the host."""
        if self.is_host:
            return cpu_name()
        fn = getattr(self.module, "get_device_name", None) if self.module is not None else None
        if callable(fn):
            try:
                return str(fn(self._target()))
            except Exception:   # noqa: BLE001  a name is descriptive, never fatal
                pass
        return f"{self.family} ({platform.machine()})"

    def peak_memory_bytes(self) -> int | None:
        """The allocator's peak since the last reset; the host's peak RSS on the CPU."""
        if self.is_host:
            return host_peak_rss()
        fn, _ = self._find("max_memory_allocated")
        if fn is None:
            return None
        try:
            return int(fn(self._target()))
        except (RuntimeError, NotImplementedError, TypeError):
            return None

    def reset_peak_memory(self) -> None:
        if self.is_host:
            return
        fn, _ = self._find("reset_peak_memory_stats")
        if fn is not None:
            try:
                fn(self._target())
            except (RuntimeError, NotImplementedError, TypeError):
                pass

    def peak_memory_source(self) -> str:
        """Where the peak comes from, for reports: the API call, or why there is none."""
        if self.is_host:
            return "host peak RSS"
        _, where = self._find("max_memory_allocated")
        return f"{where}.max_memory_allocated" if where else f"none ({self.family} has no allocator peak)"

    def empty_cache(self) -> None:
        """Give the allocator's cached blocks back to the device (host: nothing)."""
        if self.is_host:
            return
        fn, _ = self._find("empty_cache")
        if fn is not None:
            fn()

    def apply_determinism(self) -> dict[str, str]:
        """Switch torch to reproducible kernels for this device; the settings in force.

        Everywhere: deterministic algorithms (warn-only, so an op without a deterministic
        kernel still runs and says so). CUDA: no cuDNN autotuning, deterministic cuDNN,
        IEEE float32 matmuls (no TF32) and a fixed cuBLAS workspace (CUBLAS_WORKSPACE_CONFIG,
        kept when the user set it). Family-specific switches beyond these (the NPU's) are
        the NPU layer's."""
        torch = self.torch
        settings: dict[str, str] = {}
        torch.use_deterministic_algorithms(True, warn_only=True)
        settings["torch.use_deterministic_algorithms"] = "True (warn_only)"
        if self.family == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            settings["CUBLAS_WORKSPACE_CONFIG"] = os.environ["CUBLAS_WORKSPACE_CONFIG"]
            cudnn = torch.backends.cudnn
            cudnn.benchmark = False
            cudnn.deterministic = True
            settings["cudnn.benchmark"] = "False"
            settings["cudnn.deterministic"] = "True"
            matmul = torch.backends.cuda.matmul
            if hasattr(matmul, "fp32_precision"):      # torch >= 2.9
                matmul.fp32_precision = "ieee"
                settings["cuda.matmul.fp32_precision"] = "ieee"
            else:
                matmul.allow_tf32 = False
                settings["cuda.matmul.allow_tf32"] = "False"
            reduced = getattr(matmul, "allow_bf16_reduced_precision_reduction", None)
            if reduced is not None:
                settings["cuda.matmul.allow_bf16_reduced_precision_reduction"] = str(bool(reduced))
        return settings


def _call_bool(fn) -> bool:
    try:
        return bool(fn()) if callable(fn) else False
    except Exception:   # noqa: BLE001  a broken driver reads as "not available"
        return False
