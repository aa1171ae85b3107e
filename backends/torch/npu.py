"""The NPU backend: the torch backend with torch_npu imported and device `npu`.

Only what is NPU-specific lives here: the import of `torch_npu` (which registers the `npu`
device with torch) and Ascend's own deterministic switches. The availability check,
synchronize, memory statistics, the device name and the cache release are the torch
runtime's device-generic layer, the same code the CPU and CUDA runs exercise.
"""

from __future__ import annotations

import os

from specengine.errors import BackendUnavailable, brief

from specengine.backends.torch.backend import TorchBackend


class NpuBackend(TorchBackend):
    def prepare_device(self) -> None:
        try:
            import torch_npu  # noqa: F401  (registers the npu device with torch)
        except ImportError:
            raise BackendUnavailable(
                f"backend '{self.name}' needs torch_npu, which is not installed: install "
                f"the torch-npu release matching torch {self.torch.__version__} and the "
                "Ascend CANN toolkit (it never changes the torch that is installed)") from None
        except Exception as exc:  # CANN libraries missing, driver mismatch, ...
            raise BackendUnavailable(f"backend '{self.name}': torch_npu failed to load: "
                                     f"{brief(exc, 200)}") from None
        super().prepare_device()

    def apply_determinism(self) -> None:
        super().apply_determinism()
        # Documented switches for reproducible results on Ascend: deterministic HCCL
        # collectives and no online operator compilation (binary kernels).
        os.environ.setdefault("HCCL_DETERMINISTIC", "true")
        self.settings["HCCL_DETERMINISTIC"] = os.environ["HCCL_DETERMINISTIC"]
        self.torch.npu.set_compile_mode(jit_compile=False)
        self.settings["npu.jit_compile"] = "False"

    def extra_versions(self) -> dict[str, str]:
        import torch_npu

        return {"torch_npu": getattr(torch_npu, "__version__", "unknown")}
