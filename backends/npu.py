"""The NPU backend: the torch backend with torch_npu imported and device `npu`.

Only what is NPU-specific lives here: the import, the device check, synchronize, memory
statistics and the deterministic switches. Everything else is the torch backend, which
the CPU and CUDA runs exercise.
"""

from __future__ import annotations

import os

from specengine.errors import BackendUnavailable

from .torch_backend import TorchBackend


class NpuBackend(TorchBackend):
    def prepare_device(self) -> None:
        try:
            import torch_npu  # noqa: F401  (registers the npu device with torch)
        except ImportError:
            raise BackendUnavailable(
                f"backend '{self.name}' needs torch_npu, which is not installed: install "
                f"the torch-npu release matching torch {self.torch.__version__} and the "
                "Ascend CANN toolkit (pip install 'specengine[npu]')") from None
        except Exception as exc:  # CANN libraries missing, driver mismatch, ...
            raise BackendUnavailable(f"backend '{self.name}': torch_npu failed to load: "
                                     f"{' '.join(str(exc).split())[:200]}") from None
        if not self.torch.npu.is_available():
            raise BackendUnavailable(f"backend '{self.name}': torch_npu is installed but no "
                                     "NPU is available")
        self.apply_determinism()

    def apply_determinism(self) -> None:
        super().apply_determinism()
        # Documented switches for reproducible results on Ascend: deterministic HCCL
        # collectives and no online operator compilation (binary kernels).
        os.environ.setdefault("HCCL_DETERMINISTIC", "true")
        self.settings["HCCL_DETERMINISTIC"] = os.environ["HCCL_DETERMINISTIC"]
        self.torch.npu.set_compile_mode(jit_compile=False)
        self.settings["npu.jit_compile"] = "False"

    def synchronize(self) -> None:
        self.torch.npu.synchronize()

    def device_name(self) -> str:
        return self.torch.npu.get_device_name(self.config.device)

    def peak_memory_bytes(self) -> int | None:
        return int(self.torch.npu.max_memory_allocated(self.config.device))

    def reset_peak_memory(self) -> None:
        self.torch.npu.reset_peak_memory_stats(self.config.device)

    def extra_versions(self) -> dict[str, str]:
        import torch_npu

        return {"torch_npu": getattr(torch_npu, "__version__", "unknown")}

    def close(self) -> None:
        self.model = None
        self.torch.npu.empty_cache()
