"""Specs: load (safe YAML), validate (JSON Schema + semantic checks), resolve defaults.

Nothing here imports torch, transformers or onnxruntime.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from specengine.errors import SpecError
from specengine.interp import MissingVariable, expand, variables
from specengine.compare.tolerances import Tolerance, ToleranceSource
from specengine.spec.checks import check_numbers
from specengine.spec.yamlio import Located, load_yaml

MAX_SPEC_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Determinism:
    runs: int = 2
    atol: float = 0.0
    batch_sizes: tuple[int, ...] = ()
    batch_atol: float = 1e-4

    def merged(self, override: dict | None) -> "Determinism":
        if not override:
            return self
        values = dict(self.__dict__)
        values.update(override)
        values["batch_sizes"] = tuple(values["batch_sizes"])
        return Determinism(**values)


@dataclass
class ModelSpec:
    """A model source as written in the spec, with paths expanded."""

    source: str                       # path | gguf | synthetic
    path: str | None = None           # expanded folder (path and gguf sources)
    file: str | None = None           # gguf file name
    synthetic: dict | None = None     # model_type, config, seed, init_std
    tokenizer: str | None = None
    kind: str = "causal-lm"
    trust_remote_code: bool = False
    use_builtin_class: bool = False   # a folder ships its own code; load the library's class
    device_map: Any = None
    max_memory: dict | None = None
    written: str = ""                 # the path as written, before expansion
    env_vars: tuple[str, ...] = ()    # variables the path reads
    where: str = ""                   # file:line:col of the source in the spec

    def describe(self) -> str:
        if self.source == "synthetic":
            return f"synthetic {self.synthetic.get('model_type')} (seed {self.synthetic.get('seed', 0)})"
        if self.source == "gguf":
            return f"gguf {self.path}/{self.file}"
        return f"path {self.path}"


@dataclass
class Case:
    id: str
    prompt: str | None
    messages: list[dict] | None
    expect: dict
    tags: tuple[str, ...]
    max_new_tokens: int
    top_k: int
    tolerance: Tolerance
    determinism: Determinism
    chat_template_kwargs: dict
    line: int = 0
    # the spec's and the case's own tolerance values, applied over the defaults of the
    # comparison's numeric class (`tolerance` above is them over the half-precision set)
    tolerance_source: ToleranceSource = ToleranceSource()
    recipe: Any = None                # a long prompt made by recipe (long_prompt)
    sweep_of: str | None = None       # the spec entry a length-sweep sub-case came from

    def tolerance_for(self, klass: str) -> Tolerance:
        """The tolerance this case is judged by when the comparison's class is `klass`."""
        return self.tolerance_source.resolve(klass)

    def settings(self) -> dict:
        """What generation depends on (part of the golden's staleness hash)."""
        out = {"max_new_tokens": self.max_new_tokens, "top_k": self.top_k,
               "chat_template_kwargs": self.chat_template_kwargs}
        if self.recipe is not None:
            out["prompt_recipe"] = self.recipe.as_dict()
        return out


@dataclass
class Spec:
    path: Path
    name: str
    description: str
    model: ModelSpec
    reference: str
    backends: dict[str, Any]          # name -> BackendConfig
    backend_models: dict[str, ModelSpec]
    cases: list[Case]
    perf: dict | None
    timeout_s: float | None
    located: Located = field(repr=False, default=None)
    kind: str = "causal-lm"           # causal-lm | embedding | ops (engine/kinds.py)
    settings: Any = None              # kind-specific: EmbeddingSettings, ops defaults
    distribution: dict | None = None  # causal-lm: whole-spec distribution limits

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


@lru_cache(maxsize=None)
def schema(name: str = "spec") -> dict:
    text = resources.files("specengine.schemas").joinpath(f"{name}.schema.json").read_text("utf-8")
    return json.loads(text)


def load_spec(path: str | Path) -> Spec:
    """Read, validate and resolve one spec file. SpecError (exit 2) on any problem."""
    from specengine.fileio import FileRefused, read_limited

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
    return _build(located, Path(file), base_dir or Path(file).parent)


def validate_schema(located: Located) -> None:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    from specengine.spec.checks import check_numbers

    check_numbers(located)
    validator = Draft202012Validator(schema("spec"))
    errors = list(validator.iter_errors(located.data))
    if not errors:
        return
    error = best_match(errors, key=_error_rank)
    raise _schema_error(located, error)


def _error_rank(error) -> tuple:
    # prefer the deepest error; then unknown keys and type errors over oneOf summaries
    return (-len(error.absolute_path), error.validator in ("oneOf", "anyOf"),)


def _schema_error(located: Located, error) -> SpecError:
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
    import difflib

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(options)})"


def _build(located: Located, file: Path, base_dir: Path) -> Spec:
    from specengine.backends.base import BackendConfig
    from specengine.backends.registry import BUILTINS, unknown_message

    from specengine.spec.keys import CAUSAL_LM, check_kind_keys
    from specengine.spec.checks import check_runtime

    data = located.data
    kind = check_kind_keys(located)
    defaults = data.get("defaults", {})
    tol = Tolerance().merged(defaults.get("tolerance") if kind == CAUSAL_LM else None)
    det = Determinism().merged(defaults.get("determinism"))
    model = _model_spec(located, ("model",), data["model"], base_dir) if "model" in data else None

    backends: dict[str, BackendConfig] = {}
    backend_models: dict[str, ModelSpec] = {}
    for name, entry in (data.get("backends") or {}).items():
        check_runtime(located, name, entry["runtime"])
        options = dict(entry.get("options") or {})
        dtype = entry.get("dtype", "float32")
        _check_backend_dtype(located, name, entry["runtime"], dtype)
        quant = dict(entry["quantization"]) if entry.get("quantization") else None
        backends[name] = BackendConfig(name, entry["runtime"], entry.get("device", "cpu"),
                                       dtype, options, quantization=quant)
        if "model" in entry:
            backend_models[name] = _model_spec(located, ("backends", name, "model"),
                                               entry["model"], base_dir)
    names = sorted(set(BUILTINS) | set(backends))

    reference = data.get("reference", "cpu")
    if reference not in names:
        raise located.error(("reference",), unknown_message(reference, names))
    for name in (data.get("perf") or {}).get("budgets", {}) or {}:
        if name not in names:
            raise located.error(("perf", "budgets", name), unknown_message(name, names), key=True)

    if kind != CAUSAL_LM:   # embedding (engine/embedding.py) and ops (engine/ops.py)
        if kind == "ops":
            from specengine.kinds.ops import build_op_cases as build_cases
        else:
            from specengine.kinds.embedding import build_embedding_cases as build_cases
        kind_cases, settings = build_cases(located, data, det, base_dir)
        return Spec(path=file, name=data["name"], description=data.get("description", ""),
                    model=model, reference=reference, backends=backends,
                    backend_models=backend_models, cases=kind_cases, perf=data.get("perf"),
                    timeout_s=defaults.get("timeout_s"), located=located, kind=kind,
                    settings=settings)

    cases: list[Case] = []
    seen: dict[str, int] = {}
    base_new = defaults.get("max_new_tokens", 16)
    base_k = defaults.get("top_k", 10)
    base_kwargs = defaults.get("chat_template_kwargs", {})
    _check_tolerance(located, ("defaults",), tol, base_k)
    for i, entry in enumerate(data["cases"]):
        cid = entry["id"]
        if cid in seen:
            raise located.error(("cases", i, "id"),
                                f"duplicate case id '{cid}' (first at case {seen[cid] + 1})")
        seen[cid] = i
        case_tol = tol.merged(entry.get("tolerance"))
        top_k = entry.get("top_k", base_k)
        _check_tolerance(located, ("cases", i), case_tol, top_k)
        expect = entry.get("expect", {}) or {}
        if "regex" in expect:
            try:
                re.compile(expect["regex"])
            except re.error as exc:
                raise located.error(("cases", i, "expect", "regex"),
                                    f"bad regular expression: {exc}") from None
        common = dict(
            messages=entry.get("messages"),
            expect=expect, tags=tuple(entry.get("tags", ())),
            max_new_tokens=entry.get("max_new_tokens", base_new), top_k=top_k,
            tolerance=case_tol, determinism=det.merged(entry.get("determinism")),
            chat_template_kwargs={**base_kwargs, **entry.get("chat_template_kwargs", {})},
            line=located.where(("cases", i))[0],
            tolerance_source=ToleranceSource.of(defaults.get("tolerance"), entry.get("tolerance")),
        )
        for sub_id, prompt, recipe, length in _prompts_of(located, i, entry, base_dir):
            if sub_id != cid and sub_id in seen:
                raise located.error(("cases", i, "id"), f"sub-case id '{sub_id}' of a length "
                                    "sweep is also the id of another case")
            seen.setdefault(sub_id, i)
            cases.append(Case(id=sub_id, prompt=prompt, recipe=recipe, sweep_of=cid if
                              length is not None else None, **common))

    return Spec(path=file, name=data["name"], description=data.get("description", ""),
                model=model, reference=reference, backends=backends,
                backend_models=backend_models, cases=cases, perf=data.get("perf"),
                timeout_s=defaults.get("timeout_s"), located=located,
                distribution=data.get("distribution"))


def _prompts_of(located: Located, i: int, entry: dict, base_dir: Path) -> list[tuple]:
    """(id, prompt text, long-prompt recipe, sweep length) of each case a spec entry
    makes: one, or one per length of a `lengths` / `around` sweep."""
    from specengine.spec.long_prompt import Recipe, read_text_file, sweep_lengths

    cid = entry["id"]
    if "prompt_file" in entry:
        path = Path(entry["prompt_file"]).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            text = read_text_file(path, "prompt_file")
        except SpecError as exc:
            raise located.error(("cases", i, "prompt_file"), exc.message) from None
        return [(cid, text, None, None)]
    lengths = sweep_lengths(entry)
    if lengths and "long_prompt" not in entry:
        key = "lengths" if "lengths" in entry else "around"
        raise located.error(("cases", i, key), f"a length sweep ({key}) needs long_prompt: "
                            "{tokens, source, seed} to make prompts of those lengths")
    if "long_prompt" not in entry:
        return [(cid, entry.get("prompt"), None, None)]
    lp = entry["long_prompt"]
    source, sha = lp.get("source", "builtin"), ""
    resolved_source = source
    if source != "builtin":
        import hashlib

        path = Path(source).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            sha = hashlib.sha256(read_text_file(path, "long_prompt source").encode()).hexdigest()
        except SpecError as exc:
            raise located.error(("cases", i, "long_prompt", "source"), exc.message) from None
        resolved_source = str(path)
    if not lengths:
        if "tokens" not in lp:
            raise located.error(("cases", i, "long_prompt"), "long_prompt needs tokens: N "
                                "(or the case needs lengths / around)")
        lengths, sweep = [int(lp["tokens"])], False
    else:
        sweep = True
    out = []
    for n in lengths:
        recipe = Recipe(tokens=n, source=resolved_source, seed=int(lp.get("seed", 0)),
                        source_sha256=sha, written=source)
        out.append((f"{cid}-{n}" if sweep else cid, None, recipe, n if sweep else None))
    return out


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


def _check_tolerance(located: Located, path: tuple, tol: Tolerance, top_k: int) -> None:
    if tol.kl_mean_max > tol.kl_max:
        raise located.error(path + ("tolerance", "kl_mean_max"),
                            f"kl_mean_max {tol.kl_mean_max} is larger than kl_max {tol.kl_max}")
    if tol.within_top_k > top_k:
        raise located.error(path + ("tolerance", "divergence", "within_top_k"),
                            f"divergence.within_top_k {tol.within_top_k} exceeds top_k {top_k} "
                            "(the golden only keeps top_k ids per step)")


def _model_spec(located: Located, path: tuple, entry: dict, base_dir: Path) -> ModelSpec:
    line, col = located.where(path)
    where = f"{located.file}:{line}:{col}"
    common = dict(kind=entry.get("kind", "causal-lm"),
                  trust_remote_code=bool(entry.get("trust_remote_code", False)),
                  use_builtin_class=bool(entry.get("use_builtin_class", False)),
                  device_map=entry.get("device_map"), max_memory=entry.get("max_memory"),
                  where=where)
    if "tokenizer" in entry:
        common["tokenizer"] = entry["tokenizer"] if entry["tokenizer"] == "bytes" else \
            _expand_path(located, path + ("tokenizer",), entry["tokenizer"], base_dir)[0]
    if "synthetic" in entry:
        syn = dict(entry["synthetic"])
        syn.setdefault("config", {})
        syn.setdefault("seed", 0)
        common.setdefault("tokenizer", "bytes")
        return ModelSpec(source="synthetic", synthetic=syn, **common)
    if "gguf" in entry:
        written = entry["gguf"]["path"]
        expanded, env_vars = _expand_path(located, path + ("gguf", "path"), written, base_dir)
        return ModelSpec(source="gguf", path=expanded, file=entry["gguf"]["file"],
                         written=written, env_vars=env_vars, **common)
    written = entry["path"]
    expanded, env_vars = _expand_path(located, path + ("path",), written, base_dir)
    return ModelSpec(source="path", path=expanded, written=written, env_vars=env_vars, **common)


def _expand_path(located: Located, path: tuple, written: str, base_dir: Path) -> tuple[str, tuple]:
    try:
        value = expand(written)
    except MissingVariable as exc:
        raise located.error(path, f"environment variable {exc.name} is not set "
                                  f"(used in {written!r}); set it or write ${{{exc.name}:-default}}") from None
    if value.startswith("pkg://"):
        return value, tuple(variables(written))
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    return str(p), tuple(variables(written))


def find_specs(targets: list[str]) -> list[Path]:
    """Expand files and folders (recursively, *.yaml / *.yml) into spec paths."""
    out: list[Path] = []
    for target in targets:
        p = Path(target)
        if p.is_dir():
            found = sorted(list(p.rglob("*.yaml")) + list(p.rglob("*.yml")))
            out.extend(f for f in found if f.is_file())
        else:
            out.append(p)
    return out
