"""Export-only rewrites of model code that `torch.export` cannot trace, each the same
arithmetic in a branch-free form. Applied on the model instance for the export, undone
afterwards; the eager model the torch backends run is never changed.

- Dynamic NTK RoPE (`rope_type: dynamic`, InternLM2.5): eager transformers recomputes the
  inverse frequencies in a Python `if seq_len > cached` on a tensor value, which the
  exporter refuses. Here both sets are computed and `torch.where(seq_len > original max,
  scaled, original)` picks one, as transformers already does for longrope. Equal to eager
  whenever the sequence stays within `max_position_embeddings` (frequencies unchanged) and
  while it grows beyond it (eager recomputes at every longer length); eager additionally
  keeps the largest frequencies it has seen when a later, shorter call stays above the
  limit — a state the graph does not carry.
- Mixture-of-experts layers: transformers' `batched_mm` experts implementation (see
  `onnx_export`), set through the model's own `set_experts_implementation`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


class _FrequencyView:
    """The rotary module with `inv_freq` replaced by a traced tensor (no buffer mutation)."""

    def __init__(self, module, inv_freq):
        self.__dict__["_module"] = module
        self.__dict__["inv_freq"] = inv_freq

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_module"], name)


def _dynamic_rope_modules(model) -> list:
    found = []
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if isinstance(rope_type, str) and "dynamic" in rope_type \
                and hasattr(module, "original_inv_freq") and hasattr(module, "original_max_seq_len"):
            found.append(module)
    return found


def _branch_free_forward(module):
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    import inspect

    rope_forward = inspect.unwrap(type(module).forward)   # below no_grad and the rope update
    if rope_forward is type(module).forward:
        raise RuntimeError(f"{type(module).__name__}.forward is not a dynamic_rope_update "
                           "wrapper; cannot make its dynamic RoPE export-friendly")
    init = ROPE_INIT_FUNCTIONS[module.rope_type]

    def forward(x, position_ids, **kwargs):
        seq_len = torch.max(position_ids) + 1
        scaled, _ = init(module.config, x.device, seq_len=seq_len)
        original = module.original_inv_freq.to(x.device)
        inv_freq = torch.where(seq_len > module.original_max_seq_len, scaled.to(original.dtype),
                               original)
        return rope_forward(_FrequencyView(module, inv_freq), x, position_ids, **kwargs)

    return forward


@contextlib.contextmanager
def export_friendly(model, experts: str | None = "batched_mm") -> Iterator[list[str]]:
    """Apply the rewrites this model needs; yields their names (recorded with the export).
    Everything is undone on exit, so the model validates against its own eager code."""
    applied: list[str] = []
    patched = []
    restore_experts = None
    try:
        if experts and getattr(model, "_can_set_experts_implementation", lambda: False)():
            restore_experts = model.get_experts_implementation()
            model.set_experts_implementation(experts)
            applied.append(f"experts-{experts}")
        for module in _dynamic_rope_modules(model):
            module.forward = _branch_free_forward(module)
            patched.append(module)
        if patched:
            applied.append("dynamic-rope-branch-free")
        yield applied
    finally:
        for module in patched:
            del module.forward
        if restore_experts is not None:
            model.set_experts_implementation(restore_experts)
