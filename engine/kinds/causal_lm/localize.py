"""Localization: which layer does a candidate start to drift at? The per-layer
numbers and the flagging rule are pure functions (compare.layers, where the rule is
documented); this module runs the two sides (`specengine localize`, `check --localize`)
and renders the answer."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.layers import GROWTH, Localization
from specengine.errors import UsageError
from specengine.files import atomic_write_text
from specengine.golden.store import default_golden_dir, golden_path
from specengine.kinds.base import select_cases
from specengine.kinds.causal_lm.golden import check_staleness
from specengine.kinds.causal_lm.golden import load_golden
from specengine.kinds.causal_lm.layers import capture, localize_record, teacher_forced_ids
from specengine.kinds.causal_lm.localize_decode import localize_decode_record
from specengine.kinds.causal_lm.record import record_case
from specengine.loading.session import open_session
from specengine.progress import bar
from specengine.report.render import render_localize


def localize_spec(spec: Any, case_ids: list[str] | None, backend: str, against: str | None,
                  golden_dir: Any, growth: float = GROWTH,
                  floor: float | None = None, path: str = "prefill") -> list[Localization]:
    """`specengine localize`: the selected cases of a spec, candidate `backend` against a
    live `against` backend (full hidden states) or against the golden's sketch alone.
    With `path="decode"` each case's decode path is localized against the candidate's own
    one-pass forward instead (on the golden's, or the live reference's, sequence)."""
    if spec.kind != "causal-lm":
        raise UsageError(f"{spec.path}: localize works on causal-lm specs (this one is "
                         f"kind: {spec.kind})")
    cases = select_cases(spec, case_ids)
    cand_name = config_for(backend, spec.backends).name
    ref_states: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    if against:
        ref_name = config_for(against, spec.backends).name
        session = open_session(spec, ref_name)
        try:
            records = {}
            for case in bar(cases, f"reference {spec.name} on {ref_name}", len(cases)):
                records[case.id] = record_case(session, case, sketch=False)
                if path != "decode":
                    ref_states[case.id] = capture(session.backend,
                                                  teacher_forced_ids(records[case.id]))
            ref_dtype, reference = session.config.dtype, ref_name
        finally:
            session.close()
    else:
        ref_name = spec.reference
        golden = load_golden(golden_path(golden_dir, spec.name, ref_name), spec.name)
        check_staleness(spec, golden, ref_name, cases)
        records = {case.id: golden.cases[case.id] for case in cases}
        ref_dtype = golden.data.get("recorded_with", {}).get("dtype")
        reference = f"golden {ref_name}"
    session = open_session(spec, cand_name)
    try:
        out = []
        for case in bar(cases, f"localize {spec.name} on {cand_name}", len(cases)):
            if path == "decode":
                out.append(localize_decode_record(
                    session.backend, records[case.id], case.id, candidate=cand_name,
                    dtype=session.config.dtype, quantization=session.config.quantization,
                    growth=growth, floor=floor))
                continue
            out.append(localize_record(session.backend, records[case.id], case.id,
                                       candidate=cand_name, reference=reference,
                                       ref_states=ref_states.get(case.id), growth=growth,
                                       floor=floor, dtypes=(session.config.dtype, ref_dtype)))
    finally:
        session.close()
    return out


def render_text(loc: Localization) -> str:
    """Terminal table of one localization, the first flagged layer marked."""
    full = loc.mode == "full"
    head = (f"  {'layer':<22}{'rel_err':>10}{'growth':>8}{'cosine':>11}{'norm':>8}"
            + (f"{'max|Δ|':>10}{'max rel':>10}{'<1e-3':>7}{'<5e-3':>7}" if full else ""))
    lines = [f"localize case {loc.case_id}: {loc.candidate} vs {loc.reference} "
             f"({loc.mode}, {loc.positions} positions)", head]
    for m in loc.layers:
        mark = "▶" if m.index == loc.first_flagged else ("!" if m.flagged else " ")
        growth = "—" if m.growth is None else f"{m.growth:.3g}"
        row = (f"{mark} {m.name:<22}{m.rel_err:>10.3g}{growth:>8}{m.cosine:>11.6f}"
               f"{m.norm_ratio:>8.4f}")
        if full:
            row += (f"{m.max_abs:>10.3g}{m.max_rel:>10.3g}{m.frac_rel_lt_1e3:>7.3f}"
                    f"{m.frac_rel_lt_5e3:>7.3f}")
        lines.append(row)
    lines.append(loc.summary)
    lines += [f"note: {n}" for n in loc.notes]
    return "\n".join(lines)


def render_html(locs: Sequence[Localization], spec_name: str) -> str:
    """A self-contained HTML page for the command."""
    return render_localize(locs, spec_name)


def to_json(locs: Sequence[Localization], spec_name: str) -> str:
    import json

    return json.dumps({"format": 1, "spec": spec_name, "localizations": [l.to_dict() for l in locs]},
                      indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)


def cli_main(args: Any, load_specs: Any) -> int:
    """`specengine localize SPEC --backend X [--against Y] [--case ID]...`: prints the
    per-layer table of each case; --json / --html write them. Exit 1 when a layer is
    flagged in some case, 0 when none is."""
    spec = load_specs([args.spec])[0]
    locs = localize_spec(spec, args.case, args.backend, args.against,
                         args.golden_dir or default_golden_dir(spec.path), args.growth, args.floor,
                         path=getattr(args, "path", "prefill"))
    for loc in locs:
        print(render_text(loc))
        print()
    if args.json:
        atomic_write_text(args.json, to_json(locs, spec.name) + "\n")
        print(f"json: {args.json}")
    if args.html:
        atomic_write_text(args.html, render_html(locs, spec.name))
        print(f"html: {args.html}")
    return 1 if any(loc.first_flagged is not None for loc in locs) else 0
