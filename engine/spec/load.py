"""Loading a spec: read the file (size-limited, UTF-8), parse YAML safely with positions,
validate against the JSON Schema and the kind's keys, then build the Spec with the kind's
case builder (one table, `BUILDERS`)."""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from specengine.backends.base import BackendConfig
from specengine.backends.registry import BUILTINS, unknown_message
from specengine.errors import SpecError
from specengine.files import FileRefused, read_limited
from specengine.spec import causal_lm, embedding, ops
from specengine.spec.checks import check_numbers, check_runtime, class_block_errors
from specengine.spec.keys import CAUSAL_LM, EMBEDDING, OPS, check_kind_keys
from specengine.spec.model import MAX_SPEC_BYTES, Determinism, ModelSpec, Spec
from specengine.spec.paths import model_spec
from specengine.spec.yamlio import Located, load_yaml

# kind -> (located, data, determinism, base dir) -> (cases, kind settings)
BUILDERS: dict[str, Callable] = {CAUSAL_LM: causal_lm.build_cases,
                                 EMBEDDING: embedding.build_cases, OPS: ops.build_cases}


@lru_cache(maxsize=None)
def schema(name: str = "spec") -> dict:
    text = resources.files("specengine.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def load_spec(path: str | Path) -> Spec:
    """Read, validate and resolve one spec file. SpecError (exit 2) on any problem."""
    path = Path(path)
    shown = str(path)
    try:
        raw = read_limited(path, MAX_SPEC_BYTES, "spec")
    except FileNotFoundError:
        raise SpecError("no such spec file", shown) from None
    except FileRefused as exc:
        raise SpecError(str(exc), shown) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec is not UTF-8 (byte {exc.start})", shown, 1, 1) from None
    return parse_spec(text, shown, base_dir=path.parent)



def parse_spec(text: str, file: str, base_dir: Path | None = None) -> Spec:
    located = load_yaml(text, file)
    validate_schema(located)
    return build_spec(located, Path(file), base_dir or Path(file).parent)


def validate_schema(located: Located) -> None:
    """SpecError for the first schema error in the file (by position): the same message
    `specengine validate` prints first, so every command words one error one way."""
    check_numbers(located)
    errors = schema_errors(located)
    if errors:
        raise errors[0]


def schema_errors(located: Located) -> list[SpecError]:
    """Every schema error of a document, one per place (the most specific reason at
    each), in file order."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    flat = class_block_errors(located)   # a flat tolerance block: the one thing to fix
    if flat:
        return flat
    validator = Draft202012Validator(schema("spec"))
    out, seen = [], set()
    for error in validator.iter_errors(located.data):
        where = tuple(error.absolute_path)
        if where in seen:
            continue
        seen.add(where)
        out.append(schema_error(located, best_match([error], key=error_rank)))
    return sorted(out, key=lambda e: (e.line or 0, e.col or 0))


def error_rank(error) -> tuple:
    # prefer the deepest error; then unknown keys and type errors over oneOf summaries
    return (-len(error.absolute_path), error.validator in ("oneOf", "anyOf"),)


def schema_error(located: Located, error) -> SpecError:
    path = tuple(error.absolute_path)
    where = "/".join(str(p) for p in path) or "the spec"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in allowed]
        if extra:
            key = extra[0]
            hint = _did_you_mean(key, sorted(allowed))
            return located.error(path + (key,), f"unknown key '{key}' in {where}{hint}", key=True)
    if error.validator == "oneOf" and path and path[-1] == "model" or (
            error.validator == "oneOf" and "synthetic" in error.schema.get("properties", {})):
        return located.error(path, f"{where}: give exactly one of path, gguf, synthetic")
    if error.validator == "oneOf" and "messages" in error.schema.get("properties", {}):
        return located.error(path, f"{where}: a case needs exactly one of prompt, messages, "
                                   "prompt_file, long_prompt (causal-lm) or texts, images, "
                                   "synthetic_images (embedding)")
    if error.validator == "oneOf" and not path and isinstance(error.instance, dict):
        if "ops" in error.instance:
            return located.error(("ops",), "an operator spec (ops:) has no model or cases",
                                 key=True)
        missing = [k for k in ("model", "cases") if k not in error.instance]
        return located.error(path, f"the spec: '{missing[0]}' is a required property (a model "
                                   "spec needs model and cases; an operator spec needs ops)")
    if error.validator == "oneOf" and error.context and not isinstance(error.instance, dict):
        # a limit is a number or {noise: K}: a bad number is told by the number's rule
        branch = next((e for e in error.context
                       if e.schema.get("type") in ("number", "integer")), None)
        if branch is not None and isinstance(error.instance, (int, float)):
            return located.error(path, f"{where}: {branch.message}")
    if error.validator == "required":
        return located.error(path, f"{where}: {error.message}")
    if error.validator == "pattern" and path and path[-1] in ("name", "id"):
        return located.error(path, f"{where}: {error.instance!r} is not a valid name "
                                   "(letters, digits, '.', '_' and '-' only; no '/', no '..')")
    if error.validator == "propertyNames":
        return located.error(path, f"{where}: {error.message}")
    message = error.message
    if len(message) > 200:
        message = message[:200] + "…"
    return located.error(path, f"{where}: {message}")



def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(options)})"


def build_spec(located: Located, file: Path, base_dir: Path) -> Spec:
    data = located.data
    kind = check_kind_keys(located)
    defaults = data.get("defaults", {})
    det = Determinism().merged(defaults.get("determinism"))
    model = model_spec(located, ("model",), data["model"], base_dir) if "model" in data else None

    backends: dict[str, BackendConfig] = {}
    backend_models: dict[str, ModelSpec] = {}
    backend_tolerances: dict[str, dict] = {}
    for name, entry in (data.get("backends") or {}).items():
        if entry.get("tolerance"):
            backend_tolerances[name] = dict(entry["tolerance"])
        check_runtime(located, name, entry["runtime"])
        options = dict(entry.get("options") or {})
        dtype = entry.get("dtype", "float32")
        _check_backend_dtype(located, name, entry["runtime"], dtype)
        quant = dict(entry["quantization"]) if entry.get("quantization") else None
        backends[name] = BackendConfig(name, entry["runtime"], entry.get("device", "cpu"),
                                       dtype, options, quantization=quant)
        if "model" in entry:
            backend_models[name] = model_spec(located, ("backends", name, "model"),
                                               entry["model"], base_dir)
    names = sorted(set(BUILTINS) | set(backends))

    reference = data.get("reference", "cpu")
    if reference not in names:
        raise located.error(("reference",), unknown_message(reference, names))
    for name in (data.get("perf") or {}).get("budgets", {}) or {}:
        if name not in names:
            raise located.error(("perf", "budgets", name), unknown_message(name, names), key=True)

    cases, settings = BUILDERS[kind](located, data, det, base_dir)
    return Spec(path=file, name=data["name"], description=data.get("description", ""),
                model=model, reference=reference, backends=backends,
                backend_models=backend_models, cases=cases, perf=data.get("perf"),
                timeout_s=defaults.get("timeout_s"), located=located, kind=kind,
                settings=settings, distribution=data.get("distribution"),
                backend_tolerances=backend_tolerances)


FLOAT_DTYPES = ("float32", "bfloat16", "float16")
FLOAT_RUNTIMES = ("torch", "onnx")   # compute in floating point: no quantized dtype


def _check_backend_dtype(located: Located, name: str, runtime: str, dtype: str) -> None:
    """A runtime that computes in floating point cannot be given a quantized dtype."""
    if runtime in FLOAT_RUNTIMES and dtype not in FLOAT_DTYPES:
        raise located.error(("backends", name, "dtype"),
                            f"backends/{name}: the {runtime} runtime computes in "
                            f"{', '.join(FLOAT_DTYPES)}, not '{dtype}'; a quantized dtype "
                            "names a served (openai) deployment — for fake-quantized weights "
                            "keep a float dtype and declare quantization: {weights: ...}")


