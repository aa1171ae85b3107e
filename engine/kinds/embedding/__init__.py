"""`model.kind: embedding`: text encoders and vision towers judged by their features.

For each case (a batch of texts, image files or seeded synthetic images) the reference
golden stores the pooled feature of every input and the last hidden state of every
non-padding token (engine/embedding_golden.py says how). `check` runs the candidate on
the same inputs and compares, per output (engine/embedding_compare.py has the
definitions): cosine similarity (minimum over inputs, resp. tokens), max abs error, max
relative error, and the shares of elements with relative error under 0.001 and 0.005;
then repeats the case (`determinism.runs`) for bit-identical outputs. Tolerances come
from `defaults.tolerance` with per-case overrides. `check --perf` measures inputs/s and
batch latency per batch size.

Pooling is done here, in float64 from the backend's last hidden state (or the model's own
pooler output), so every backend is pooled the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from specengine.compare.arrays import ArrayStats, array_stats
from specengine.kinds.embedding.golden import (build_embedding_golden, case_outputs,
    describe_embedding_changes, embedding_case_hash, encode_array, load_embedding_golden)
from specengine.kinds.embedding.inputs import InputPreparer, PreparedInputs
from specengine.errors import BackendCrashed, GoldenError, SpecEngineError
from specengine.results import ERROR, FAIL, PASS, CaseResult, Check, RunResult, Side

OUTPUTS = ("pooled", "last_hidden_state")


# -- spec ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddingTolerance:
    cosine_min: float = 0.999
    hidden_cosine_min: float = 0.99
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    rel_share_1e3_min: float | None = None
    rel_share_5e3_min: float | None = None

    def merged(self, override: dict | None) -> "EmbeddingTolerance":
        return replace(self, **override) if override else self

    def as_dict(self) -> dict:
        return dict(self.__dict__)


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
class EmbeddingCase:
    id: str
    texts: list[str] | None
    images: list[str] | None              # expanded paths
    images_written: list[str] | None      # as written in the spec
    synthetic: dict | None                # {count, seed}
    tags: tuple[str, ...]
    tolerance: EmbeddingTolerance
    determinism: Any
    line: int = 0

    def describe(self) -> str:
        if self.texts is not None:
            return "\n".join(self.texts)
        if self.images is not None:
            return "images: " + ", ".join(self.images_written or [])
        return (f"{self.synthetic['count']} synthetic image(s), seed "
                f"{self.synthetic.get('seed', 0)}")


def build_embedding_cases(located, data: dict, determinism, base_dir: Path):
    """(cases, settings) of an embedding spec; SpecError with file:line:col."""
    from specengine.spec import _expand_path

    defaults = data.get("defaults") or {}
    tol = EmbeddingTolerance().merged(defaults.get("tolerance"))
    settings = EmbeddingSettings.from_dict(data.get("embedding"))
    cases, seen = [], {}
    for i, entry in enumerate(data["cases"]):
        cid = entry["id"]
        if cid in seen:
            raise located.error(("cases", i, "id"),
                                f"duplicate case id '{cid}' (first at case {seen[cid] + 1})")
        seen[cid] = i
        images = written = None
        if "images" in entry:
            written = list(entry["images"])
            images = [_expand_path(located, ("cases", i, "images", j), w, base_dir)[0]
                      for j, w in enumerate(written)]
        synthetic = None
        if "synthetic_images" in entry:
            synthetic = {"count": entry["synthetic_images"]["count"],
                         "seed": entry["synthetic_images"].get("seed", 0)}
        cases.append(EmbeddingCase(
            id=cid, texts=list(entry["texts"]) if "texts" in entry else None, images=images,
            images_written=written, synthetic=synthetic, tags=tuple(entry.get("tags", ())),
            tolerance=tol.merged(entry.get("tolerance")),
            determinism=determinism.merged(entry.get("determinism")),
            line=located.where(("cases", i))[0]))
    return cases, settings


# -- pooling (pure) --------------------------------------------------------------------

def sentence_transformers_pooling(hf_dir: Path) -> tuple[str | None, bool]:
    """(pooling mode, normalize) from a sentence-transformers folder's modules.json."""
    try:
        modules = json.loads((Path(hf_dir) / "modules.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None, False
    mode, normalize = None, False
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            try:
                cfg = json.loads((Path(hf_dir) / module.get("path", "") / "config.json").read_text("utf-8"))
            except (OSError, ValueError):
                cfg = {}
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
            else:
                mode = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    return mode, normalize


def resolve_pooling(settings: EmbeddingSettings, hf_dir: Path, has_pooler: bool) -> tuple[str, bool]:
    st_mode, st_norm = sentence_transformers_pooling(hf_dir)
    pooling = settings.pooling
    if pooling == "auto":
        pooling = st_mode or ("pooler" if has_pooler else "cls")
    normalize = st_norm if settings.normalize == "auto" else bool(settings.normalize)
    return pooling, normalize


def pool(hidden: np.ndarray, mask: np.ndarray | None, pooling: str,
         pooler_output: np.ndarray | None, normalize: bool) -> np.ndarray:
    """(n, d) pooled features in float32, computed in float64."""
    h = np.asarray(hidden, dtype=np.float64)
    m = np.ones(h.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if pooling == "mean":
        w = m[..., None].astype(np.float64)
        out = (h * w).sum(1) / np.maximum(w.sum(1), 1.0)
    elif pooling == "max":
        out = np.where(m[..., None], h, -np.inf).max(1)
    elif pooling == "cls":
        out = h[:, 0, :]
    elif pooling == "pooler":
        if pooler_output is None:
            raise BackendCrashed("the golden was pooled with the model's pooler_output, which "
                                 "this backend does not return")
        out = np.asarray(pooler_output, dtype=np.float64)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    if normalize:
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out.astype(np.float32)


def valid_tokens(hidden: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
    """The non-padding token rows of a (n, t, d) hidden state, concatenated, and lengths."""
    if mask is None:
        n, t = hidden.shape[:2]
        return hidden.reshape(n * t, -1), [t] * n
    m = np.asarray(mask, dtype=bool)
    return hidden[m], [int(x) for x in m.sum(1)]


# -- session ---------------------------------------------------------------------------

@dataclass
class EmbeddingSession:
    spec: Any
    config: Any
    backend: Any
    resolved: Any
    preparer: InputPreparer
    model_override: bool
    prepared: dict[str, PreparedInputs] = field(default_factory=dict)

    def inputs(self, case: EmbeddingCase) -> PreparedInputs:
        if case.id not in self.prepared:
            self.prepared[case.id] = prepare(self.preparer, case)
        return self.prepared[case.id]

    def forward(self, prepared: PreparedInputs):
        try:
            return self.backend.embed(prepared.feeds)
        except SpecEngineError:
            raise
        except RuntimeError as exc:
            raise BackendCrashed(f"backend '{self.config.name}' forward failed: "
                                 f"{' '.join(str(exc).split())[:300]}") from None

    def outputs(self, prepared: PreparedInputs, pooling: str, normalize: bool,
                names: tuple[str, ...]) -> dict[str, np.ndarray]:
        emb = self.forward(prepared)
        out: dict[str, Any] = {}
        if "pooled" in names:
            out["pooled"] = pool(emb.last_hidden_state, prepared.mask, pooling,
                                 emb.pooler_output, normalize)
        if "last_hidden_state" in names:
            rows, lengths = valid_tokens(emb.last_hidden_state, prepared.mask)
            out["last_hidden_state"] = rows.astype(np.float32)
            out["lengths"] = lengths
        out["_has_pooler"] = emb.pooler_output is not None
        return out

    def side(self) -> Side:
        env = self.backend.environment()
        return Side(backend=self.config.name, runtime=env.get("runtime", self.config.runtime),
                    device=env.get("device", self.config.device),
                    device_name=env.get("device_name", ""),
                    dtype=env.get("dtype", self.config.dtype), versions=env.get("versions", {}),
                    model_fingerprint=self.resolved.fingerprint, model_source=self.resolved.origin,
                    model_override=self.model_override,
                    trust_remote_code=self.resolved.spec.trust_remote_code,
                    settings=env.get("settings", {}))

    def close(self) -> None:
        self.backend.close()


def prepare(preparer: InputPreparer, case: EmbeddingCase) -> PreparedInputs:
    if case.texts is not None:
        return preparer.texts(case.texts)
    if case.images is not None:
        return preparer.files(case.images, case.images_written)
    return preparer.synthetic(case.synthetic["count"], case.synthetic.get("seed", 0))


def create_backend(config):
    """The registry's backend for the config; an ONNX backend without encoder support is
    replaced by the encoder exporter of backends/onnx_encoder.py."""
    from specengine.backends.registry import backend_class, create

    if config.runtime == "onnx":
        try:
            cls = backend_class(config)
        except SpecEngineError:
            cls = None
        if cls is None or not getattr(cls, "supports_embedding", False):
            from specengine.backends.onnx.encoder import OnnxEncoderBackend

            return OnnxEncoderBackend(config)
    return create(config)


def open_embedding_session(spec, backend_name: str) -> EmbeddingSession:
    from specengine.backends.registry import config_for

    from specengine.progress import step
    from specengine.loading.session import model_for
    from specengine.loading.sources import resolve

    config = config_for(backend_name, spec.backends)
    model, override = model_for(spec, config.name)
    resolved = resolve(as_embedding(model))
    backend = create_backend(config)
    with step(f"loading {resolved.origin} on {config.name}"):
        backend.load(resolved)
    base = resolve(spec.model) if override else resolved
    return EmbeddingSession(spec, config, backend, resolved,
                            InputPreparer(base.hf_dir, spec.settings, spec.model.where), override)


def as_embedding(model):
    """A backend's `model:` override in an embedding spec is an embedding model too."""
    return model if model.kind == "embedding" else replace(model, kind="embedding")


def reference_preparer(spec) -> tuple[Any, InputPreparer]:
    from specengine.loading.sources import resolve

    base = resolve(spec.model)
    return base, InputPreparer(base.hf_dir, spec.settings, spec.model.where)


# -- recording -------------------------------------------------------------------------

def _check_finite(arrays: dict, name: str, case_id: str) -> None:
    for key in OUTPUTS:
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise BackendCrashed(f"backend '{name}' produced NaN/Inf in {key} on case "
                                 f"'{case_id}'; refusing to record it as a golden")


def _record_cases(session: EmbeddingSession, cases, echo_bar: str) -> tuple[dict, dict]:
    from specengine.progress import cases as progress_cases

    spec = session.spec
    records: dict[str, dict] = {}
    resolved_settings: dict | None = None
    action, _, backend = echo_bar.partition(f" {spec.name} on ")
    for case in progress_cases(cases, action, spec.name, backend):
        prepared = session.inputs(case)
        if resolved_settings is None:
            probe = session.forward(prepared)
            pooling, normalize = resolve_pooling(spec.settings, session.preparer.dir,
                                                 probe.pooler_output is not None)
            resolved_settings = {"pooling": pooling, "normalize": normalize,
                                 "outputs": list(spec.settings.outputs)}
        out = session.outputs(prepared, resolved_settings["pooling"],
                              resolved_settings["normalize"], spec.settings.outputs)
        _check_finite(out, session.config.name, case.id)
        encoded = {}
        if "pooled" in out:
            encoded["pooled"] = encode_array(out["pooled"])
        if "last_hidden_state" in out:
            encoded["last_hidden_state"] = encode_array(out["last_hidden_state"],
                                                        lengths=out["lengths"])
        records[case.id] = {
            "hash": embedding_case_hash(prepared.digest, spec.settings.hashed(),
                                        session.resolved.fingerprint),
            "inputs": prepared.described, "outputs": encoded}
    return records, resolved_settings or {"pooling": "cls", "normalize": False,
                                          "outputs": list(spec.settings.outputs)}


def record_embedding_golden(spec, backend_name: str, golden_dir: Path, update: bool = False,
                            echo: Callable[[str], None] = print) -> Path:
    """Record every case of an embedding spec into golden/<spec>/<backend>.json."""
    from specengine.backends.registry import config_for

    from specengine.golden import golden_path, previous_golden, write_golden

    name = config_for(backend_name, spec.backends).name
    path = golden_path(golden_dir, spec.name, name)
    old = previous_golden(path, update,
                          lambda p: load_embedding_golden(p, spec.name).data, echo)
    session = open_embedding_session(spec, name)
    try:
        records, settings = _record_cases(session, spec.cases, f"record {spec.name} on {name}")
        side = session.side()
    finally:
        session.close()
    env = {k: v for k, v in side.__dict__.items() if k not in ("model_fingerprint", "model_source")}
    data = build_embedding_golden(spec.name, name, session.resolved.fingerprint,
                                  session.resolved.origin, env, settings, records)
    if old is not None:
        echo(f"changes in {path}:")
        for line in describe_embedding_changes(old, data):
            echo(line)
    write_golden(path, data)
    return path


# -- checking --------------------------------------------------------------------------

def check_embedding_spec(spec, backend_name: str, golden_dir: Path | None = None,
                         against: str | None = None, cases=None, fail_fast: bool = False,
                         perf: bool = False) -> RunResult:
    from specengine.backends.registry import config_for

    from specengine.golden import Golden, golden_path
    from specengine.progress import cases as progress_cases
    from specengine.run import _golden_side, comparison_label

    started = time.perf_counter()
    cases = list(spec.cases if cases is None else cases)
    cand_name = config_for(backend_name, spec.backends).name
    if against:
        ref_name = config_for(against, spec.backends).name
        ref = open_embedding_session(spec, ref_name)
        try:
            records, settings = _record_cases(ref, cases, f"reference {spec.name} on {ref_name}")
            ref_side = ref.side()
        finally:
            ref.close()
        data = build_embedding_golden(spec.name, ref_name, ref.resolved.fingerprint,
                                      ref.resolved.origin, {}, settings, records)
        golden, ref_kind = Golden(Path(f"<live {ref_name}>"), data), "live"
    else:
        golden = load_embedding_golden(golden_path(golden_dir, spec.name, spec.reference), spec.name)
        check_staleness(spec, golden, cases)
        ref_side, ref_kind = _golden_side(golden), "golden"
    session = open_embedding_session(spec, cand_name)
    try:
        cand_side = session.side()
        run = RunResult(spec_name=spec.name, spec_path=str(spec.path), command="check",
                        candidate=cand_side, reference=ref_side,
                        comparison=comparison_label(cand_side, ref_side), reference_kind=ref_kind)
        if session.model_override:
            run.notes.append(f"candidate '{cand_name}' runs its own model: {session.resolved.origin}")
        for case in progress_cases(cases, "check", spec.name, cand_name, run.cases):
            result = check_case(session, case, golden)
            run.cases.append(result)
            run.notes.append(case_note(result))
            if fail_fast and result.status != PASS:
                run.notes.append("stopped at the first failing case (--fail-fast)")
                break
        if perf:
            run.perf = measure_perf(session, spec, cases)
            run.notes += run.perf.get("lines", [])
        run.candidate = session.side()
    finally:
        session.close()
    run.finish()
    if run.perf and run.perf.get("status") == ERROR:
        run.status = ERROR
    run.duration_s = time.perf_counter() - started
    return run


def check_staleness(spec, golden, cases) -> None:
    """GoldenError (exit 2) naming the first case whose inputs, settings or model changed."""
    from specengine.backends.registry import config_for

    from specengine.loading.session import model_for
    from specengine.loading.sources import resolve

    name = config_for(spec.reference, spec.backends).name
    resolved = resolve(as_embedding(model_for(spec, name)[0]))
    if resolved.fingerprint != golden.data["model"]["fingerprint"]:
        raise GoldenError(f"golden {golden.path} was recorded from another model "
                          f"({golden.data['model']['fingerprint'][:23]}…, now "
                          f"{resolved.fingerprint[:23]}…); re-record it with --update")
    _, preparer = reference_preparer(spec)
    for case in cases:
        if case.id not in golden.cases:
            raise GoldenError(f"case '{case.id}' ({spec.path}:{case.line}) has no golden in "
                              f"{golden.path}; re-record with --update")
        digest = prepare(preparer, case).digest
        if embedding_case_hash(digest, spec.settings.hashed(), resolved.fingerprint) != \
                golden.cases[case.id]["hash"]:
            raise GoldenError(f"golden for case '{case.id}' ({spec.path}:{case.line}) is stale: "
                              "its inputs or embedding settings changed since it was recorded; "
                              "re-record with `specengine record-golden --update`")


def output_check(name: str, stats: ArrayStats, tol: EmbeddingTolerance) -> Check:
    """Judge one output's metrics against the tolerance (pure)."""
    cos_min = tol.cosine_min if name == "pooled" else tol.hidden_cosine_min
    per = "input" if name == "pooled" else "token"
    failures = []
    if not stats.finite:
        failures.append("candidate output contains NaN or Inf")
    if stats.cosine_min < cos_min:
        failures.append(f"cosine {stats.cosine_min:.6f} < {cos_min} ({per} {stats.worst_row})")
    for value, limit, label in ((stats.max_abs_err, tol.max_abs_err, "max abs err"),
                                (stats.max_rel_err, tol.max_rel_err, "max rel err")):
        if limit is not None and not value <= limit:
            failures.append(f"{label} {value:.3g} > {limit:g}")
    for value, limit, label in ((stats.rel_share_1e3, tol.rel_share_1e3_min, "rel err < 0.001"),
                                (stats.rel_share_5e3, tol.rel_share_5e3_min, "rel err < 0.005")):
        if limit is not None and value < limit:
            failures.append(f"share {label} {value:.1%} < {limit:.1%}")
    summary = (f"cosine min {stats.cosine_min:.6f} over {stats.rows} {per}s, max |Δ| "
               f"{stats.max_abs_err:.3g}, max rel {stats.max_rel_err:.3g}, rel<1e-3 "
               f"{stats.rel_share_1e3:.1%}, rel<5e-3 {stats.rel_share_5e3:.1%}")
    metrics = stats.as_dict()
    metrics["cosine_min_limit"] = cos_min
    metrics["tolerance"] = tol.as_dict()
    return Check(name, FAIL if failures else PASS,
                 ("; ".join(failures) + " — " + summary) if failures else summary, metrics)


def check_case(session: EmbeddingSession, case: EmbeddingCase, golden) -> CaseResult:
    start = time.perf_counter()
    result = CaseResult(id=case.id, status=PASS, line=case.line, tags=list(case.tags),
                        prompt=case.describe())
    try:
        _run_checks(session, case, golden, result)
    except BackendCrashed as exc:
        if "out of memory" in str(exc).lower():
            raise
        result.error = exc.one_line()
    except SpecEngineError:
        raise
    except Exception as exc:  # one broken case must not lose the others' results
        result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    statuses = {c.status for c in result.checks}
    result.status = ERROR if result.error or ERROR in statuses else FAIL if FAIL in statuses else PASS
    result.duration_s = time.perf_counter() - start
    return result


def _run_checks(session: EmbeddingSession, case: EmbeddingCase, golden, result: CaseResult) -> None:
    settings = golden.data["settings"]
    names = tuple(settings["outputs"])
    expected = case_outputs(golden, case.id)
    prepared = session.inputs(case)
    got = session.outputs(prepared, settings["pooling"], settings["normalize"], names)
    lengths = golden.cases[case.id]["outputs"].get("last_hidden_state", {}).get("lengths")
    if "lengths" in got and lengths is not None and list(got["lengths"]) != list(lengths):
        result.checks.append(Check("inputs", FAIL, f"candidate token counts {got['lengths']} "
                                   f"differ from the golden's {lengths}"))
        return
    for name in names:
        if expected[name].shape != got[name].shape:
            result.checks.append(Check(name, FAIL, f"shape {list(got[name].shape)} differs from "
                                       f"the golden's {list(expected[name].shape)}"))
            continue
        result.checks.append(output_check(name, array_stats(expected[name], got[name]),
                                          case.tolerance))
    det = case.determinism
    if det.runs > 1:
        worst, where = 0.0, ""
        for run_no in range(2, det.runs + 1):
            again = session.outputs(prepared, settings["pooling"], settings["normalize"], names)
            for name in names:
                diff = float(np.abs(again[name].astype(np.float64) - got[name]).max()) \
                    if got[name].size else 0.0
                if not np.isfinite(diff):
                    diff = float("inf")
                if diff > worst:
                    worst, where = diff, f"run {run_no} {name}"
        ok = worst <= det.atol
        message = (f"{det.runs} runs identical within atol {det.atol:g}" if ok else
                   f"{where} differs from run 1 by max |Δ| {worst:.3g} (atol {det.atol:g})")
        result.checks.append(Check("determinism", PASS if ok else FAIL, message,
                                   {"runs": det.runs, "max_abs_diff": worst, "atol": det.atol}))


def case_note(result: CaseResult) -> str:
    """One line per case for the terminal summary (whose columns are causal-lm metrics)."""
    bits = []
    for check in result.checks:
        if check.name in OUTPUTS and "cosine_min" in check.metrics:
            m = check.metrics
            bits.append(f"{check.name} cos min {m['cosine_min']:.6f}, max |Δ| "
                        f"{m['max_abs_err']:.3g}, rel<5e-3 {m['rel_share_5e3']:.1%}")
    text = "; ".join(bits) or (result.error or "no metrics")
    return f"{result.id} [{result.status}]: {text}"


# -- perf ------------------------------------------------------------------------------

def _percentiles(values: list[float], scale: float) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) * scale
    return {f"p{p}": float(np.percentile(arr, p)) for p in (50, 90, 99)}


def _cycle(feeds: dict[str, np.ndarray], count: int, batch: int) -> dict[str, np.ndarray]:
    idx = np.arange(batch) % count
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


def measure_perf(session: EmbeddingSession, spec, cases) -> dict[str, Any]:
    """Inputs/s and batch latency per batch size, on the first case's inputs cycled to the
    batch size; the device is synchronised around every timed call. Budgets from
    perf.budgets.<backend> (items_per_s.min, latency_ms percentiles, load_s.max)."""
    perf = spec.perf or {}
    warmup, runs = int(perf.get("warmup", 1)), int(perf.get("runs", 5))
    sizes = [int(b) for b in perf.get("batch_sizes", [1])]
    prepared = session.inputs(cases[0] if cases else spec.cases[0])
    sync = getattr(session.backend, "synchronize", lambda: None)
    rows = []
    try:
        for size in sizes:
            feeds = PreparedInputs(_cycle(prepared.feeds, prepared.count, size), size, None, {}, {})
            for _ in range(warmup):
                session.forward(feeds)
            times = []
            for _ in range(runs):
                sync()
                t0 = time.perf_counter()
                session.forward(feeds)
                sync()
                times.append(time.perf_counter() - t0)
            rows.append({"backend": session.config.name, "batch_size": size,
                         "latency_ms": _percentiles(times, 1000.0),
                         "items_per_s": float(size / np.median(times)), "unit": prepared.unit})
    except SpecEngineError:
        raise
    except Exception as exc:
        return {"status": ERROR, "failures": [f"perf measurement failed: {type(exc).__name__}: "
                                              f"{' '.join(str(exc).split())[:300]}"]}
    load_s = getattr(session.backend, "load_s", None)
    budget = (perf.get("budgets") or {}).get(session.config.name)
    failures = judge_budget(rows, load_s, budget)
    lines = [f"perf batch {r['batch_size']}: {r['items_per_s']:.1f} {r['unit']}/s, latency "
             f"p50/p90/p99 {r['latency_ms']['p50']:.2f}/{r['latency_ms']['p90']:.2f}/"
             f"{r['latency_ms']['p99']:.2f} ms" for r in rows]
    # `batches`, not `rows`: the report layer's perf rows are generation metrics (TTFT/TPOT)
    return {"status": (FAIL if failures else PASS) if budget else "measured", "batches": rows,
            "failures": failures, "load_s": load_s, "warmup": warmup, "runs": runs,
            "lines": lines}


def judge_budget(rows: list[dict], load_s: float | None, budget: dict | None) -> list[str]:
    """Budget failures (pure)."""
    if not budget:
        return []
    sizes = budget.get("batch_sizes")
    out = []
    for row in rows:
        if sizes and row["batch_size"] not in sizes:
            continue
        floor = (budget.get("items_per_s") or {}).get("min")
        if floor is not None and row["items_per_s"] < floor:
            out.append(f"batch {row['batch_size']}: {row['items_per_s']:.1f} {row['unit']}/s "
                       f"< budget {floor:g}")
        for pct, limit in (budget.get("latency_ms") or {}).items():
            if row["latency_ms"].get(pct, 0.0) > limit:
                out.append(f"batch {row['batch_size']}: latency {pct} "
                           f"{row['latency_ms'][pct]:.2f} ms > budget {limit:g} ms")
    limit = (budget.get("load_s") or {}).get("max")
    if limit is not None and load_s is not None and load_s > limit:
        out.append(f"load {load_s:.2f} s > budget {limit:g} s")
    return out
