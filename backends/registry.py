"""Backend registry: built-in names, aliases, runtimes as "module:Class", did-you-mean.

Importing this module imports no runtime; `create` imports the module of the runtime it
is asked for and turns a missing runtime into `BackendUnavailable` (exit 3).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Mapping

from specengine.errors import BackendUnavailable, SpecEngineError, UsageError, brief
from specengine.install import install_hint

from specengine.backends.base import Backend, BackendConfig

BUILTINS: dict[str, BackendConfig] = {
    "cpu": BackendConfig("cpu", "torch", "cpu", "float32"),
    "cpu-bf16": BackendConfig("cpu-bf16", "torch", "cpu", "bfloat16"),
    "cuda": BackendConfig("cuda", "torch", "cuda", "bfloat16"),
    "npu": BackendConfig("npu", "torch", "npu", "bfloat16"),
    "onnx": BackendConfig("onnx", "onnx", "cpu", "float32"),
}

ALIASES = {"cpu-fp32": "cpu", "cpu32": "cpu", "bf16": "cpu-bf16", "gpu": "cuda",
           "ascend": "npu", "ort": "onnx", "onnxruntime": "onnx"}

# runtime -> "module:Class", per device family where the runtime needs a thin layer.
# Only the product's own runtimes are here: a spec names a runtime, and naming one must
# never import a module from the current folder or sys.path that the product does not ship.
RUNTIMES = {
    ("torch", "npu"): "specengine.backends.torch.npu:NpuBackend",
    ("torch", None): "specengine.backends.torch.backend:TorchBackend",
    ("onnx", None): "specengine.backends.onnx.backend:OnnxBackend",
    ("openai", None): "specengine.backends.openai.backend:OpenAIBackend",
}
# runtime + model kind -> "module:Class" where that kind of model needs its own class
# (an ONNX text encoder or vision tower is exported and run differently from a decoder)
KIND_RUNTIMES = {
    ("onnx", "embedding"): "specengine.backends.onnx.encoder:OnnxEncoderBackend",
}
BUILTIN_RUNTIMES = frozenset(runtime for runtime, _ in RUNTIMES)
_REGISTERED: dict[tuple[str, str | None], str] = {}


def register_runtime(runtime: str, target: str, device_family: str | None = None) -> None:
    """Make `runtime` usable in specs' `backends:` entries, implemented by `target`
    ("module:Class", imported when a backend of that runtime is created).

    This is the extension point for code that embeds specengine (its own test suite, a
    plugin): only a Python caller can register a runtime, never a spec."""
    if runtime in BUILTIN_RUNTIMES:
        raise ValueError(f"runtime '{runtime}' is built in")
    if ":" not in target:
        raise ValueError(f"target {target!r} is not 'module:Class'")
    _REGISTERED[(runtime, device_family)] = target


def unregister_runtime(runtime: str) -> None:
    for key in [k for k in _REGISTERED if k[0] == runtime]:
        del _REGISTERED[key]


def known_runtimes() -> list[str]:
    """The runtimes a spec may name: the built-in ones and those registered."""
    return sorted(BUILTIN_RUNTIMES | {runtime for runtime, _ in _REGISTERED})


def _runtime_target(runtime: str, family: str, model_kind: str | None = None) -> str | None:
    if (runtime, model_kind) in KIND_RUNTIMES:
        return KIND_RUNTIMES[(runtime, model_kind)]
    table = {**_REGISTERED, **RUNTIMES}
    return table.get((runtime, family)) or table.get((runtime, None))


def known_names(extra: Mapping[str, object] | None = None) -> list[str]:
    return sorted(set(BUILTINS) | set(extra or {}))


def resolve_name(name: str, extra: Mapping[str, object] | None = None) -> str:
    """Canonical backend name, or UsageError with a did-you-mean suggestion."""
    names = known_names(extra)
    if name in names:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise UsageError(unknown_message(name, names))


def unknown_message(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names + list(ALIASES), n=1, cutoff=0.5)
    hint = f"; did you mean '{ALIASES.get(close[0], close[0])}'?" if close else ""
    return f"unknown backend '{name}' (known: {', '.join(names)}){hint}"


def config_for(name: str, spec_backends: Mapping[str, BackendConfig] | None = None) -> BackendConfig:
    """The BackendConfig of a (canonical or alias) name; spec entries override built-ins."""
    name = resolve_name(name, spec_backends)
    if spec_backends and name in spec_backends:
        return spec_backends[name]
    return BUILTINS[name]


def backend_class(config: BackendConfig, model_kind: str | None = None) -> type[Backend]:
    """The class that runs `config` (for a model of `model_kind`, where that matters)."""
    family = config.device.split(":")[0]
    target = _runtime_target(config.runtime, family, model_kind)
    if target is None:
        raise UsageError(f"backend '{config.name}': unknown runtime '{config.runtime}' "
                         f"(known: {', '.join(known_runtimes())})")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise BackendUnavailable(
            f"backend '{config.name}' needs the {config.runtime} runtime, which is not "
            f"installed ({missing} missing): {install_hint(_extra(config))}"
        ) from None
    except Exception as exc:  # a runtime that fails while importing (a driver, a plugin)
        raise BackendUnavailable(f"backend '{config.name}' could not start: importing "
                                 f"{module_name} failed: {type(exc).__name__}: "
                                 f"{brief(exc)}") from None
    return getattr(module, class_name)


def create(config: BackendConfig, model_kind: str | None = None) -> Backend:
    """Instantiate a backend; its constructor checks that the device exists (exit 3).

    A constructor that fails in any other way (a driver error, a broken runtime) is a
    backend that cannot start: exit 3 with its message, not a traceback."""
    cls = backend_class(config, model_kind)
    try:
        return cls(config)
    except SpecEngineError:
        raise
    except Exception as exc:
        raise BackendUnavailable(f"backend '{config.name}' ({config.runtime} on "
                                 f"{config.device}) could not start: {type(exc).__name__}: "
                                 f"{brief(exc)}") from None


def _extra(config: BackendConfig) -> str:
    if config.device.startswith("npu"):
        return "npu"
    return {"onnx": "onnx"}.get(config.runtime, "torch")
