"""Loading a resolved model source into a torch module (shared by the torch backends,
the ONNX exporter and localisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specengine.errors import BackendCrashed, BackendUnavailable, ModelSourceError, brief
from specengine.files import offline

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}

# the first transformers release that knows each model type of specengine's own specs
# that not every supported release knows (read from the releases' model registries)
FIRST_RELEASE = {"qwen3_5": "5.2.0", "qwen3_5_text": "5.2.0", "qwen3_5_moe": "5.2.0",
                 "qwen3_5_moe_text": "5.2.0"}


def check_architecture(model_type: str, where: str = "") -> None:
    """BackendUnavailable (exit 3, one line) when the installed transformers does not know
    `model_type`: the runtime here lacks the architecture, and the message names the
    release that has it where that is known."""
    try:
        import transformers
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    except ImportError:
        return
    if not model_type or model_type in CONFIG_MAPPING_NAMES:
        return
    needed = FIRST_RELEASE.get(model_type)
    need = f"transformers >= {needed}" if needed else "a transformers release that knows it"
    raise BackendUnavailable(f"model type '{model_type}' needs {need}; the installed "
                             f"transformers {transformers.__version__} does not know it"
                             + (f" [{where}]" if where else ""))


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def load_torch_model(resolved, dtype: str = "float32", device: str = "cpu",
                     device_map: Any = None, max_memory: dict | None = None):
    """from_pretrained on the resolved local folder: offline, remote code only when the
    spec opts in, cast to `dtype`, moved to `device` (unless a device_map places it)."""

    offline()
    from transformers import AutoModel, AutoModelForCausalLM

    from specengine.progress import silence_library_bars

    silence_library_bars()     # specengine reports progress itself

    spec = resolved.spec
    factory = AutoModel if spec.kind == "embedding" else AutoModelForCausalLM
    refuse_silent_builtin(resolved, factory.__name__)
    if not (spec.trust_remote_code and own_code(resolved.hf_dir)):
        check_architecture(_model_type(resolved.hf_dir), spec.where)
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
        raise BackendCrashed(f"loading the model failed: {brief(exc, 400)}") from None
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


def _model_type(hf_dir: Path) -> str:
    import json

    try:
        config = json.loads((Path(hf_dir) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("model_type") or "") if isinstance(config, dict) else ""


def own_code(hf_dir: Path) -> dict[str, str]:
    """The `auto_map` of a model folder's config.json: which Auto class maps to which of
    the folder's own code (`modeling_x.Class`), or {} when the folder ships none."""
    import json

    try:
        config = json.loads((Path(hf_dir) / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not isinstance(auto_map, dict):
        return {}
    return {str(k): str(v if isinstance(v, str) else v[0]) for k, v in auto_map.items()
            if isinstance(v, (str, list)) and v}


def refuse_silent_builtin(resolved, factory: str) -> None:
    """A folder whose config names its own modeling code is never loaded with the
    library's built-in class without the spec saying so: ModelSourceError (exit 2) naming
    both ways out."""
    spec = resolved.spec
    code = own_code(resolved.hf_dir)
    target = code.get(factory) or (code.get("AutoModel") if factory != "AutoModel" else None)
    if not target or spec.trust_remote_code or getattr(spec, "use_builtin_class", False):
        return
    raise ModelSourceError(
        f"{resolved.hf_dir} needs its own code: its config.json names it ({factory} → "
        f"{target}), and the spec does not say whether to run it: set model.trust_remote_code: true to "
        "run the port's own code, or model.use_builtin_class: true to load the library's "
        f"built-in class for this model type knowingly [{spec.where}]")


def modeling_code(model, resolved) -> dict[str, Any]:
    """Which modeling code ran: the class, its module, and — when the folder ships its own
    code — the sha256 over its .py files and whether that code was the code that ran."""
    import hashlib

    cls = type(model)
    out: dict[str, Any] = {"class": cls.__name__, "module": cls.__module__}
    folder = Path(getattr(resolved, "hf_dir", "") or ".")
    files = sorted(p for p in folder.glob("*.py") if p.is_file())
    if files:
        h = hashlib.sha256()
        for path in files:
            h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        out["folder_code_sha256"] = h.hexdigest()
        out["folder_code_files"] = [p.name for p in files]
        out["folder_code_ran"] = not cls.__module__.startswith("transformers.models.")
    else:
        out["folder_code_sha256"] = None
    return out
