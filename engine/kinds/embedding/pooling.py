"""Pooling, done here in float64 from the backend's last hidden state (or the model's own
pooler output), so every backend is pooled the same way (pure numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from specengine.errors import BackendCrashed
from specengine.spec.model import EmbeddingSettings


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
