"""The embedding kind's hooks into the one record/check skeleton (kinds.base): its
reference is a verified, fresh embedding golden (or the reference backend run live on
the same inputs), its candidate an embedding session, and each case is the outputs of
one forward pass compared per output, then repeated for determinism."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from specengine.backends.registry import config_for
from specengine.compare.tolerances import coarser, dtype_class
from specengine.errors import BackendCrashed, GoldenError
from specengine.golden.store import golden_path
from specengine.kinds.base import (CheckRequest, Kind, RecordRequest, closing_session, new_run,
                                   record_cases)
from specengine.kinds.embedding import golden as codec
from specengine.kinds.embedding.checks import case_note, check_case
from specengine.kinds.embedding.perf import measure_perf
from specengine.kinds.embedding.pooling import resolve_pooling
from specengine.kinds.embedding.session import (KIND, EmbeddingSession, open_embedding_session,
                                                prepare, reference_preparer)
from specengine.kinds.policy import not_run_cases
from specengine.loading.session import model_for
from specengine.loading.sources import resolve
from specengine.results import RunResult, Side
from specengine.spec import OUTPUTS, EmbeddingCase, Spec


@dataclass
class Reference:
    golden: codec.EmbeddingGolden
    side: Side
    kind: str                   # golden | live


@dataclass
class Candidate:
    session: EmbeddingSession
    klass: str = ""
    supported: bool = True


class Embedding(Kind):
    name = KIND

    @contextlib.contextmanager
    def reference(self, req: CheckRequest):
        spec = req.spec
        if req.against:
            ref_name = config_for(req.against, spec.backends).name
            with closing_session(open_embedding_session(spec, ref_name)) as ref:
                records = record_cases(req.cases, spec, ref_name,
                                       lambda case: record_case(ref, case), "reference")
                side = ref.side()
            yield Reference(_golden(spec, ref_name, ref, {}, records), side, "live")
            return
        golden = codec.load_embedding_golden(
            golden_path(req.golden_dir, spec.name, spec.reference), spec.name)
        problem = _staleness(spec, golden, list(req.cases))
        if problem:
            raise GoldenError(problem)
        yield Reference(golden, golden.side(), "golden")

    @contextlib.contextmanager
    def candidate(self, req: CheckRequest, ref: Reference):
        with closing_session(open_embedding_session(req.spec, req.candidate)) as session:
            yield Candidate(session)

    def start(self, req: CheckRequest, cand: Candidate, ref: Reference):
        side = cand.session.side()
        cand.klass = coarser(*(dtype_class(s.dtype, s.quantization) for s in (side, ref.side)))
        run = new_run(req.spec, side, ref.side, ref.kind, tolerance_class=cand.klass)
        if cand.session.model_override:
            run.notes.append(f"candidate '{req.candidate}' runs its own model: "
                             f"{cand.session.source.origin}")
        backend = cand.session.backend
        if backend.supports_embedding:
            return run, req.cases
        cand.supported = False
        not_run_cases(run, req.cases, "embedding", backend.unsupported.get("embedding") or
                      f"backend '{req.candidate}' ({backend.config.runtime}) cannot run "
                      "embedding models, so no case is compared", EmbeddingCase.describe)
        return run, ()

    def check_case(self, req: CheckRequest, cand: Candidate, ref: Reference,
                   case: EmbeddingCase):
        return check_case(cand.session, case, ref.golden,
                          req.spec.limits(case, cand.klass, req.candidate))

    def after_case(self, req, cand, ref, run: RunResult, case, result) -> None:
        run.notes.append(case_note(result))

    def finish(self, req: CheckRequest, cand: Candidate, ref: Reference, run: RunResult) -> None:
        if req.options.perf and cand.supported:
            run.perf = measure_perf(cand.session, req.spec, list(req.cases))
            run.notes += run.perf.get("lines", [])
        run.candidate = cand.session.side()

    # -- recording ------------------------------------------------------------------------
    def load_data(self, path: Path, spec_name: str) -> dict:
        return codec.load_embedding_data(path, spec_name)

    def describe_changes(self, old: dict, new: dict) -> list[str]:
        return codec.describe_embedding_changes(old, new)

    @contextlib.contextmanager
    def recorder(self, req: RecordRequest):
        with closing_session(open_embedding_session(req.spec, req.backend)) as session:
            yield session

    def record_case(self, req: RecordRequest, session: EmbeddingSession, case: EmbeddingCase):
        return record_case(session, case)

    def golden_data(self, req: RecordRequest, session: EmbeddingSession, side: Side,
                    records: Mapping[str, Any]) -> dict:
        golden = _golden(req.spec, req.backend, session, side.recorded(), records)
        return codec.build_embedding_golden(
            golden.spec, golden.backend, golden.fingerprint, golden.source,
            dict(golden.recorded_with), _settings(session, req.spec), golden.cases)


def record_case(session: EmbeddingSession, case: EmbeddingCase) -> codec.EmbeddingCaseRecord:
    """One case's golden record; the pooling is resolved on the first case recorded."""
    spec, resolved = session.spec, session.resolved
    prepared = session.inputs(case)
    if not resolved:
        probe = session.forward(prepared)
        pooling, normalize = resolve_pooling(spec.settings, session.preparer.dir,
                                             probe.pooler_output is not None)
        resolved.update(pooling=pooling, normalize=normalize,
                        outputs=list(spec.settings.outputs))
    out = session.outputs(prepared, resolved["pooling"], resolved["normalize"],
                          spec.settings.outputs)
    _check_finite(out, session.config.name, case.id)
    stored = {}
    if "pooled" in out:
        stored["pooled"] = codec.encode_array(out["pooled"])
    if "last_hidden_state" in out:
        stored["last_hidden_state"] = codec.encode_array(out["last_hidden_state"],
                                                         lengths=out["lengths"])
    return codec.EmbeddingCaseRecord(
        case.id, codec.embedding_case_hash(prepared.digest, spec.settings.hashed(),
                                           session.source.fingerprint),
        prepared.described, stored)


def _settings(session: EmbeddingSession, spec: Spec) -> dict:
    return dict(session.resolved) or {"pooling": "cls", "normalize": False,
                                      "outputs": list(spec.settings.outputs)}


def _golden(spec: Spec, backend: str, session: EmbeddingSession, environment: dict,
            records: Mapping[str, codec.EmbeddingCaseRecord]) -> codec.EmbeddingGolden:
    settings = _settings(session, spec)
    return codec.EmbeddingGolden(Path(f"<live {backend}>"), spec.name, backend,
                                 session.source.fingerprint, session.source.origin,
                                 environment, pooling=settings["pooling"],
                                 normalize=settings["normalize"],
                                 outputs=tuple(settings["outputs"]), cases=dict(records))


def _check_finite(arrays: dict, name: str, case_id: str) -> None:
    for key in OUTPUTS:
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise BackendCrashed(f"backend '{name}' produced NaN/Inf in {key} on case "
                                 f"'{case_id}'; refusing to record it as a golden")


def _staleness(spec: Spec, golden: codec.EmbeddingGolden, cases: list[EmbeddingCase]
               ) -> str | None:
    """The first case whose inputs, settings or model changed (None: the golden fits)."""
    model = model_for(spec, config_for(spec.reference, spec.backends).name)[0]
    resolved = resolve(model if model.kind == KIND else replace(model, kind=KIND))
    _, preparer = reference_preparer(spec)
    return codec.staleness(golden, resolved.fingerprint, spec.settings.hashed(),
                           [(case, prepare(preparer, case).digest) for case in cases],
                           str(spec.path))
