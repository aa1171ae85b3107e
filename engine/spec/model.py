"""What a loaded spec is: the spec, its model source, and each kind's cases and tolerances.

Plain dataclasses; building them from YAML is `spec.load` with one builder per kind
(`spec.causal_lm`, `spec.embedding`, `spec.ops`). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from specengine.backends.base import BackendConfig
from specengine.compare.limits import LimitSource, Limits
from specengine.compare.tolerances import DEFAULTS, EMBEDDING_DEFAULTS, OP_DEFAULTS
from specengine.spec.long_prompt import Recipe
from specengine.spec.ops_catalog import OPS
from specengine.spec.yamlio import Located

MAX_SPEC_BYTES = 8 * 1024 * 1024
OUTPUTS = ("pooled", "last_hidden_state")   # what an embedding case compares


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


class Limited:
    """A case judged by class-keyed limits: `limit_source` holds what the spec and the
    case write per numeric class; `limits(klass)` resolves them over the kind's class
    defaults (`DEFAULTS_BY_CLASS`), with a backend's own blocks and the reference's
    measured noise where given."""

    DEFAULTS_BY_CLASS: dict = DEFAULTS
    limit_source: LimitSource

    def limits(self, klass: str, noise: dict | None = None,
               backend: tuple[str, dict] | None = None, absolute_only: bool = False) -> Limits:
        source = self.limit_source
        if backend is not None:
            source = source.with_layer(f"backend '{backend[0]}'", backend[1], before_last=True)
        return source.resolve(klass, self.DEFAULTS_BY_CLASS[klass], noise, absolute_only)


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



# -- causal-lm ----------------------------------------------------------------------------

@dataclass
class Case(Limited):
    id: str
    prompt: str | None
    messages: list[dict] | None
    expect: dict
    tags: tuple[str, ...]
    max_new_tokens: int
    top_k: int
    determinism: Determinism
    chat_template_kwargs: dict
    line: int = 0
    # the spec's and the case's own class-keyed limits (compare.limits)
    limit_source: LimitSource = LimitSource()
    recipe: Recipe | None = None                # a long prompt made by recipe (long_prompt)
    sweep_of: str | None = None       # the spec entry a length-sweep sub-case came from

    def settings(self) -> dict:
        """What generation depends on (part of the golden's staleness hash)."""
        out = {"max_new_tokens": self.max_new_tokens, "top_k": self.top_k,
               "chat_template_kwargs": self.chat_template_kwargs}
        if self.recipe is not None:
            out["prompt_recipe"] = self.recipe.as_dict()
        return out



# -- embedding ----------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingSettings:
    pooling: str = "auto"
    normalize: Any = "auto"
    outputs: tuple[str, ...] = OUTPUTS
    max_length: int | None = None
    image_size: int | None = None

    @classmethod
    def from_dict(cls, data: dict | None) -> "EmbeddingSettings":
        data = dict(data or {})
        if "outputs" in data:
            data["outputs"] = tuple(o for o in OUTPUTS if o in data["outputs"])
        return cls(**data)

    def hashed(self) -> dict:
        return {"pooling": self.pooling, "normalize": self.normalize,
                "outputs": list(self.outputs), "max_length": self.max_length,
                "image_size": self.image_size}


@dataclass
class EmbeddingCase(Limited):
    DEFAULTS_BY_CLASS = EMBEDDING_DEFAULTS
    id: str
    texts: list[str] | None
    images: list[str] | None              # expanded paths
    images_written: list[str] | None      # as written in the spec
    synthetic: dict | None                # {count, seed}
    tags: tuple[str, ...]
    determinism: Determinism
    line: int = 0
    limit_source: LimitSource = LimitSource()

    def describe(self) -> str:
        if self.texts is not None:
            return "\n".join(self.texts)
        if self.images is not None:
            return "images: " + ", ".join(self.images_written or [])
        return (f"{self.synthetic['count']} synthetic image(s), seed "
                f"{self.synthetic.get('seed', 0)}")


# -- ops -----------------------------------------------------------------------------------

@dataclass
class OpCase(Limited):
    DEFAULTS_BY_CLASS = OP_DEFAULTS
    id: str
    op: str
    dims: dict
    params: dict
    dtype: str | None
    seed: int
    tags: tuple[str, ...]
    determinism: Determinism
    description: str = ""
    line: int = 0
    limit_source: LimitSource = LimitSource()

    def settings(self) -> dict:
        return {"op": self.op, "dims": self.dims, "params": self.params, "dtype": self.dtype,
                "seed": self.seed}

    def describe(self, dtype: str) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        text = f"{self.op} ({OPS[self.op].summary}); shape {dims}"
        text += f"; {params}" if params else ""
        text += f"; {dtype}; seed {self.seed}"
        return text + (f"\n{self.description}" if self.description else "")


AnyCase = Union[Case, EmbeddingCase, OpCase]
KindSettings = Union[EmbeddingSettings, dict, None]   # embedding: EmbeddingSettings; ops: {seed}


@dataclass
class Spec:
    path: Path
    name: str
    description: str
    model: ModelSpec
    reference: str
    backends: dict[str, BackendConfig]
    backend_models: dict[str, ModelSpec]
    cases: list[AnyCase]
    perf: dict | None
    timeout_s: float | None
    located: Located | None = field(repr=False, default=None)
    kind: str = "causal-lm"           # causal-lm | embedding | ops (spec.keys)
    settings: KindSettings = None     # kind-specific: EmbeddingSettings, ops defaults
    distribution: dict | None = None  # causal-lm: whole-spec distribution limits
    # class-keyed limits a backend writes for comparisons with it as the candidate
    backend_tolerances: dict[str, dict] = field(default_factory=dict)

    def limits(self, case: AnyCase, klass: str, backend: str | None = None,
               noise: dict | None = None, absolute_only: bool = False) -> Limits:
        """The limits `case` is judged by in a `klass` comparison with `backend` as the
        candidate (its own tolerance blocks apply), given the reference's noise."""
        blocks = self.backend_tolerances.get(backend) if backend else None
        return case.limits(klass, noise, (backend, blocks) if blocks else None, absolute_only)

    def case(self, case_id: str) -> Case:
        for case in self.cases:
            if case.id == case_id:
                return case
        raise KeyError(case_id)


def check_unique_id(located: Located, section: str, index: int, seen: dict[str, int],
                    what: str = "case") -> str:
    """The id of entry `index` of `section` (cases / ops), refused with file:line:col when
    an earlier entry has it; `seen` maps each id to its first index."""
    cid = located.data[section][index]["id"]
    if cid in seen:
        raise located.error((section, index, "id"),
                            f"duplicate {what} id '{cid}' (first at {what} {seen[cid] + 1})")
    seen[cid] = index
    return cid
