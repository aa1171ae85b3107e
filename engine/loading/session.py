"""The one Session: a backend created through the registry and loaded with its model
source, for one spec (every kind), with the spec's tokenizer where the kind has prompts,
and how each causal-lm case turns into prompt ids."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from specengine.backends.base import Backend, BackendConfig
from specengine.backends.registry import config_for, create
from specengine.errors import SpecError
from specengine.files import read_json

from specengine.results import Side
from specengine.loading.sources import ResolvedSource, resolve
from specengine.spec import Case, ModelSpec, Spec
from specengine.loading.tokenizer import Tokenizer, load_tokenizer
from specengine.progress import step
from specengine.spec.long_prompt import build_ids
from specengine.spec.long_prompt import display_text


def model_for(spec: Spec, backend_name: str) -> tuple[ModelSpec, bool]:
    """The model a backend runs: its own `model:` override, else the spec's."""
    if backend_name in spec.backend_models:
        return spec.backend_models[backend_name], True
    return spec.model, False


@dataclass
class Session:
    spec: Spec
    config: BackendConfig
    backend: Backend
    resolved: ResolvedSource | None   # None: a backend without a model (operator specs)
    tokenizer: Tokenizer | None       # None: kinds without prompts (embedding, ops)
    model_override: bool
    context_limit: int | None = None  # max_position_embeddings of the model's config

    def prompt_text(self, case: Case) -> str:
        return prompt_text_for(self.tokenizer, case)

    def prompt_ids(self, case: Case) -> list[int]:
        return prompt_ids_for(self.tokenizer, case)

    def side(self) -> Side:
        model = {}
        if self.resolved is not None:
            model = dict(model_fingerprint=self.resolved.fingerprint,
                         model_source=self.resolved.origin, model_override=self.model_override,
                         trust_remote_code=self.resolved.spec.trust_remote_code)
        return Side.of(self.backend.environment(), self.config.name, self.config.runtime,
                       self.config.device, self.config.dtype, self.config.quantization, **model)

    def close(self) -> None:
        self.backend.close()

    def bind_chats(self) -> None:
        """Tell a chat-aware backend (openai) which prompt ids came from which messages."""
        self.backend.bind_chats({tuple(self.prompt_ids(c)): (c.messages, c.chat_template_kwargs)
                                 for c in self.spec.cases
                                 if getattr(c, "messages", None) is not None})

    def check_length(self, case: Case, prompt_ids: list[int]) -> None:
        """A prompt that cannot fit the model's context is refused with the numbers (exit 2)
        before it reaches the backend (where it would fail obscurely or exhaust memory)."""
        limit = self.context_limit
        if not limit or len(prompt_ids) + case.max_new_tokens <= limit:
            return
        spec = self.spec
        index = next((i for i, c in enumerate(spec.cases) if c is case), None)
        line, col = (spec.located.where(("cases", index)) if spec.located and index is not None
                     else (case.line or None, None))
        raise SpecError(f"case '{case.id}': the prompt is {len(prompt_ids)} tokens and "
                        f"max_new_tokens is {case.max_new_tokens}, more than the model's "
                        f"context of {limit} tokens (max_position_embeddings); shorten it",
                        str(spec.path), line, col)


def prompt_ids_for(tokenizer: Tokenizer, case: Case) -> list[int]:
    """A case's prompt ids: its text, its chat rendered by the template, or its long
    prompt made by recipe (exactly that many tokens; memoised per tokenizer)."""
    if case.recipe is not None:
        memo = _RECIPE_IDS.setdefault(id(tokenizer), {})
        if case.recipe not in memo:
            memo[case.recipe] = build_ids(case.recipe, tokenizer.encode)
        return list(memo[case.recipe])
    if case.prompt is not None:
        return tokenizer.encode(case.prompt)
    return tokenizer.encode_chat(case.messages, case.chat_template_kwargs)


_RECIPE_IDS: dict[int, dict] = {}


def prompt_text_for(tokenizer: Tokenizer, case: Case) -> str:
    """A case's prompt for reading (a long prompt: its recipe, first and last tokens)."""
    if case.recipe is not None:
        return display_text(tokenizer.decode, prompt_ids_for(tokenizer, case), case.recipe)
    if case.prompt is not None:
        return case.prompt
    return tokenizer.render_chat(case.messages, case.chat_template_kwargs)


def open_session(spec: Spec, backend_name: str, model_kind: str | None = None,
                 load_model: bool = True, tokenizer: bool = True) -> Session:
    """Create the backend through the registry (exit 3 if unavailable), resolve its model
    (exit 2 if missing) as a `model_kind` model when given, load it (a runtime's failure
    is exit 3, converted by the backend base class), and load the tokenizer of the spec's
    model when `tokenizer`. Without `load_model` the backend runs no model (ops)."""

    config = config_for(backend_name, spec.backends)
    if not load_model:
        return Session(spec, config, create(config), None, None, False)
    model, override = model_for(spec, config.name)
    if model_kind and model.kind != model_kind:   # a backend's override is the spec's kind
        model = replace(model, kind=model_kind)
    resolved = resolve(model)
    backend = create(config, model_kind)
    tok = None
    if tokenizer or backend.wants_tokenizer:
        tok = load_tokenizer(resolved if not override else resolve(spec.model))
        if backend.wants_tokenizer:
            backend.use_tokenizer(tok if not override else load_tokenizer(resolved))
    with step(f"loading {resolved.origin} on {config.name}"):
        backend.load(resolved)
    return Session(spec, config, backend, resolved, tok if tokenizer else None, override,
                   context_limit(resolved))


def context_limit(resolved: ResolvedSource) -> int | None:
    """max_position_embeddings (or n_positions) of the model's config.json, if it has one."""
    hf_dir = getattr(resolved, "hf_dir", None)
    config = read_json(Path(hf_dir) / "config.json") if hf_dir else None
    for cfg in (config or {}, (config or {}).get("text_config") or {}):
        value = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        if isinstance(value, int) and value > 0:
            return value
    return None


def reference_source(spec: Spec, backend_name: str) -> ResolvedSource:
    """The model a reference backend would load, without loading it (for fingerprints)."""
    config = config_for(backend_name, spec.backends)
    return resolve(model_for(spec, config.name)[0])


def tokenizer_for(spec: Spec) -> Tokenizer:
    return load_tokenizer(resolve(spec.model))
