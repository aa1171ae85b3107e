"""Loading a resolved model source into a torch module (shared by the torch backends,
the ONNX exporter and localisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specengine.errors import BackendCrashed, ModelSourceError

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def load_torch_model(resolved, dtype: str = "float32", device: str = "cpu",
                     device_map: Any = None, max_memory: dict | None = None):
    """from_pretrained on the resolved local folder: offline, remote code only when the
    spec opts in, cast to `dtype`, moved to `device` (unless a device_map places it)."""
    from specengine.sources import offline

    offline()
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from specengine.progress import enabled

    if not enabled():
        hf_logging.disable_progress_bar()

    spec = resolved.spec
    factory = AutoModel if spec.kind == "embedding" else AutoModelForCausalLM
    # weights_only: a pickled checkpoint (*.bin) may hold tensors and nothing else
    kwargs: dict[str, Any] = dict(dtype=torch_dtype(dtype), local_files_only=True,
                                  trust_remote_code=bool(spec.trust_remote_code),
                                  weights_only=True)
    device_map = device_map if device_map is not None else spec.device_map
    max_memory = max_memory if max_memory is not None else spec.max_memory
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = {(int(k) if str(k).isdigit() else k): v
                                    for k, v in max_memory.items()}
    try:
        model = factory.from_pretrained(str(resolved.hf_dir), **kwargs)
    except (OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:400]
        if "trust_remote_code" in str(exc):   # the hint may lie past the first 400 chars
            raise ModelSourceError(f"{resolved.hf_dir} needs its own code: set "
                                   f"model.trust_remote_code: true in the spec if you trust it "
                                   f"[{spec.where}]") from None
        raise ModelSourceError(f"cannot load the model from {resolved.hf_dir}: {message}") from None
    except RuntimeError as exc:
        raise BackendCrashed(f"loading the model failed: {' '.join(str(exc).split())[:400]}") from None
    except Exception as exc:
        if type(exc).__name__ != "UnpicklingError":
            raise
        pickled = sorted(p.name for p in Path(resolved.hf_dir).glob("*")
                         if p.suffix in (".bin", ".pt", ".pth")) or ["pickled weights"]
        raise ModelSourceError(f"{resolved.hf_dir}: refusing to load {', '.join(pickled)}: "
                               "the pickle holds Python objects besides tensors, and weights are "
                               "only ever loaded with torch.load(weights_only=True); convert them "
                               f"to safetensors [{spec.where}]") from None
    if device_map is None:
        model = model.to(device)
    model.eval()
    return model


def device_placement(model, requested: Any = None) -> dict[str, str]:
    """Which module went to which device, when the model was placed with a device_map.

    accelerate's `hf_device_map` when the model has one; transformers 5 no longer sets it,
    so for a model loaded with a device_map (`requested`) the placement is read from where
    its parameters and buffers are: one entry per decoder layer (`model.layers.3`) or other
    module (`model.embed_tokens`, `lm_head`), or `{"": device}` when all share one device
    and the map asked for no more detail."""
    placement = getattr(model, "hf_device_map", None) or {}
    if placement or requested is None:
        return {str(k): str(v) for k, v in placement.items()}
    found: dict[str, str] = {}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in tensors:
        parts = name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        key = ".".join(parts[:index + 1] if index is not None else parts[:-1])
        found.setdefault(key, str(tensor.device))
    if len(set(found.values())) == 1 and (not isinstance(requested, dict) or set(requested) == {""}):
        return {"": next(iter(found.values()))}
    return found
