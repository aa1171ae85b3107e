"""The ONNX Runtime backend: an independent implementation of the same model.

The graph is `options.onnx_file` (a user-supplied .onnx) or an automatic export of the
model source (see `onnx_export`), cached by content. Providers come from
`options.providers` (default `["CPUExecutionProvider"]`) with `options.provider_options`;
`options.intra_op_threads` sets ONNX Runtime's thread count. Generation is greedy, one
prompt at a time (batch 1 graphs); top-k log-probs and the tail mass are computed in
float32 from the raw logits, exactly as the torch backends report them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specengine.errors import BackendCrashed, BackendUnavailable, ModelSourceError, brief

from specengine.backends.base import (Backend, BackendConfig, Generation, Scores,
    log_mass_excluding, topk_with_tail)
from specengine.backends.onnx import export as onnx_export
from specengine.backends.onnx.export import META_FILE
from specengine.backends.onnx.graph import GraphError, OnnxGraph
from specengine.backends.onnx.graph import log_softmax, onnx_runtime
from specengine.files import read_json
from specengine.backends.host import cpu_name

DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
           "TensorrtExecutionProvider": "cuda", "CANNExecutionProvider": "npu",
           "ROCMExecutionProvider": "rocm", "MIGraphXExecutionProvider": "rocm",
           "DmlExecutionProvider": "dml", "CoreMLExecutionProvider": "coreml",
           "OpenVINOExecutionProvider": "openvino"}


class OnnxBackend(Backend):
    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.ort = ort = onnx_runtime(config.name)
        options = config.options or {}
        self.providers = list(options.get("providers") or ["CPUExecutionProvider"])
        available = list(ort.get_available_providers())
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise BackendUnavailable(
                f"backend '{config.name}': execution provider(s) {', '.join(missing)} not "
                f"available in onnxruntime {ort.__version__} (available: {', '.join(available)})")
        self.provider_options = options.get("provider_options")
        if self.provider_options is not None and not isinstance(self.provider_options, list):
            self.provider_options = [self.provider_options]
        self.graph = None
        self.meta: dict[str, Any] = {}
        self.source_path: Path | None = None
        self.load_s = 0.0

    # -- loading ---------------------------------------------------------------------
    def load(self, source) -> None:

        if getattr(source.spec, "kind", "causal-lm") != "causal-lm":
            raise BackendUnavailable(f"backend '{self.name}': this ONNX backend runs causal "
                                     f"LMs, not {source.spec.kind} models")
        start = time.perf_counter()
        path, self.meta = self._graph_path(source)
        self.source_path = path
        try:
            session = self.ort.InferenceSession(str(path), self._session_options(),
                                                providers=self.providers,
                                                provider_options=self.provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BackendUnavailable(f"backend '{self.name}': ONNX Runtime cannot load {path}: "
                                     f"{brief(exc)}") from None
        try:
            self.graph = OnnxGraph(session, self.meta)
        except GraphError as exc:
            raise BackendUnavailable(f"backend '{self.name}': {path}: {exc}") from None
        self.load_s = time.perf_counter() - start

    def _graph_path(self, source) -> tuple[Path, dict[str, Any]]:

        user_file = (self.config.options or {}).get("onnx_file")
        if user_file:
            path = Path(str(user_file)).expanduser()
            if not path.is_file():
                raise ModelSourceError(f"backend '{self.name}': options.onnx_file {path} "
                                       "does not exist")
            meta = _read_sidecar(path)
            return path, dict(meta, onnx_file=str(path.resolve()), exported_now=False)
        if self.config.dtype not in ("float32", "float16"):
            raise BackendUnavailable(f"backend '{self.name}': automatic ONNX export supports "
                                     f"float32 and float16, not {self.config.dtype}")
        settings = onnx_export.export_settings(self.config.options or {}, self.config.dtype)
        return onnx_export.cached_graph(source, settings)

    def _session_options(self):
        opts = self.ort.SessionOptions()
        threads = (self.config.options or {}).get("intra_op_threads")
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3
        return opts

    # -- running ---------------------------------------------------------------------
    def _need_graph(self):
        if self.graph is None:
            raise BackendCrashed(f"backend '{self.name}': no model loaded")
        return self.graph

    supports_gather = True
    supports_incremental = True

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, top_k: int,
                 stop_ids: Sequence[int] = (), gather: Sequence[np.ndarray] | None = None
                 ) -> list[Generation]:
        stop = set(int(s) for s in stop_ids)
        return [self._generate_one(list(p), max_new_tokens, top_k, stop,
                                   None if gather is None else np.asarray(gather[i], np.int64))
                for i, p in enumerate(prompts)]

    def _generate_one(self, prompt: list[int], max_new_tokens: int, top_k: int,
                      stop: set[int], wanted: np.ndarray | None = None) -> Generation:

        graph = self._need_graph()
        start = time.perf_counter()
        timings: dict[str, float] = {}
        chosen, ids_rows, lp_rows, tail_rows = [], [], [], []
        g_rows, g_tails = [], []
        try:
            logits, cursor = graph.prefill(prompt)
            last = logits[-1]
            for step in range(max_new_tokens):
                lp = log_softmax(last[None])
                ids, vals, tail = topk_with_tail(lp, top_k)
                if wanted is not None and step < len(wanted):
                    g_rows.append(np.take_along_axis(lp, wanted[step][None], -1)[0])
                    g_tails.append(log_mass_excluding(lp, wanted[step][None])[0])
                token = int(ids[0, 0])
                chosen.append(token)
                ids_rows.append(ids[0])
                lp_rows.append(vals[0])
                tail_rows.append(tail[0])
                if step == 0:
                    timings["ttft_s"] = time.perf_counter() - start
                if token in stop or step == max_new_tokens - 1:
                    break
                last = graph.advance(cursor, token)
        except Exception as exc:  # onnxruntime's own exception types
            raise BackendCrashed(f"backend '{self.name}' run failed: "
                                 f"{brief(exc)}") from None
        timings["total_s"] = time.perf_counter() - start
        k = min(top_k, ids_rows[0].shape[0]) if ids_rows else top_k
        gen = Generation(prompt, chosen, _stack(ids_rows, k, np.int64),
                         _stack(lp_rows, k, np.float32), np.asarray(tail_rows, np.float32),
                         timings)
        if wanted is not None and g_rows:
            gen.gathered_logprobs = np.stack(g_rows).astype(np.float32)
            gen.gathered_tail = np.asarray(g_tails, np.float32)
        return gen

    def score_incremental(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
                          gather_ids: np.ndarray, top_k: int, start: int = 0) -> Scores:

        graph = self._need_graph()
        gather = np.asarray(gather_ids, dtype=np.int64)
        rows: list[np.ndarray] = []
        try:
            logits, cursor = graph.prefill([int(x) for x in prompt_ids])
            last = logits[-1]
            for i, token in enumerate(target_ids):
                if i >= start:
                    rows.append(log_softmax(last[None])[0])
                if i < len(target_ids) - 1:
                    last = graph.advance(cursor, int(token))
        except Exception as exc:
            raise BackendCrashed(f"backend '{self.name}' run failed: "
                                 f"{brief(exc)}") from None
        k = gather.shape[-1] if gather.ndim == 2 else 1
        if not rows:
            return Scores(np.zeros((0, k), np.float32), np.zeros((0,), np.float32),
                          np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32))
        lp = np.stack(rows)
        want = gather[start:start + len(rows)]
        top_ids, top_lp, _ = topk_with_tail(lp, top_k)
        return Scores(np.take_along_axis(lp, want, axis=-1).astype(np.float32),
                      log_mass_excluding(lp, want), top_ids, top_lp)

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              gather_ids: np.ndarray, top_k: int) -> Scores:

        graph = self._need_graph()
        n = len(target_ids)
        full = [int(x) for x in prompt_ids] + [int(x) for x in target_ids]
        try:
            logits, _ = graph.prefill(full[:-1])
        except Exception as exc:
            raise BackendCrashed(f"backend '{self.name}' run failed: "
                                 f"{brief(exc)}") from None
        lp = log_softmax(logits[-n:])
        gather = np.asarray(gather_ids, dtype=np.int64)
        gathered = np.take_along_axis(lp, gather, axis=-1).astype(np.float32)
        tail = log_mass_excluding(lp, gather)
        top_ids, top_lp, _ = topk_with_tail(lp, top_k)
        return Scores(gathered, tail, top_ids, top_lp)

    # -- description -----------------------------------------------------------------
    def environment(self) -> dict[str, Any]:

        versions = {k: v for k, v in onnx_export.library_versions().items() if v != "missing"}
        versions["onnxruntime"] = self.ort.__version__
        settings: dict[str, Any] = {"providers": list(self.providers)}
        if self.graph is not None:
            settings["onnx_graph"] = self.graph.describe()
        if self.meta.get("onnx_file"):
            settings["onnx_file"] = self.meta["onnx_file"]
        elif self.meta:
            settings.update(onnx_export.describe_export(self.meta))
        env = {"backend": self.name, "runtime": "onnxruntime", "device": self._device(),
               "device_name": self._device_name(), "dtype": self.config.dtype,
               "versions": versions, "settings": settings}
        if self.meta.get("key"):
            env["export_key"] = self.meta["key"]
        return env

    def _device(self) -> str:
        return DEVICES.get(self.providers[0], self.config.device)

    def _device_name(self) -> str:
        eps = " > ".join(self.providers)
        if self.providers[0] == "CPUExecutionProvider":
            return f"{cpu_name()} (ONNX Runtime {eps})"
        return f"ONNX Runtime {eps}"

    def close(self) -> None:
        self.graph = None


def _stack(rows: list[np.ndarray], k: int, dtype) -> np.ndarray:
    if not rows:
        return np.zeros((0, k), dtype=dtype)
    return np.stack(rows).astype(dtype)


def _read_sidecar(path: Path) -> dict[str, Any]:
    """Metadata written beside a graph by specengine's export, if the file came from one."""

    meta = read_json(path.parent / META_FILE)
    return meta if isinstance(meta, dict) else {}
