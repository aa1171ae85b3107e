"""The torch runtime: cpu / cpu-bf16 / cuda, and the base of the NPU layer.

Greedy generation with a KV cache; per step the top-k ids and log-probs are computed in
float32 from the raw logits, with the log of the remaining (tail) mass. Teacher-forced
scoring is one forward pass over prompt + target.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np

from specengine.errors import BackendCrashed, BackendUnavailable, brief
from specengine.files import cache_dir

from specengine.backends.base import Backend, BackendConfig, Embedded, Generation, Scores
from specengine.backends.torch.device import TorchDevice
from specengine.backends.torch.models import device_placement, load_torch_model, modeling_code, torch_dtype


class TorchBackend(Backend):
    """One torch device + dtype. Subclasses override the small device hooks only."""

    def __init__(self, config: BackendConfig):
        super().__init__(config)
        # torch's deterministic switch imports its compiler stack, which makes a cache
        # folder: keep it in specengine's cache, not in the user's temp folder
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))
        try:
            import torch
        except ImportError:
            from specengine.install import install_hint

            raise BackendUnavailable(f"backend '{config.name}' needs torch: "
                                     f"{install_hint('torch')}") from None
        self.torch = torch
        self.model = None
        self.resolved = None
        self.load_s = 0.0
        self.settings: dict[str, Any] = {}
        self.modeling: dict[str, Any] = {}
        self._threads_before: int | None = None
        self.prepare_device()

    # -- device hooks: one path for every device family (TorchDevice); the NPU layer
    #    adds its import and its own switches -------------------------------------------
    def prepare_device(self) -> None:
        self.device_layer = TorchDevice(self.torch, self.config.device)
        self.device_layer.check_available(self.name)
        self.apply_determinism()

    def apply_determinism(self) -> None:
        self.settings.update(self.device_layer.apply_determinism())

    def synchronize(self) -> None:
        self.device_layer.synchronize()

    def device_name(self) -> str:
        return self.device_layer.name()

    def peak_memory_bytes(self) -> int | None:
        return self.device_layer.peak_memory_bytes()

    def reset_peak_memory(self) -> None:
        self.device_layer.reset_peak_memory()

    def peak_memory_source(self) -> str:
        return self.device_layer.peak_memory_source()

    # -- interface ------------------------------------------------------------------
    def load(self, source) -> None:
        self._set_threads(self.config.options.get("threads"))
        start = time.perf_counter()
        try:
            self.model = load_torch_model(source, self.config.dtype, self.config.device)
        except RuntimeError as exc:  # device out of memory while moving weights, etc.
            raise BackendCrashed(f"backend '{self.name}': {brief(exc)}") from None
        self.synchronize()
        self.load_s = time.perf_counter() - start
        self.resolved = source
        self.modeling = modeling_code(self.model, source)
        self.settings["attn_implementation"] = str(getattr(self.model.config, "_attn_implementation", ""))
        placement = device_placement(self.model, source.spec.device_map)
        if placement:
            self.settings["device_map"] = placement

    @property
    def input_device(self):
        return self.model.get_input_embeddings().weight.device

    supports_gather = True
    supports_embedding = True
    supports_ops = True
    supports_incremental = True

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, top_k: int,
                 stop_ids: Sequence[int] = (), gather: Sequence[np.ndarray] | None = None
                 ) -> list[Generation]:
        torch = self.torch
        batch = len(prompts)
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        pad = 0
        ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):          # left padding
            ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        dev = self.input_device
        ids, mask = ids.to(dev), mask.to(dev)
        stop = torch.tensor(sorted(set(int(s) for s in stop_ids)) or [-1], device=dev)
        steps_ids, steps_lp, steps_tail, chosen = [], [], [], []
        wanted = _gather_table(torch, gather, batch, dev)
        gathered: list = []
        finished = torch.zeros(batch, dtype=torch.bool, device=dev)
        past = None
        timings: dict[str, float] = {}
        self.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            step_input, position = ids, (mask.cumsum(-1) - 1).clamp(min=0)
            for step in range(max_new_tokens):
                out = self._forward(step_input, mask, position, past)
                past = out.past_key_values
                lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
                top_ids, top_lp, tail = _topk_tail(torch, lp, top_k)
                if wanted is not None and step < wanted.shape[1]:
                    gathered.append(_gather_tail(torch, lp, wanted[:, step]))
                nxt = top_ids[:, 0]
                steps_ids.append(top_ids)
                steps_lp.append(top_lp)
                steps_tail.append(tail)
                chosen.append(torch.where(finished, torch.full_like(nxt, -1), nxt))
                finished = finished | torch.isin(nxt, stop)
                if step == 0:
                    self.synchronize()
                    timings["ttft_s"] = time.perf_counter() - start
                if bool(finished.all()):
                    break
                step_input = nxt[:, None]
                mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=dev)], 1)
                position = position[:, -1:] + 1
        self.synchronize()
        timings["total_s"] = time.perf_counter() - start
        gens = _collect(prompts, chosen, steps_ids, steps_lp, steps_tail, timings)
        if gathered:
            g_lp = torch.stack([g[0] for g in gathered], 1).cpu().numpy()
            g_tail = torch.stack([g[1] for g in gathered], 1).cpu().numpy()
            for row, gen in enumerate(gens):
                n = min(len(gen.output_ids), len(gather[row]))
                gen.gathered_logprobs, gen.gathered_tail = g_lp[row][:n], g_tail[row][:n]
        return gens

    def score_incremental(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
                          gather_ids: np.ndarray, top_k: int, start: int = 0) -> Scores:
        torch = self.torch
        n = len(target_ids)
        dev = self.input_device
        gather = torch.as_tensor(np.asarray(gather_ids), dtype=torch.long, device=dev)
        rows_lp, rows_tail, rows_ids, rows_top = [], [], [], []
        with torch.inference_mode():
            past, length = None, len(prompt_ids)
            step_input = torch.tensor([list(prompt_ids)], dtype=torch.long, device=dev)
            position = torch.arange(length, device=dev)[None]
            for i in range(n):
                mask = torch.ones((1, length), dtype=torch.long, device=dev)
                out = self._forward(step_input, mask, position, past)
                past = out.past_key_values
                if i >= start:
                    lp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
                    g_lp, g_tail = _gather_tail(torch, lp, gather[i][None])
                    top = lp.topk(top_k, dim=-1)
                    rows_lp.append(g_lp[0]), rows_tail.append(g_tail[0])
                    rows_ids.append(top.indices[0]), rows_top.append(top.values[0])
                step_input = torch.tensor([[int(target_ids[i])]], dtype=torch.long, device=dev)
                position = torch.tensor([[length]], device=dev)
                length += 1
        if not rows_lp:
            k = gather.shape[-1] if gather.dim() == 2 else 1
            return Scores(np.zeros((0, k), np.float32), np.zeros((0,), np.float32),
                          np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32))
        return Scores(torch.stack(rows_lp).cpu().numpy(), torch.stack(rows_tail).cpu().numpy(),
                      torch.stack(rows_ids).cpu().numpy().astype(np.int64),
                      torch.stack(rows_top).cpu().numpy())

    def decode_hidden_states(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
                             step: int) -> list[np.ndarray] | None:
        torch = self.torch
        if step < 1 or step > len(target_ids):
            return None
        dev = self.input_device
        # the prompt prefilled, then target tokens 0 … step−1 fed one at a time; the
        # last of them is the decode step whose states are returned
        feeds = [list(prompt_ids)] + [[int(t)] for t in target_ids[:step]]
        past, length = None, 0
        with torch.inference_mode():
            for i, feed in enumerate(feeds):
                ids = torch.tensor([feed], dtype=torch.long, device=dev)
                position = torch.arange(length, length + len(feed), device=dev)[None]
                length += len(feed)
                mask = torch.ones((1, length), dtype=torch.long, device=dev)
                last = i == len(feeds) - 1
                out = self._call(input_ids=ids, attention_mask=mask, position_ids=position,
                                 past_key_values=past, use_cache=True,
                                 output_hidden_states=last)
                past = out.past_key_values
        return [h[0].float().cpu().numpy() for h in out.hidden_states]

    def _forward(self, input_ids, mask, position, past):
        return self._call(input_ids=input_ids, attention_mask=mask, position_ids=position,
                          past_key_values=past, use_cache=True)

    def _call(self, **inputs):
        """One forward of the model; a runtime error in it becomes BackendCrashed."""
        try:
            return self.model(**inputs)
        except RuntimeError as exc:
            raise BackendCrashed(f"backend '{self.name}' forward failed: "
                                 f"{brief(exc)}") from None

    supports_positions = True

    def score_positions(self, ids: Sequence[int], positions: Sequence[int],
                        gather_ids: np.ndarray, top_k: int) -> Scores:
        torch = self.torch
        dev = self.input_device
        seq = torch.tensor([list(ids)], dtype=torch.long, device=dev)
        keep = torch.tensor([int(p) for p in positions], dtype=torch.long, device=dev)
        with torch.inference_mode():
            out = self._call(input_ids=seq, use_cache=False, logits_to_keep=keep)
            logits = out.logits[0]
            if logits.shape[0] != len(positions):     # a model that ignores an index tensor
                logits = logits[keep]
            return _scores(torch, logits, gather_ids, top_k)

    def score(self, prompt_ids: Sequence[int], target_ids: Sequence[int],
              gather_ids: np.ndarray, top_k: int) -> Scores:
        torch = self.torch
        n = len(target_ids)
        full = list(prompt_ids) + list(target_ids)
        dev = self.input_device
        ids = torch.tensor([full[:-1]], dtype=torch.long, device=dev)
        with torch.inference_mode():
            out = self._call(input_ids=ids, use_cache=False, logits_to_keep=n)
            return _scores(torch, out.logits[0, -n:, :], gather_ids, top_k)

    def hidden_states(self, ids: Sequence[int]) -> list[np.ndarray] | None:
        torch = self.torch
        with torch.inference_mode():
            out = self._call(input_ids=torch.tensor([list(ids)], device=self.input_device),
                             use_cache=False, output_hidden_states=True)
        return [h[0].float().cpu().numpy() for h in out.hidden_states]

    def embed(self, feeds: dict[str, np.ndarray]) -> Embedded:
        torch = self.torch

        param = next(self.model.parameters())
        inputs = {}
        for key, value in feeds.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            if tensor.is_floating_point():
                tensor = tensor.to(torch_dtype(self.config.dtype))
            inputs[key] = tensor.to(param.device)
        with torch.inference_mode():
            out = self._call(**inputs)
        self.synchronize()
        hidden = getattr(out, "last_hidden_state", None)
        hidden = out[0] if hidden is None else hidden
        pooler = getattr(out, "pooler_output", None)
        return Embedded(hidden.float().cpu().numpy(),
                        None if pooler is None else pooler.float().cpu().numpy())

    def run_op(self, run, inputs: dict[str, np.ndarray], dims: dict, params: dict,
               dtype: str) -> dict[str, np.ndarray]:
        torch = self.torch

        tdtype = torch_dtype(dtype)
        # rounded on the CPU, then moved: the device sees exactly the oracle's inputs
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(tdtype).to(self.config.device)
                   for k, v in inputs.items()}
        with torch.inference_mode():
            out = run(torch, tensors, dims, params, dtype)
        self.synchronize()
        return {k: (v.double() if v.is_floating_point() else v.long()).cpu().numpy()
                for k, v in out.items()}

    def environment(self) -> dict[str, Any]:
        import transformers

        versions = {"torch": self.torch.__version__, "transformers": transformers.__version__}
        versions.update(self.extra_versions())
        return {"backend": self.name, "runtime": "torch", "device": self.config.device,
                "device_name": self.device_name(), "dtype": self.config.dtype,
                "versions": versions, "settings": dict(self.settings),
                "modeling": dict(self.modeling)}

    def extra_versions(self) -> dict[str, str]:
        return {}

    def close(self) -> None:
        self.model = None
        self.device_layer.empty_cache()
        if self._threads_before is not None:     # the process's own setting back
            self.torch.set_num_threads(self._threads_before)
            self._threads_before = None

    def _set_threads(self, threads) -> None:
        """options.threads: the intra-op thread count while this backend is open (another
        reduction split, e.g. for the reference's float32 noise run)."""
        if threads:
            self._threads_before = self.torch.get_num_threads()
            self.torch.set_num_threads(int(threads))
            self.settings["threads"] = int(threads)


def _topk_tail(torch, lp, k: int):
    """Top-k of float32 log-softmax rows, and log of the remaining mass."""
    top = lp.topk(k, dim=-1)
    tail = torch.logsumexp(lp.scatter(-1, top.indices, float("-inf")), dim=-1)
    return top.indices, top.values, tail


def _scores(torch, logits, gather_ids, top_k: int) -> Scores:
    """Scores of logit rows: the float32 log-probs of `gather_ids` (a row of ids per row),
    the log of the mass outside them, and each row's own top-k."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    gather = torch.as_tensor(np.asarray(gather_ids), dtype=torch.long, device=lp.device)
    gathered, tail = _gather_tail(torch, lp, gather)
    top = lp.topk(top_k, dim=-1)
    return Scores(gathered.cpu().numpy(), tail.cpu().numpy(),
                  top.indices.cpu().numpy().astype(np.int64), top.values.cpu().numpy())


def _gather_tail(torch, lp, ids):
    """Log-probs of `ids` (rows of ids per row of lp) and the log of the mass outside them."""
    return lp.gather(-1, ids), torch.logsumexp(lp.scatter(-1, ids, float("-inf")), dim=-1)


def _gather_table(torch, gather, batch: int, dev):
    """The ids to gather, (batch, steps, k) on the device, rows padded with id 0 past
    their own length (the padded rows are cut off again when collected)."""
    if gather is None:
        return None
    rows = [np.atleast_2d(np.asarray(g, dtype=np.int64)) for g in gather]
    if len(rows) != batch or max((r.shape[0] for r in rows), default=0) == 0:
        return None
    steps = max(r.shape[0] for r in rows)
    k = max(r.shape[1] for r in rows if r.shape[0])
    table = np.zeros((batch, steps, k), dtype=np.int64)
    for i, r in enumerate(rows):
        if r.shape[0]:
            table[i, :r.shape[0], :r.shape[1]] = r
    return torch.as_tensor(table, device=dev)


def _collect(prompts, chosen, steps_ids, steps_lp, steps_tail, timings) -> list[Generation]:
    import torch

    chosen_t = torch.stack(chosen, 1).cpu().numpy()
    ids_t = torch.stack(steps_ids, 1).cpu().numpy().astype(np.int64)
    lp_t = torch.stack(steps_lp, 1).cpu().numpy()
    tail_t = torch.stack(steps_tail, 1).cpu().numpy()
    out = []
    for row, prompt in enumerate(prompts):
        valid = chosen_t[row] >= 0
        n = int(valid.sum())
        out.append(Generation(list(prompt), [int(x) for x in chosen_t[row][:n]],
                              ids_t[row][:n], lp_t[row][:n], tail_t[row][:n], dict(timings)))
    return out


