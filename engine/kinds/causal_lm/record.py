"""Recording a causal-lm golden: each case run greedily on the reference with its top-k
log-probs per step, its own prefill/decode consistency measured, and the layer sketch
that `localize` needs; also the live reference of `check --against`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.tokens import Consistency
from specengine.compare.tolerances import dtype_class
from specengine.errors import (BackendCrashed, BackendUnavailable, ReferenceFailsExpectations,
                               ReferenceInconsistent, SpecError)
from specengine.golden.store import golden_path, previous_golden, replace_golden, seal
from specengine.kinds.base import record_one
from specengine.kinds.causal_lm import decode, paths
from specengine.kinds.causal_lm.layers import capture, sketch_for_record, teacher_forced_ids
from specengine.kinds.causal_lm.expect import reference_failures
from specengine.kinds.causal_lm.golden import (LmGolden, build_golden, case_hash, check_staleness,
                                               describe_changes, load_golden, step_record)
from specengine.kinds.causal_lm.noise import measure_noise, noise_config, summary_line
from specengine.loading.session import Session, open_session
from specengine.progress import cases as progress_cases
from specengine.results import Side
from specengine.spec import Case, Spec


def record_case(session: Session, case: Case, sketch: bool = True) -> dict:
    """Run one case on the reference and return its golden record (with the layer sketch
    that `localize` needs when the backend returns hidden states and `sketch` is set)."""
    return record_case_checked(session, case, sketch)[0]


def record_case_checked(session: Session, case: Case, sketch: bool = True
                        ) -> tuple[dict, Consistency | None]:
    """`record_case`, plus the reference's own prefill/decode consistency on the case: its
    generation (incremental decode) against its one-pass scores of the same tokens, judged
    at its own dtype's default tolerance."""
    ids = session.prompt_ids(case)
    check_length(session, case, ids)
    gen = record_one(session.config.name, case.id,
                     lambda: session.backend.generate([ids], case.max_new_tokens, case.top_k,
                                                      session.tokenizer.stop_ids)[0],
                     session.spec.timeout_s)
    if not gen.has_logprobs or len(gen.topk_logprobs) < len(gen.output_ids):
        raise BackendUnavailable(f"backend '{session.config.name}' returned no log-probs for "
                                 f"case '{case.id}', so it cannot record a golden: "
                                 f"{paths.unsupported(session.backend, 'logprobs')}")
    _check_finite(gen.topk_logprobs, session, case)
    own = session.spec.limits(case, dtype_class(session.config.dtype, session.config.quantization),
                              session.config.name, absolute_only=True).values
    consistency = decode.generation_consistency(session.backend, ids, gen, case.top_k, own)
    record = {"hash": case_hash(ids, case.settings(), session.resolved.fingerprint),
              "prompt": session.prompt_text(case), "prompt_ids": ids,
              "output_ids": gen.output_ids, "output_text": session.tokenizer.decode(gen.output_ids),
              "settings": case.settings(),
              "steps": [step_record(gen.topk_ids[i], gen.topk_logprobs[i], gen.tail_logprob[i])
                        for i in range(len(gen.output_ids))]}
    if case.recipe is not None and session.backend.supports_positions:
        record["prompt_steps"] = paths.prompt_steps(session, ids, case.top_k)
    if sketch and case.recipe is None:   # per-layer sketch, so localize works on the golden alone
        layer_sketch = sketch_for_record(session.backend, record)
        if layer_sketch:
            record["sketch"] = layer_sketch
    return record, consistency


def _check_finite(lp: np.ndarray, session: Session, case: Case) -> None:
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise BackendCrashed(f"backend '{session.config.name}' produced NaN/Inf log-probs on "
                             f"case '{case.id}'; refusing to record it as a golden")


def record_golden(spec: Spec, backend_name: str, golden_dir: Path, update: bool = False,
                  echo: Callable[[str], None] = print,
                  allow_inconsistent: bool = False, noise: Sequence[str] = (),
                  allow_failing: bool = False) -> Path:
    """Record every case of a spec on a backend into golden/<spec>/<backend>.json.

    A reference that is not a golden is refused, nothing written: one whose own decode and
    one-pass paths disagree on a case beyond its dtype's noise (ReferenceInconsistent,
    exit 1, unless `allow_inconsistent`), and one whose own text fails the case's
    expectations (ReferenceFailsExpectations, exit 1, unless `allow_failing`); the golden
    then names those cases. With `noise` classes the reference's own error of each class
    is measured and stored (kinds.causal_lm.noise) — into an existing golden without
    re-recording it, when there is one and no `update`."""
    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    for klass in noise:
        noise_config(config_for(name, spec.backends), klass)     # a usage error first
    if noise and path.exists() and not update:
        golden = load_golden(path, spec.name)
        stored = json.loads(json.dumps(golden.data))   # staleness adds long prompts' ids
        check_staleness(spec, golden, name, spec.cases)
        data = _with_noise(spec, name, golden, stored, noise, echo)
        return replace_golden(path, data, stored, describe_changes, echo)
    old = previous_golden(path, update, lambda p: load_golden(p, spec.name).data, echo)
    session = open_session(spec, name)
    bind_chats(session)
    try:
        cases, checks, fails = {}, {}, {}
        for case in progress_cases(spec.cases, "record", spec.name, name):
            cases[case.id], checks[case.id] = record_case_checked(session, case)
            fails[case.id] = _reference_failures(case, cases[case.id])
        side = session.side()
    finally:
        session.close()
    inconsistent = paths.report_consistency(checks, echo)
    if inconsistent and not allow_inconsistent:
        raise ReferenceInconsistent(
            f"backend '{name}' disagrees with itself (incremental decode vs one-pass) on "
            f"{len(inconsistent)} case(s): {'; '.join(inconsistent)[:600]}; nothing was "
            "recorded — fix the reference, or pass --allow-inconsistent-reference to record it "
            "anyway (the golden says so)")
    failing = {cid: f for cid, f in fails.items() if f}
    if failing and not allow_failing:
        listed = "; ".join(f"{cid}: expect {', '.join(f)} (its text: "
                           f"{cases[cid]['output_text'][:60]!r})" for cid, f in failing.items())
        raise ReferenceFailsExpectations(
            f"backend '{name}' fails its own spec's expectations on {len(failing)} case(s): "
            f"{listed[:700]}; nothing was recorded — fix the expectations or the reference, "
            "or pass --allow-failing-expectations (the golden marks those cases, and a check "
            "reports them as failing on the reference too)")
    for cid, f in failing.items():
        cases[cid]["reference_fails"] = f
    stored = {cid: paths.stored_record(record) for cid, record in cases.items()}
    data = build_golden(spec.name, name, session.resolved.fingerprint, session.resolved.origin,
                        side.recorded(), stored, inconsistent_allowed=inconsistent
                        if allow_inconsistent else None)
    if noise:
        data = _with_noise(spec, name, LmGolden(path, {**data, "cases": cases}), data, noise,
                           echo)
    return replace_golden(path, data, old, describe_changes, echo)


def _reference_failures(case: Case, record: dict) -> list[str]:
    steps = record["steps"]
    first = float(steps[0]["logprobs"][0]) if steps else None
    return reference_failures(case, record["output_text"], record["output_ids"], first)


def _with_noise(spec: Spec, name: str, golden: LmGolden, data: dict, classes: Sequence[str],
                echo: Callable[[str], None]) -> dict:
    """`data` (the golden as stored) with each class's noise measured against `golden`
    (its records with prompt ids) and added to every case, sealed again."""
    data = json.loads(json.dumps(data))
    data.pop("content_sha256", None)
    for klass in classes:
        measured, made = measure_noise(spec, name, golden, list(spec.cases), klass, bind_chats)
        echo(summary_line(measured, klass))
        data.setdefault("noise", {})[klass] = made
        for cid, values in measured.items():
            data["cases"][cid].setdefault("noise", {})[klass] = values
    return seal(data)


def live_reference(spec: Spec, ref_name: str, cases: list[Case],
                   states: dict | None = None, checks: dict | None = None
                   ) -> tuple[LmGolden, Side]:
    """Records of the reference run live; with `states`, also each case's per-layer hidden
    states (for check --localize), by case id; with `checks`, each case's reference
    prefill/decode consistency."""
    session = open_session(spec, ref_name)
    bind_chats(session)
    try:
        records = {}
        for case in progress_cases(cases, "reference", spec.name, ref_name):
            records[case.id], consistency = record_case_checked(session, case, sketch=False)
            records[case.id]["reference_fails"] = _reference_failures(case, records[case.id])
            if checks is not None:
                checks[case.id] = consistency
        if states is not None:
            for cid, record in records.items():
                try:
                    states[cid] = capture(session.backend, teacher_forced_ids(record))
                except BackendUnavailable:   # no hidden states: localization says so
                    pass
        side = session.side()
    finally:
        session.close()
    data = build_golden(spec.name, ref_name, session.resolved.fingerprint,
                        session.resolved.origin, {}, records)
    return LmGolden(Path(f"<live {ref_name}>"), data), side


def check_length(session: Session, case: Case, prompt_ids: list[int]) -> None:
    """A prompt that cannot fit the model's context is refused with the numbers (exit 2)
    before it reaches the backend (where it would fail obscurely or exhaust memory)."""
    limit = session.context_limit
    if limit and len(prompt_ids) + case.max_new_tokens > limit:
        spec = session.spec
        index = next((i for i, c in enumerate(spec.cases) if c is case), None)
        line, col = (spec.located.where(("cases", index)) if spec.located and index is not None
                     else (case.line or None, None))
        raise SpecError(f"case '{case.id}': the prompt is {len(prompt_ids)} tokens and "
                        f"max_new_tokens is {case.max_new_tokens}, more than the model's "
                        f"context of {limit} tokens (max_position_embeddings); shorten it",
                        str(spec.path), line, col)


def bind_chats(session: Session) -> None:
    """Tell a chat-aware backend (openai) which prompt ids came from which messages."""
    session.backend.bind_chats({tuple(session.prompt_ids(c)): (c.messages, c.chat_template_kwargs)
                                for c in session.spec.cases if c.messages is not None})
