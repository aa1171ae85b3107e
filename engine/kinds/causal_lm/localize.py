"""Localization: which layer does a candidate start to drift at?

Both sides run the case's teacher-forced sequence (the golden's prompt ids followed by its
greedy continuation, the last generated token dropped, exactly what `score` feeds) and
hand back per-layer hidden states: the embedding output, each decoder layer's output,
and the final norm's output. Per layer this module measures (numpy in, dataclasses out):

- `rel_err`: RMS over positions of ||c_p − g_p|| / ||g_p|| (the per-position relative L2
  error, so one position with massive activations cannot hide the others),
- `cosine`: mean over positions of cos(c_p, g_p), and `norm_ratio`: mean ||c_p|| / ||g_p||,
- element-wise: max |c − g|, max |c − g| / |g|, and the share of elements whose relative
  error is under 0.001 and under 0.005 (|g| is floored at REL_EPS for these).

Against a golden alone the reference's states are not at hand: its sketch
(engine/sketch.py) is, and the candidate is sketched the same way. `rel_err`, `cosine`
and `norm_ratio` are then estimated from the sketch (element-wise numbers are None).

The first flagged layer (the rule, documented in docs/localize.md):

    layer l is flagged when  rel_err[l] >= floor  and  rel_err[l] >= growth · rel_err[l−1]

with rel_err[−1] = 0 for the embedding (its input, the token ids, is exact). The first
flagged layer in order is reported: the layer whose error grows sharply relative to the
error already in its input, and is not just rounding noise. Defaults: growth 4; floor
25 × the unit roundoff of the coarser dtype of the two sides, at least 0.001 (bfloat16:
0.098, float16: 0.012, float32: 0.001). Measured on SmolLM2 (docs/localize.md): bf16
against fp32 noise reaches rel_err 0.053 and a growth of 4.0 between layers, while a
sign-flipped o_proj gives rel_err >= 0.17 with a growth >= 7.1 at its layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from specengine.compare import sketch as sk

GROWTH = 4.0
FLOOR_FACTOR = 25.0     # × unit roundoff of the coarser dtype
FLOOR_MIN = 1e-3
FLOOR = FLOOR_MIN       # the floor when both sides are float32
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}
REL_EPS = 1e-6          # |g| floor in element-wise relative errors
RULE_TEXT = ("first layer whose rel_err (RMS over positions of ||c_p − g_p|| / ||g_p||) is at "
             "least {floor:.3g} and at least {growth:g}× the previous layer's")


@dataclass
class LayerMetrics:
    """One layer of one case, candidate against reference. None: not measurable in this
    mode (element-wise numbers from a sketch)."""

    index: int
    name: str
    rel_err: float
    cosine: float
    norm_ratio: float
    max_abs: float | None = None
    max_rel: float | None = None
    frac_rel_lt_1e3: float | None = None
    frac_rel_lt_5e3: float | None = None
    growth: float | None = None     # rel_err / previous rel_err (None for an exact input)
    flagged: bool = False


@dataclass
class Localization:
    """Per-layer comparison of one case, and the first flagged layer."""

    case_id: str
    mode: str                       # full (both sides' hidden states) | sketch (golden's sketch)
    reference: str                  # backend (live) or golden file
    candidate: str
    positions: int                  # positions compared
    layers: list[LayerMetrics]
    first_flagged: int | None       # index into layers
    first_flagged_name: str | None
    growth: float = GROWTH
    floor: float = FLOOR
    rule: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    @property
    def summary(self) -> str:
        if self.first_flagged is None:
            worst = max(self.layers, key=lambda m: m.rel_err, default=None)
            tail = (f"; the largest rel_err is {worst.rel_err:.3g} at {worst.name}"
                    if worst else "")
            return (f"no layer flagged (no rel_err >= {self.floor:.3g} with a >= {self.growth:g}× "
                    f"jump over its input){tail}")
        m = self.layers[self.first_flagged]
        prev = self.layers[self.first_flagged - 1].rel_err if self.first_flagged else 0.0
        return (f"first flagged layer: {m.name} (rel_err {prev:.3g} → {m.rel_err:.3g}, "
                f"cosine {m.cosine:.4f}; {self.mode} comparison)")


def default_floor(*dtypes: str | None) -> float:
    """FLOOR_FACTOR × the unit roundoff of the coarsest of `dtypes`, at least FLOOR_MIN; an
    unknown dtype (quantised, or not recorded) counts as bfloat16."""
    u = max((UNIT_ROUNDOFF.get(str(d or "").lower(), UNIT_ROUNDOFF["bfloat16"])
             for d in dtypes), default=UNIT_ROUNDOFF["float32"])
    return max(FLOOR_MIN, FLOOR_FACTOR * u)


def _finite(value: Any) -> Any:
    """NaN / inf floats as None, recursively (results JSON has no NaN)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- pure metrics ---------------------------------------------------------------------

def layer_metrics(index: int, name: str, ref: np.ndarray, cand: np.ndarray) -> LayerMetrics:
    """Metrics of one layer from both sides' full hidden states, (T, d) each."""
    g = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if g.shape != c.shape:
        raise ValueError(f"layer {name}: reference {g.shape} and candidate {c.shape} differ")
    diff = c - g
    gn = np.linalg.norm(g, axis=-1)
    cn = np.linalg.norm(c, axis=-1)
    dn = np.linalg.norm(diff, axis=-1)
    safe = np.where(gn > 0, gn, 1.0)
    rel_pos = np.where(gn > 0, dn / safe, np.where(dn > 0, np.inf, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_pos = np.where((gn > 0) & (cn > 0), (g * c).sum(-1) / (safe * np.where(cn > 0, cn, 1.0)),
                           np.where((gn == 0) & (cn == 0), 1.0, 0.0))
    rel_el = np.abs(diff) / np.maximum(np.abs(g), REL_EPS)
    return LayerMetrics(
        index=index, name=name, rel_err=float(np.sqrt(np.mean(rel_pos ** 2))),
        cosine=float(np.mean(cos_pos)), norm_ratio=float(np.mean(cn / safe)),
        max_abs=float(np.abs(diff).max(initial=0.0)), max_rel=float(rel_el.max(initial=0.0)),
        frac_rel_lt_1e3=float(np.mean(rel_el < 1e-3)), frac_rel_lt_5e3=float(np.mean(rel_el < 5e-3)))


def sketch_layer_metrics(index: int, name: str, ref_v: np.ndarray, cand_v: np.ndarray,
                         ref_norms: Sequence[float], cand_norms: Sequence[float]) -> LayerMetrics:
    """Metrics of one layer estimated from sketches (engine/sketch.py).

    The sketch is linear and each position is scaled by the reference's stored norm n_p, so
    the reference's weighted norm is 1 (exactly, up to the rounding of n_p) and
    rel_err = ||v_C − v_G|| estimates sqrt(mean_p ||c_p − g_p||² / ||g_p||²). The candidate's
    norms are exact: with r_p = ||c_p|| / n_p and A = mean_p r_p²,
    cosine = (A + 1 − rel_err²) / (2 sqrt(A)) (law of cosines; only rel_err is estimated);
    norm_ratio = mean_p r_p. Element-wise numbers are None.
    """
    g = np.asarray(ref_v, dtype=np.float64)
    c = np.asarray(cand_v, dtype=np.float64)
    rn = np.asarray(ref_norms, dtype=np.float64)
    cn = np.asarray(cand_norms, dtype=np.float64)
    ratio = np.where(rn > 0, cn / np.where(rn > 0, rn, 1.0), 1.0)
    rel = float(np.linalg.norm(c - g))
    a = float(np.mean(ratio ** 2)) if ratio.size else 1.0
    cosine = float(np.clip((a + 1.0 - rel ** 2) / (2.0 * np.sqrt(a)), -1.0, 1.0)) if a > 0 else 0.0
    return LayerMetrics(index=index, name=name, rel_err=rel, cosine=cosine,
                        norm_ratio=float(ratio.mean()) if ratio.size else 1.0)


def flag_layers(rel_errs: Sequence[float], growth: float = GROWTH,
                floor: float = FLOOR) -> tuple[list[float | None], list[bool], int | None]:
    """The rule: per layer its growth over the previous layer's rel_err (None when the
    input was exact), whether it is flagged, and the first flagged index (or None).

    A NaN rel_err (NaN in the candidate's states) counts as infinite: the first layer that
    produces it is flagged, the layers that inherit it are not."""
    growths: list[float | None] = []
    flags: list[bool] = []
    prev = 0.0
    for err in rel_errs:
        err = float("inf") if np.isnan(err) else float(err)
        if prev == 0.0:
            ratio, flagged = None, err >= floor
        elif np.isinf(prev):
            ratio, flagged = 1.0, False
        else:
            ratio = err / prev
            flagged = err >= floor and err >= growth * prev
        growths.append(ratio)
        flags.append(bool(flagged))
        prev = err
    first = next((i for i, f in enumerate(flags) if f), None)
    return growths, flags, first


def _assemble(case_id: str, mode: str, reference: str, candidate: str, positions: int,
              layers: list[LayerMetrics], growth: float, floor: float,
              notes: list[str] | None = None) -> Localization:
    growths, flags, first = flag_layers([m.rel_err for m in layers], growth, floor)
    for m, g, f in zip(layers, growths, flags):
        m.growth, m.flagged = g, f
    return Localization(case_id=case_id, mode=mode, reference=reference, candidate=candidate,
                        positions=positions, layers=layers, first_flagged=first,
                        first_flagged_name=layers[first].name if first is not None else None,
                        growth=growth, floor=floor,
                        rule=RULE_TEXT.format(growth=growth, floor=floor), notes=list(notes or []))


def localize_states(case_id: str, names: Sequence[str], ref_states: Sequence[np.ndarray],
                    cand_states: Sequence[np.ndarray], reference: str = "reference",
                    candidate: str = "candidate", growth: float = GROWTH,
                    floor: float = FLOOR) -> Localization:
    """Full comparison: both sides' per-layer hidden states, (T, d) each, same names."""
    if len(ref_states) != len(cand_states):
        raise ValueError(f"the reference has {len(ref_states)} layers and the candidate "
                         f"{len(cand_states)}")
    layers = [layer_metrics(i, n, r, c)
              for i, (n, r, c) in enumerate(zip(names, ref_states, cand_states))]
    positions = int(np.asarray(ref_states[0]).shape[0]) if len(ref_states) else 0
    return _assemble(case_id, "full", reference, candidate, positions, layers, growth, floor)


def localize_sketch(case_id: str, record: dict, names: Sequence[str],
                    cand_states: Sequence[np.ndarray], reference: str = "golden",
                    candidate: str = "candidate", growth: float = GROWTH,
                    floor: float = FLOOR) -> Localization:
    """Golden-only comparison: the golden's stored sketch against the candidate's states."""
    spec = sk.spec_of(record)
    ref_names = [layer["name"] for layer in record["layers"]]
    notes = []
    if list(names) != ref_names:
        raise ValueError(f"the golden's sketch has layers {_span(ref_names)} but the candidate "
                         f"returns {_span(list(names))}")
    length = int(np.asarray(cand_states[0]).shape[0]) if len(cand_states) else 0
    if record.get("length") is not None and length != int(record["length"]):
        raise ValueError(f"the golden's sketch covers {record['length']} positions, the "
                         f"candidate's sequence has {length}")
    ref_v = sk.stored_vectors(record)
    cand_v = sk.sketch_states(cand_states, spec)
    layers = []
    for i, name in enumerate(names):
        h = np.asarray(cand_states[i], dtype=np.float64)
        cand_norms = [float(np.linalg.norm(h[p])) for p in spec.positions]
        norms = np.asarray(spec.norms[i], dtype=np.float64)
        layers.append(sketch_layer_metrics(i, name, ref_v[i], cand_v[i], norms, cand_norms))
    notes.append(f"estimated from the golden's {spec.dims}-dim sketch of {len(spec.positions)} "
                 "positions; element-wise errors need the reference live (--against)")
    return _assemble(case_id, "sketch", reference, candidate, len(spec.positions), layers,
                     growth, floor, notes)


def _span(names: list[str]) -> str:
    return f"{names[0]} … {names[-1]} ({len(names)})" if names else "none"


# -- capture ---------------------------------------------------------------------------

def layer_names(decoder_layers: int) -> list[str]:
    """embedding, layer.0 … layer.{n-1}, final_norm."""
    return ["embedding"] + [f"layer.{i}" for i in range(decoder_layers)] + ["final_norm"]


def teacher_forced_ids(record: dict) -> list[int]:
    """The sequence a golden case is scored on: prompt ids + output ids, last one dropped."""
    full = list(record["prompt_ids"]) + list(record["output_ids"])
    return full[:-1] if record["output_ids"] else full


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
    norm = _final_norm(getattr(backend, "model", None))
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
        from specengine.errors import BackendUnavailable

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
    config = getattr(getattr(backend, "model", None), "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    n = getattr(config, "num_hidden_layers", None)
    return int(n) if isinstance(n, int) else None


# -- running: golden sketches, check --localize, the localize command -----------------------

def sketch_for_record(backend: Any, record: dict) -> dict | None:
    """The layer sketch a golden stores for a case (None when the backend has no states)."""
    from specengine.errors import BackendUnavailable

    try:
        names, states = capture(backend, teacher_forced_ids(record))
    except BackendUnavailable:
        return None
    return sk.record_sketch(states, names)


def localize_record(backend: Any, record: dict, case_id: str, *, candidate: str,
                    reference: str, ref_states: tuple[list[str], list[np.ndarray]] | None = None,
                    growth: float = GROWTH, floor: float | None = None,
                    dtypes: Sequence[str | None] = ()) -> Localization:
    """Localize one case on a loaded candidate: against the reference's full states when
    given (live), else against the record's stored sketch (golden alone)."""
    from specengine.errors import GoldenError, UsageError

    floor = default_floor(*dtypes) if floor is None else float(floor)
    names, states = capture(backend, teacher_forced_ids(record))
    if ref_states is not None:
        ref_names, ref = ref_states
        if list(ref_names) != list(names) or any(np.shape(a) != np.shape(b)
                                                 for a, b in zip(ref, states)):
            raise UsageError(f"case '{case_id}': the reference returns layers "
                             f"{_span(list(ref_names))} and the candidate {_span(list(names))} "
                             "(of other shapes): they are not the same architecture")
        return localize_states(case_id, names, ref, states, reference, candidate, growth, floor)
    if not record.get("sketch"):
        raise GoldenError(f"the golden of case '{case_id}' has no layer sketch (recorded before "
                          "sketches existed, or by a backend without hidden states): re-record "
                          "it with `specengine record-golden --update`, or localize against a "
                          "live reference with --against")
    try:
        return localize_sketch(case_id, record["sketch"], names, states, reference, candidate,
                               growth, floor)
    except ValueError as exc:
        raise GoldenError(f"case '{case_id}': {exc}") from None


def localize_failed_case(session: Any, result: Any, record: dict, reference: str,
                         ref_dtype: str | None,
                         ref_states: tuple[list[str], list[np.ndarray]] | None = None,
                         live: bool = False) -> None:
    """`check --localize`: attach the localization of a failing case to its result (a
    problem becomes the localization's `error`, never a lost check)."""
    from specengine.errors import SpecEngineError, UsageError

    try:
        if live and ref_states is None:
            raise UsageError(f"the reference '{reference}' returned no hidden states")
        loc = localize_record(session.backend, record, result.id, candidate=session.config.name,
                              reference=reference, ref_states=ref_states,
                              dtypes=(session.config.dtype, ref_dtype))
        result.localization = loc.to_dict()
    except SpecEngineError as exc:
        result.localization = {"case_id": result.id, "error": exc.one_line()}


def localize_spec(spec: Any, case_ids: list[str] | None, backend: str, against: str | None,
                  golden_dir: Any, growth: float = GROWTH,
                  floor: float | None = None, path: str = "prefill") -> list[Localization]:
    """`specengine localize`: the selected cases of a spec, candidate `backend` against a
    live `against` backend (full hidden states) or against the golden's sketch alone.
    With `path="decode"` each case's decode path is localized against the candidate's own
    one-pass forward instead (on the golden's, or the live reference's, sequence)."""
    from specengine.backends.registry import config_for

    from specengine.golden import golden_path, load_golden
    from specengine.progress import bar
    from specengine.run import _check_staleness, record_case, select_cases
    from specengine.errors import UsageError
    from specengine.loading.session import open_session

    if getattr(spec, "kind", "causal-lm") != "causal-lm":
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
        _check_staleness(spec, golden, ref_name, cases)
        records = {case.id: golden.cases[case.id] for case in cases}
        ref_dtype = golden.data.get("recorded_with", {}).get("dtype")
        reference = f"golden {ref_name}"
    session = open_session(spec, cand_name)
    try:
        out = []
        for case in bar(cases, f"localize {spec.name} on {cand_name}", len(cases)):
            if path == "decode":
                from specengine.kinds.causal_lm.localize_decode import localize_decode_record

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
    """A self-contained HTML page (engine/templates/localize.html.j2) for the command."""
    from specengine.report.render import environment

    dicts = [loc.to_dict() for loc in locs]
    first = locs[0] if locs else None
    return environment().get_template("localize.html.j2").render(
        locs=dicts, spec_name=spec_name, candidate=first.candidate if first else "",
        reference=first.reference if first else "")


def to_json(locs: Sequence[Localization], spec_name: str) -> str:
    import json

    return json.dumps({"format": 1, "spec": spec_name, "localizations": [l.to_dict() for l in locs]},
                      indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)


def cli_main(args: Any, load_specs: Any) -> int:
    """`specengine localize SPEC --backend X [--against Y] [--case ID]...`: prints the
    per-layer table of each case; --json / --html write them. Exit 1 when a layer is
    flagged in some case, 0 when none is."""
    from specengine.golden import default_golden_dir
    from specengine.report.files import atomic_write as atomic_write_text

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
