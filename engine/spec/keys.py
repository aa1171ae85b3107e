"""Spec kinds and the keys each accepts.

The JSON Schema holds the union of every kind's keys (each described there with the kind
it applies to); this module rejects, with `file:line:col`, a key that belongs to another
kind — e.g. `tolerance.kl_max` in an embedding spec, or `texts` in a causal-lm case.

Kinds: `causal-lm` and `embedding` (from `model.kind`), and `ops` (a spec with an `ops:`
list instead of `model:` + `cases:`). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Iterable

from specengine.spec.yamlio import Located

CAUSAL_LM, EMBEDDING, OPS = "causal-lm", "embedding", "ops"

TOLERANCE_KEYS = {
    CAUSAL_LM: {"kl_mean_max", "kl_max", "top1_agreement_min", "logprob_atol", "prob_atol",
                "divergence"},
    EMBEDDING: {"cosine_min", "hidden_cosine_min", "max_abs_err", "max_rel_err",
                "rel_share_1e3_min", "rel_share_5e3_min"},
    OPS: {"cosine_min", "max_abs_err", "max_rel_err", "rel_share_1e3_min", "rel_share_5e3_min",
          "dtype_error_ratio_max", "routing_mismatch_max"},
}

CASE_KEYS = {
    CAUSAL_LM: {"id", "prompt", "messages", "expect", "tags", "max_new_tokens", "top_k",
                "tolerance", "determinism", "chat_template_kwargs", "prompt_file",
                "long_prompt", "lengths", "around", "delta"},
    EMBEDDING: {"id", "texts", "images", "synthetic_images", "tags", "tolerance", "determinism"},
}

DEFAULTS_KEYS = {
    CAUSAL_LM: {"max_new_tokens", "top_k", "tolerance", "determinism", "timeout_s",
                "chat_template_kwargs"},
    EMBEDDING: {"tolerance", "determinism", "timeout_s"},
    OPS: {"tolerance", "determinism", "seed"},
}

DETERMINISM_KEYS = {
    CAUSAL_LM: {"runs", "atol", "batch_sizes", "batch_atol"},
    EMBEDDING: {"runs", "atol"},
    OPS: {"runs", "atol"},
}

TOP_LEVEL_KEYS = {
    CAUSAL_LM: {"specengine", "name", "description", "model", "reference", "backends",
                "defaults", "cases", "perf", "distribution"},
    EMBEDDING: {"specengine", "name", "description", "model", "reference", "backends",
                "defaults", "cases", "perf", "embedding"},
    OPS: {"specengine", "name", "description", "reference", "backends", "defaults", "ops"},
}

PERF_KEYS = {
    CAUSAL_LM: {"warmup", "runs", "batch_sizes", "prompt_tokens", "new_tokens", "budgets",
                "regression_max", "spread_k"},
    EMBEDDING: {"warmup", "runs", "batch_sizes", "budgets"},
}

BUDGET_KEYS = {
    CAUSAL_LM: {"ttft_ms", "tpot_ms", "tokens_per_s", "peak_mem_gib", "load_s", "note",
                "batch_sizes"},
    EMBEDDING: {"latency_ms", "items_per_s", "peak_mem_gib", "load_s", "note", "batch_sizes"},
}


def spec_kind(data: dict) -> str:
    if isinstance(data, dict) and "ops" in data:
        return OPS
    model = data.get("model") if isinstance(data, dict) else None
    return (model or {}).get("kind", CAUSAL_LM) if isinstance(model, dict) else CAUSAL_LM


def _reject(located: Located, path: tuple, mapping, allowed: Iterable[str], kind: str,
            what: str) -> None:
    if not isinstance(mapping, dict):
        return
    allowed = set(allowed)
    for key in mapping:
        if key not in allowed:
            owners = _owners(key, what)
            where = f" (it applies to {' and '.join(owners)} specs)" if owners else ""
            raise located.error(path + (key,), f"'{key}' is not used by {kind} specs{where}; "
                                f"allowed here: {', '.join(sorted(allowed))}", key=True)


def _reject_limits(located: Located, path: tuple, block, kind: str) -> None:
    """Each class block of a tolerance holds only the kind's limit keys."""
    for klass, limits in (block.items() if isinstance(block, dict) else ()):
        _reject(located, path + (klass,), limits, TOLERANCE_KEYS[kind], kind, "tolerance")


_TABLES = {"tolerance": TOLERANCE_KEYS, "case": CASE_KEYS, "defaults": DEFAULTS_KEYS,
           "determinism": DETERMINISM_KEYS, "spec": TOP_LEVEL_KEYS, "perf": PERF_KEYS,
           "budget": BUDGET_KEYS}


def _owners(key: str, what: str) -> list[str]:
    return sorted(k for k, keys in _TABLES[what].items() if key in keys)


def check_kind_keys(located: Located) -> str:
    """Reject keys that belong to another kind; return the spec's kind."""
    data = located.data
    kind = spec_kind(data)
    _reject(located, (), data, TOP_LEVEL_KEYS[kind], kind, "spec")
    defaults = data.get("defaults") or {}
    _reject(located, ("defaults",), defaults, DEFAULTS_KEYS[kind], kind, "defaults")
    _reject_limits(located, ("defaults", "tolerance"), defaults.get("tolerance"), kind)
    _reject(located, ("defaults", "determinism"), defaults.get("determinism"),
            DETERMINISM_KEYS[kind], kind, "determinism")
    entries = data.get("ops") if kind == OPS else data.get("cases")
    section = "ops" if kind == OPS else "cases"
    for i, entry in enumerate(entries or []):
        if not isinstance(entry, dict):
            continue
        if kind in CASE_KEYS:
            _reject(located, (section, i), entry, CASE_KEYS[kind], kind, "case")
        _reject_limits(located, (section, i, "tolerance"), entry.get("tolerance"), kind)
        _reject(located, (section, i, "determinism"), entry.get("determinism"),
                DETERMINISM_KEYS[kind], kind, "determinism")
    backends = data.get("backends")
    for name, entry in (backends.items() if isinstance(backends, dict) else ()):
        if isinstance(entry, dict):
            _reject_limits(located, ("backends", name, "tolerance"), entry.get("tolerance"), kind)
    perf = data.get("perf")
    if isinstance(perf, dict) and kind in PERF_KEYS:
        _reject(located, ("perf",), perf, PERF_KEYS[kind], kind, "perf")
        for name, budget in (perf.get("budgets") or {}).items():
            _reject(located, ("perf", "budgets", name), budget, BUDGET_KEYS[kind], kind, "budget")
    return kind
