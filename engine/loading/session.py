"""A loaded backend for one spec: the backend, its model source, the tokenizer, and how
each case turns into prompt ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from specengine.backends.base import Backend, BackendConfig
from specengine.backends.registry import config_for, create

from specengine.errors import BackendCrashed, SpecEngineError
from specengine.results import Side
from specengine.loading.sources import ResolvedSource, resolve
from specengine.spec import Case, ModelSpec, Spec
from specengine.loading.tokenizer import Tokenizer, load_tokenizer


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
    resolved: ResolvedSource
    tokenizer: Tokenizer
    model_override: bool

    def prompt_text(self, case: Case) -> str:
        return prompt_text_for(self.tokenizer, case)

    def prompt_ids(self, case: Case) -> list[int]:
        return prompt_ids_for(self.tokenizer, case)

    def side(self) -> Side:
        env: dict[str, Any] = self.backend.environment()
        return Side(backend=self.config.name, runtime=env.get("runtime", self.config.runtime),
                    device=env.get("device", self.config.device),
                    device_name=env.get("device_name", ""), dtype=env.get("dtype", self.config.dtype),
                    versions=env.get("versions", {}), model_fingerprint=self.resolved.fingerprint,
                    model_source=self.resolved.origin, model_override=self.model_override,
                    trust_remote_code=self.resolved.spec.trust_remote_code,
                    settings=env.get("settings", {}),
                    quantization=env.get("quantization", self.config.quantization),
                    modeling=env.get("modeling", {}))

    def close(self) -> None:
        self.backend.close()


def prompt_ids_for(tokenizer: Tokenizer, case: Case) -> list[int]:
    """A case's prompt ids: its text, its chat rendered by the template, or its long
    prompt made by recipe (exactly that many tokens; memoised per tokenizer)."""
    if case.recipe is not None:
        from specengine.spec.long_prompt import build_ids

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
        from specengine.spec.long_prompt import display_text

        return display_text(tokenizer.decode, prompt_ids_for(tokenizer, case), case.recipe)
    if case.prompt is not None:
        return case.prompt
    return tokenizer.render_chat(case.messages, case.chat_template_kwargs)


def open_session(spec: Spec, backend_name: str) -> Session:
    """Create the backend (exit 3 if unavailable), resolve its model (exit 2 if missing),
    load it, and load the tokenizer of the spec's model."""
    from specengine.progress import step

    config = config_for(backend_name, spec.backends)
    model, override = model_for(spec, config.name)
    resolved = resolve(model)
    backend = create(config)
    with step(f"loading {resolved.origin} on {config.name}"):
        try:
            backend.load(resolved)
        except SpecEngineError:
            raise
        except Exception as exc:  # a runtime's own error: exit 3 with its message
            raise BackendCrashed(f"backend '{config.name}' could not load {resolved.origin}: "
                                 f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    tokenizer = load_tokenizer(resolved if not override else resolve(spec.model))
    return Session(spec, config, backend, resolved, tokenizer, override)


def reference_source(spec: Spec, backend_name: str) -> ResolvedSource:
    """The model a reference backend would load, without loading it (for fingerprints)."""
    config = config_for(backend_name, spec.backends)
    return resolve(model_for(spec, config.name)[0])


def tokenizer_for(spec: Spec) -> Tokenizer:
    return load_tokenizer(resolve(spec.model))
