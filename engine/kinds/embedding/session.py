"""An embedding model loaded on a backend: the one Session (loading.session) plus the
case inputs prepared once per case and the pooled / per-token outputs of a forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specengine.backends.base import Embedded
from specengine.kinds.embedding.inputs import InputPreparer, PreparedInputs
from specengine.kinds.embedding.pooling import pool, valid_tokens
from specengine.loading.session import Session, open_session
from specengine.loading.sources import ResolvedSource, resolve
from specengine.results import Side
from specengine.spec import EmbeddingCase, Spec

KIND = "embedding"


@dataclass
class EmbeddingSession:
    session: Session
    preparer: InputPreparer
    prepared: dict[str, PreparedInputs] = field(default_factory=dict)
    # pooling and normalisation resolved on the first case recorded (the golden's settings)
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> Spec:
        return self.session.spec

    @property
    def config(self):
        return self.session.config

    @property
    def backend(self):
        return self.session.backend

    @property
    def source(self) -> ResolvedSource:
        return self.session.resolved

    @property
    def model_override(self) -> bool:
        return self.session.model_override

    def inputs(self, case: EmbeddingCase) -> PreparedInputs:
        if case.id not in self.prepared:
            self.prepared[case.id] = prepare(self.preparer, case)
        return self.prepared[case.id]

    def forward(self, prepared: PreparedInputs) -> Embedded:
        return self.backend.embed(prepared.feeds)

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
        return self.session.side()

    def close(self) -> None:
        self.session.close()


def prepare(preparer: InputPreparer, case: EmbeddingCase) -> PreparedInputs:
    if case.texts is not None:
        return preparer.texts(case.texts)
    if case.images is not None:
        return preparer.files(case.images, case.images_written)
    return preparer.synthetic(case.synthetic["count"], case.synthetic.get("seed", 0))


def open_embedding_session(spec: Spec, backend_name: str) -> EmbeddingSession:
    """The backend loaded with its model as an embedding model, and the inputs preparer of
    the spec's model (its tokenizer / image processor settings)."""
    session = open_session(spec, backend_name, model_kind=KIND, tokenizer=False)
    base = resolve(spec.model) if session.model_override else session.resolved
    return EmbeddingSession(session, InputPreparer(base.hf_dir, spec.settings, spec.model.where))


def reference_preparer(spec: Spec) -> tuple[Any, InputPreparer]:
    base = resolve(spec.model)
    return base, InputPreparer(base.hf_dir, spec.settings, spec.model.where)
