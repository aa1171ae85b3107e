"""ONNX Runtime for embedding models (text encoders, vision towers).

The model is exported once with torch.onnx's dynamo exporter (float32, dynamic batch and
sequence axes) into the cache folder — keyed by the model fingerprint, the input names and
the torch / onnx versions — and run by onnxruntime (CPU execution provider unless the
backend's options say otherwise). Used by `model.kind: embedding` specs on a backend whose
runtime is onnx, when the registry's ONNX backend does not run encoders itself.

Options (a spec's `backends.<name>.options`, as for the causal-LM ONNX backend): providers,
provider_options, intra_op_threads (default: $OMP_NUM_THREADS), onnx_file (an already
exported encoder to run instead of exporting; its inputs must be named like the feeds and
its outputs last_hidden_state [, pooler_output]).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from specengine.errors import BackendCrashed, BackendUnavailable, brief

from specengine.backends.base import Backend, BackendConfig, Embedded, Generation, Scores
from specengine.backends.host import cpu_name
from specengine.backends.onnx.graph import onnx_runtime
from specengine.backends.torch.models import load_torch_model
from specengine.files import building_dir
from specengine.files import cache_dir
from specengine.progress import step

OPSET = 18


class OnnxEncoderBackend(Backend):
    supports_embedding = True
    supports_logprobs = False
    supports_scoring = False

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        self.ort = onnxruntime = onnx_runtime(config.name)
        if config.dtype != "float32":
            raise BackendUnavailable(f"backend '{config.name}': the ONNX encoder export is "
                                     f"float32 only (asked for {config.dtype})")
        self.providers = list(config.options.get("providers") or ["CPUExecutionProvider"])
        missing = [p for p in self.providers if p not in onnxruntime.get_available_providers()]
        if missing:
            raise BackendUnavailable(f"backend '{config.name}': onnxruntime "
                                     f"{onnxruntime.__version__} has no {', '.join(missing)} "
                                     f"(available: {', '.join(onnxruntime.get_available_providers())})")
        self.resolved = None
        self.sessions: dict[tuple, Any] = {}
        self.files: dict[tuple, str] = {}
        self.failed: dict[tuple, str] = {}
        self.load_s = 0.0

    def load(self, source) -> None:
        self.resolved = source
        if source.spec.kind != "embedding":
            raise BackendUnavailable(f"backend '{self.name}': this ONNX path runs embedding "
                                     "models only")

    # -- export ----------------------------------------------------------------------
    def _export_dir(self, names: tuple[str, ...]) -> Path:
        import onnx
        import torch

        key = json.dumps({"model": self.resolved.fingerprint, "inputs": names, "opset": OPSET,
                          "torch": torch.__version__, "onnx": onnx.__version__}, sort_keys=True)
        return cache_dir() / "onnx-encoder" / hashlib.sha256(key.encode()).hexdigest()[:24]

    def _export(self, feeds: dict[str, np.ndarray], target: Path) -> None:
        import torch

        names = tuple(sorted(feeds))
        model = load_torch_model(self.resolved, "float32", "cpu")
        # a batch of 2 at least: torch.export would specialise a dimension of size 1
        args = tuple(torch.from_numpy(np.ascontiguousarray(np.concatenate([_cast(feeds[n])] * 2)))
                     for n in names)
        with torch.inference_mode():
            probe = model(**dict(zip(names, args)))
        has_pooler = getattr(probe, "pooler_output", None) is not None

        class Wrapper(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, *tensors):
                out = self.inner(**dict(zip(names, tensors)))
                if has_pooler:
                    return out.last_hidden_state, out.pooler_output
                return (out.last_hidden_state,)

        auto = torch.export.Dim.AUTO   # dynamic, within what the model allows (e.g. 512 positions)
        dynamic = (tuple({0: auto} if a.is_floating_point() else {0: auto, 1: auto} for a in args),)
        outputs = ["last_hidden_state"] + (["pooler_output"] if has_pooler else [])
        with step(f"exporting {self.resolved.origin} to ONNX (once, into {target})"):
            with building_dir(target) as tmp:
                try:
                    torch.onnx.export(Wrapper(model).eval(), args, str(tmp / "model.onnx"),
                                      dynamo=True, input_names=list(names), output_names=outputs,
                                      dynamic_shapes=dynamic, opset_version=OPSET,
                                      external_data=False)
                except Exception as exc:  # the exporter raises many kinds
                    raise BackendCrashed(f"backend '{self.name}': ONNX export failed: "
                                         f"{type(exc).__name__}: {brief(exc)}") from None
                (tmp / "export.json").write_text(json.dumps(
                    {"inputs": list(names), "outputs": outputs, "opset": OPSET,
                     "torch": torch.__version__, "model": self.resolved.fingerprint},
                    indent=1, sort_keys=True) + "\n")

    def _session(self, feeds: dict[str, np.ndarray]):
        names = tuple(sorted(feeds))
        if names in self.sessions:
            return self.sessions[names]
        if names in self.failed:
            raise BackendCrashed(self.failed[names])
        try:
            return self._open(feeds, names)
        except BackendCrashed as exc:
            self.failed[names] = str(exc)
            raise

    def _open(self, feeds: dict[str, np.ndarray], names: tuple[str, ...]):
        start = time.perf_counter()
        given = self.config.options.get("onnx_file")
        if given:
            path = Path(given)
        else:
            target = self._export_dir(names)
            if not (target / "model.onnx").is_file():
                self._export(feeds, target)
            path = target / "model.onnx"
        options = self.ort.SessionOptions()
        threads = int(self.config.options.get("intra_op_threads")
                      or os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        provider_options = self.config.options.get("provider_options")
        if provider_options is not None and not isinstance(provider_options, list):
            provider_options = [provider_options]
        try:
            session = self.ort.InferenceSession(
                str(path), options, providers=self.providers, provider_options=provider_options)
        except Exception as exc:
            raise BackendCrashed(f"backend '{self.name}': onnxruntime cannot load {path}: "
                                 f"{brief(exc)}") from None
        self.sessions[names] = session
        self.files[names] = str(path)
        self.load_s += time.perf_counter() - start
        return session

    # -- interface ---------------------------------------------------------------------
    def embed(self, feeds: dict[str, np.ndarray]) -> Embedded:
        session = self._session(feeds)
        wanted = {i.name for i in session.get_inputs()}
        inputs = {k: _cast(v) for k, v in feeds.items() if k in wanted}
        try:
            out = session.run(None, inputs)
        except Exception as exc:
            raise BackendCrashed(f"backend '{self.name}' ONNX run failed: "
                                 f"{brief(exc)}") from None
        return Embedded(np.asarray(out[0], dtype=np.float32),
                        np.asarray(out[1], dtype=np.float32) if len(out) > 1 else None)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, top_k: int,
                 stop_ids: Sequence[int] = ()) -> list[Generation]:
        raise BackendUnavailable(f"backend '{self.name}': the ONNX encoder path does not generate")

    def score(self, prompt_ids, target_ids, gather_ids, top_k) -> Scores:
        raise BackendUnavailable(f"backend '{self.name}': the ONNX encoder path does not score")

    def environment(self) -> dict[str, Any]:
        import onnx

        versions = {"onnxruntime": self.ort.__version__, "onnx": onnx.__version__}
        try:
            import torch

            versions["torch (exporter)"] = torch.__version__
        except ImportError:
            pass
        settings = {"providers": ",".join(self.providers), "exporter": "torch.onnx dynamo",
                    "opset": str(OPSET)}
        if self.files:
            settings["onnx_file"] = ", ".join(sorted(set(self.files.values())))
        return {"backend": self.name, "runtime": "onnx", "device": self.config.device,
                "device_name": cpu_name(), "dtype": "float32", "versions": versions,
                "settings": settings}

    def close(self) -> None:
        self.sessions.clear()


def _cast(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype.kind == "f" else value.astype(np.int64)
