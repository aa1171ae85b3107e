"""Per-layer hidden states of a backend on a case's teacher-forced sequence, the layer
sketch a golden stores so that `localize` works on the golden alone, and the
localization of one case from them (`check --localize`, `specengine localize`)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from specengine.compare import sketch as sk
from specengine.compare.layers import (GROWTH, Localization, default_floor, default_jump_floor,
                                       layer_names, localize_sketch, localize_states, span)
from specengine.errors import BackendUnavailable, GoldenError, SpecEngineError, UsageError
from specengine.kinds.causal_lm.golden import LmCaseRecord


def teacher_forced_ids(record: LmCaseRecord) -> list[int]:
    """The sequence a golden case is scored on: prompt ids + output ids, last one dropped."""
    full = list(record.prompt_ids or ()) + list(record.output_ids)
    return full[:-1] if record.output_ids else full


def capture(backend: Any, ids: Sequence[int], run: Any = None
            ) -> tuple[list[str], list[np.ndarray]]:
    """Per-layer hidden states of one sequence on a loaded backend: (names, (T, d) arrays).

    The torch backend returns transformers' `output_hidden_states`, which in transformers
    5.x holds num_hidden_layers + 1 entries: the embedding output, the outputs of decoder
    layers 0 … n−2, and — in place of layer n−1's raw output — the final norm's output
    (`capture_outputs(tie_last_hidden_states=True)`). A forward hook on the final norm
    recovers layer n−1's raw output (the norm's input), so every decoder layer and the
    final norm are both present. Backends without that structure are labelled by count.

    `run`, when given, produces the states instead of `backend.hidden_states(ids)` (the
    decode path: one incremental step's states); the hook reads its last forward call.
    """
    captured: dict[str, Any] = {}
    handle = None
    norm = _final_norm(backend.model)
    if norm is not None:
        def hook(module, inputs, output):
            captured["in"] = inputs[0]
            captured["out"] = output[0] if isinstance(output, tuple) else output
        handle = norm.register_forward_hook(hook)
    try:
        states = run() if run is not None else backend.hidden_states(list(ids))
    finally:
        if handle is not None:
            handle.remove()
    if states is None:
            raise BackendUnavailable(f"backend '{backend.name}' does not return per-layer hidden "
                                 "states, so it cannot be localized")
    states = [np.asarray(s, dtype=np.float32) for s in states]
    n_layers = _decoder_layers(backend)
    if "in" in captured and n_layers and len(states) == n_layers + 1:
        raw = captured["in"][0].float().cpu().numpy()
        normed = captured["out"][0].float().cpu().numpy()
        if np.array_equal(states[-1], normed):          # tied: last entry is the final norm
            states = states[:-1] + [raw, normed]
        elif np.array_equal(states[-1], raw):           # untied: last entry is raw
            states = states + [normed]
        if len(states) == n_layers + 2:
            return layer_names(n_layers), states
    if n_layers and len(states) == n_layers + 1:
        return (["embedding"] + [f"layer.{i}" for i in range(n_layers - 1)]
                + [f"layer.{n_layers - 1}+final_norm"]), states
    return [f"state.{i}" for i in range(len(states))], states


def _final_norm(model: Any) -> Any:
    if model is None:
        return None
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or model
    for attr in ("norm", "final_layernorm", "ln_f", "final_norm"):
        module = getattr(base, attr, None)
        if module is not None and hasattr(module, "register_forward_hook"):
            return module
    return None


def _decoder_layers(backend: Any) -> int | None:
    config = getattr(backend.model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    n = getattr(config, "num_hidden_layers", None)
    return int(n) if isinstance(n, int) else None


# -- running: golden sketches, check --localize, the localize command -----------------------

def sketch_for_record(backend: Any, record: LmCaseRecord) -> dict | None:
    """The layer sketch a golden stores for a case (None when the backend has no states)."""
    try:
        names, states = capture(backend, teacher_forced_ids(record))
    except BackendUnavailable:
        return None
    return sk.record_sketch(states, names)


def localize_record(backend: Any, record: LmCaseRecord, case_id: str, *, candidate: str,
                    reference: str, ref_states: tuple[list[str], list[np.ndarray]] | None = None,
                    growth: float = GROWTH, floor: float | None = None,
                    dtypes: Sequence[str | None] = ()) -> Localization:
    """Localize one case on a loaded candidate: against the reference's full states when
    given (live), else against the record's stored sketch (golden alone)."""
    floor = default_floor(*dtypes) if floor is None else float(floor)
    jump = min(floor, default_jump_floor(*dtypes))
    names, states = capture(backend, teacher_forced_ids(record))
    if ref_states is not None:
        ref_names, ref = ref_states
        if list(ref_names) != list(names) or any(np.shape(a) != np.shape(b)
                                                 for a, b in zip(ref, states)):
            raise UsageError(f"case '{case_id}': the reference returns layers "
                             f"{span(list(ref_names))} and the candidate {span(list(names))} "
                             "(of other shapes): they are not the same architecture")
        return localize_states(case_id, names, ref, states, reference, candidate, growth, floor,
                               jump)
    if not record.sketch:
        raise GoldenError(f"the golden of case '{case_id}' has no layer sketch (recorded before "
                          "sketches existed, or by a backend without hidden states): re-record "
                          "it with `specengine record-golden --update`, or localize against a "
                          "live reference with --against")
    try:
        return localize_sketch(case_id, record.sketch, names, states, reference, candidate,
                               growth, floor, jump)
    except ValueError as exc:
        raise GoldenError(f"case '{case_id}': {exc}") from None


def localize_failed_case(session: Any, result: Any, record: LmCaseRecord, reference: str,
                         ref_dtype: str | None,
                         ref_states: tuple[list[str], list[np.ndarray]] | None = None,
                         live: bool = False) -> None:
    """`check --localize`: attach the localization of a failing case to its result (a
    problem becomes the localization's `error`, never a lost check)."""
    try:
        if live and ref_states is None:
            raise UsageError(f"the reference '{reference}' returned no hidden states")
        loc = localize_record(session.backend, record, result.id, candidate=session.config.name,
                              reference=reference, ref_states=ref_states,
                              dtypes=(session.config.dtype, ref_dtype))
        result.localization = loc.to_dict()
    except SpecEngineError as exc:
        result.localization = {"case_id": result.id, "error": exc.one_line()}


def localization_summary(loc: dict) -> str:
    """One line of a localization's dict: the flagged layer and its jump."""
    layers, first = loc.get("layers") or [], loc.get("first_flagged")
    if first is None or first >= len(layers):
        return loc.get("error") or "no layer flagged"
    m = layers[first]
    prev = layers[first - 1]["rel_err"] if first else 0.0
    return (f"rel_err {prev or 0:.3g} → {m['rel_err']:.3g} at {m['name']} "
            f"({loc.get('mode', '')} comparison)")
