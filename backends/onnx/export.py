"""Automatic ONNX export of a model source, cached by content.

The graph is one decoder step with explicit state, exported with transformers' ONNX
exporter (`torch.export` + `torch.onnx`):

    input_ids [1, S], position_ids [1, S], input.past_key_values.* (the cache's tensors)
      -> logits [1, S, vocab], output.past_key_values.* (the cache after the step)

Fed an empty state it is the prefill, so one graph serves generation (prefill, then one
token per step) and teacher-forced scoring. Attention-only models export it with a
dynamic S (the whole prompt in one call); models whose cache holds recurrent state
(Qwen3.5's gated delta net, its causal conv) export it with S = 1 and run the prompt one
token at a time, which keeps the graph free of the chunked scan that has no fixed-size
ONNX form. Mixture-of-experts layers are traced with transformers' `batched_mm` experts
(every token gathers its top-k experts' weights and the results are summed with the
routing weights): the same arithmetic as the eager loop, without data-dependent shapes.

Every export is checked against torch float32 before it is cached (max |Δ logit| on a
probe sequence, prefill and single steps); the number is stored with the graph.
The cache folder is `cache_dir()/onnx/<key>/` with key = sha256 of the model's content
fingerprint, the export settings and the library versions, written to a temporary folder
and renamed into place. `EXPORTS` counts the exports this process performed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import time
import warnings
from pathlib import Path
from typing import Any

from specengine.errors import BackendUnavailable
from specengine.backends.onnx.graph import OnnxGraph
from specengine.backends.onnx.patches import export_friendly
from specengine.backends.torch.models import load_torch_model
from specengine.files import building_dir, cache_dir, read_json
from specengine.files import offline
from specengine.progress import step
from specengine.errors import UsageError

RECIPE = "hf-decode-step/3"       # bump when the export recipe changes what it writes
GRAPH_FILE = "model.onnx"
META_FILE = "specengine-onnx.json"
EXPORTS = 0                       # exports performed by this process (tests assert on it)

# Options of a backend entry that change the exported graph (part of the cache key).
EXPORT_OPTIONS = {
    "optimize": False,            # onnxscript's graph optimizer (ONNX Runtime optimizes anyway)
    "ort_fusions": None,          # None | "cpu" | "cuda": fuse into ONNX Runtime contrib ops
    "opset": None,                # ONNX opset; None = the exporter's default
    "multi_token": "auto",        # "auto" | true | false: prompt in one call or token by token
    "experts": "batched_mm",      # MoE expert implementation traced into the graph
    "validate_atol": None,        # max |Δ logit| accepted by the post-export check
}


def export_settings(options: dict[str, Any], dtype: str) -> dict[str, Any]:
    export = dict(EXPORT_OPTIONS)
    export.update({k: v for k, v in (options.get("export") or {}).items()})
    unknown = sorted(set(export) - set(EXPORT_OPTIONS))
    if unknown:
        raise UsageError(f"unknown onnx export option(s) {unknown} (known: "
                         f"{', '.join(EXPORT_OPTIONS)})")
    export["dtype"] = dtype
    return export


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def export_key(fingerprint: str, settings: dict[str, Any]) -> str:
    payload = {"recipe": RECIPE, "fingerprint": fingerprint, "settings": settings,
               "versions": library_versions()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cached_graph(resolved, settings: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The exported graph of `resolved` (exporting it first if the cache lacks it) and its
    metadata (`meta["exported_now"]` says whether this call exported)."""

    key = export_key(resolved.fingerprint, settings)
    folder = cache_dir() / "onnx" / key
    meta = read_json(folder / META_FILE)
    if meta is not None and (folder / GRAPH_FILE).is_file():
        return folder / GRAPH_FILE, dict(meta, exported_now=False)

    with step(f"exporting {resolved.origin} to ONNX (once, cached in {folder})"):
        with building_dir(folder) as tmp:
            meta = _export(resolved, settings, tmp)
            meta.update(key=key, fingerprint=resolved.fingerprint, settings=settings,
                        versions=library_versions(), recipe=RECIPE)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    global EXPORTS
    EXPORTS += 1
    return folder / GRAPH_FILE, dict(meta, exported_now=True)


# -- the export itself ------------------------------------------------------------------

def _export(resolved, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with _quiet(log):
            meta = _trace_and_save(resolved, settings, out)
    except BackendUnavailable:
        raise
    except Exception as exc:  # the exporters raise many kinds
        raise BackendUnavailable(_failure_message(resolved, exc, log.getvalue())) from None
    meta["export_s"] = round(time.perf_counter() - start, 1)
    (out / "export.log").write_text(log.getvalue())
    return meta


def _trace_and_save(resolved, settings: dict[str, Any], out: Path) -> dict[str, Any]:

    offline()
    import onnx_ir
    import torch
    from transformers import GenerationConfig
    from transformers.exporters.configs import OnnxConfig
    from transformers.exporters.exporter_onnx import OnnxExporter
    from transformers.exporters.utils import decompose_for_generation, get_leaf_tensors

    model = load_torch_model(resolved, settings["dtype"], "cpu")
    ids = probe_ids(model.config)
    with torch.no_grad():
        cache = model(input_ids=ids[:, :2], use_cache=True).past_key_values
    leaves = get_leaf_tensors(cache)
    recurrent = [name for name in leaves if not _is_kv(name)]
    multi = settings["multi_token"]
    multi = not recurrent if multi == "auto" else bool(multi)
    gen = GenerationConfig(do_sample=False, pad_token_id=_pad_id(model.config))
    with export_friendly(model, settings["experts"]) as rewrites:
        parts = decompose_for_generation(model, {"input_ids": ids[:, :8],
                                                 "attention_mask": torch.ones_like(ids[:, :8])},
                                         generation_config=gen, multi_token_decode=multi)
        step_model, step_inputs = parts["decode"]
        config = OnnxConfig(dynamic=True,
                            dynamic_shapes=_dynamic_shapes(step_model, step_inputs, multi),
                            optimize=bool(settings["optimize"] or settings["ort_fusions"]),
                            ort_fusions=settings["ort_fusions"], opset_version=settings["opset"])
        exported = OnnxExporter().export(step_model, step_inputs, config)
    onnx_ir.save(exported.program, str(out / GRAPH_FILE), external_data=f"{GRAPH_FILE}.data")
    state = {name: _empty_shape(name, tensor) for name, tensor in leaves.items()}
    meta = {"graph": "kv", "multi_token": multi, "architecture": type(model).__name__,
            "model_type": getattr(model.config, "model_type", ""),
            "state_shapes": state, "recurrent_state": recurrent, "rewrites": rewrites}
    meta["validation"] = _validate(model, out / GRAPH_FILE, meta, ids, settings)
    return meta


def _is_kv(name: str) -> bool:
    return name.endswith(".keys") or name.endswith(".values")


def _empty_shape(name: str, tensor) -> list[int]:
    shape = list(tensor.shape)
    if _is_kv(name):
        shape[-2] = 0                 # (batch, kv heads, past length, head dim)
    shape[0] = 1
    return shape


def _pad_id(config) -> int:
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, attr, None)
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def probe_ids(config):
    """A fixed, model-independent token sequence (16 ids) for tracing and validation."""
    import torch

    vocab = int(getattr(config, "vocab_size", 0) or 256)
    return torch.tensor([[(7 + 131 * i) % vocab for i in range(16)]], dtype=torch.long)


def _dynamic_shapes(model, inputs: dict[str, Any], multi: bool) -> dict[str, Any]:
    """Only the sequence axes vary: the step length (when `multi`) and the past length.

    Marking every axis dynamic (the exporter's default) makes `torch.export` reason about
    symbols for heads and widths too, several times slower on a 30-layer model.
    """
    import torch
    from torch.export import Dim
    from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model

    register_cache_pytrees_for_model(model)
    step = Dim.DYNAMIC if multi else None
    shapes: dict[str, Any] = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            shapes[name] = {1: step} if (step is not None and value.dim() >= 2) else None
        elif value is None or isinstance(value, (bool, int, float, str)):
            continue
        else:
            shapes[name] = _cache_shapes(value)
    return shapes


def _cache_shapes(cache) -> list:
    import torch
    from torch.export import Dim
    from transformers.exporters.utils import get_leaf_tensors

    kinds = {id(t): _is_kv(n) for n, t in get_leaf_tensors(cache).items()}
    node = torch.utils._pytree.SUPPORTED_NODES[type(cache)]
    children, _ = node.flatten_fn(cache)
    out = []
    for child in children:
        if isinstance(child, torch.Tensor) and kinds.get(id(child)):
            out.append({child.dim() - 2: Dim.DYNAMIC})
        else:
            out.append(None)
    return out


def _validate(model, path: Path, meta: dict[str, Any], ids, settings) -> dict[str, Any]:
    """Max |Δ logit| of the graph vs torch float32 over the probe: prefill of 10 tokens,
    then 6 single steps. Raises BackendUnavailable above the tolerance."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits[0].float().numpy()
    graph = OnnxGraph(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), meta)
    seq = [int(x) for x in ids[0]]
    prefill, cursor = graph.prefill(seq[:10])
    steps = [graph.advance(cursor, token) for token in seq[10:-1]]
    got = np.concatenate([prefill, np.stack(steps)])
    diff = float(np.abs(got - ref[:-1]).max())
    scale = float(np.abs(ref).max())
    atol = settings.get("validate_atol") or max(1e-3, 1e-4 * scale)
    if not np.isfinite(diff) or diff > atol:
        raise BackendUnavailable(
            f"the ONNX export of {meta['architecture']} disagrees with torch float32: max |Δ logit| "
            f"{diff:.3g} > {atol:.3g} on the probe sequence (logits up to {scale:.3g}); supply a "
            "checked graph with options.onnx_file")
    return {"max_abs_logit_diff": diff, "atol": atol, "logit_absmax": scale,
            "tokens": len(seq), "prefill_tokens": 10}


# -- quiet exporter, readable failures --------------------------------------------------

@contextlib.contextmanager
def _quiet(log: io.StringIO):
    """The exporters print progress lines and warnings: keep them in the export log."""
    from transformers.utils import logging as hf_logging

    handler = logging.StreamHandler(log)
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir", "transformers")]
    saved = [(lg, lg.level, lg.propagate) for lg in loggers]
    old_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    old_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)     # torch.onnx's registry warns through its own handlers
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.ERROR)
        lg.propagate = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        hf_logging.set_verbosity(old_verbosity)
        logging.disable(old_disable)


_OPERATOR_PATTERNS = (
    re.compile(r"\b(aten[.:]{1,2}[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)?)"),
    re.compile(r"\b(torch\.ops\.[\w]+\.[\w]+)"),
    re.compile(r"\b(transformers[.:]{1,2}[\w]+)"),
)


def failing_operator(text: str) -> str | None:
    """The operator an exporter error names, if any (aten::diff, torch.ops.x.y, ...)."""
    for pattern in _OPERATOR_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1).replace("::", ".")
    if "GuardOnDataDependentSymNode" in text or "data-dependent" in text.lower():
        return "data-dependent control flow (a shape or branch decided by tensor values)"
    return None


def _failure_message(resolved, exc: Exception, log: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    while cause is not None:
        text += f"\n{type(cause).__name__}: {cause}"
        cause = cause.__cause__
    operator = failing_operator(text) or failing_operator(log)
    first = " ".join(str(exc).split())[:300]
    what = (operator if operator and " " in operator else
            f"operator {operator}" if operator else type(exc).__name__)
    return (f"cannot export {resolved.origin} to ONNX ({what}): {first}. Export the graph "
            "yourself (input_ids [1, S] -> logits [1, S, vocab], optionally with past state "
            "inputs/outputs) and name it in the spec: backends: {onnx: {runtime: onnx, options: "
            "{onnx_file: path/to/model.onnx}}}")


def describe_export(meta: dict[str, Any]) -> dict[str, Any]:
    """The export facts a report shows (key, graph kind, validation diff, time)."""
    out = {"onnx_graph": ("kv, prompt in one call" if meta.get("multi_token")
                          else "kv, one token per call"),
           "onnx_export_key": meta.get("key"), "onnx_export_recipe": meta.get("recipe")}
    val = meta.get("validation") or {}
    if val:
        out["onnx_export_max_abs_logit_diff"] = val.get("max_abs_logit_diff")
    if meta.get("rewrites"):
        out["onnx_rewrites"] = ", ".join(meta["rewrites"])
    out["onnx_exported_now"] = bool(meta.get("exported_now"))
    return out

