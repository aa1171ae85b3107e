"""Ports with their own modeling code, for the tests of numeric classes: a model folder
with `auto_map` whose code is the library's class plus, switched by the config, one bug
of the kind a port ships — planted with a forward hook on one layer's module, so the
weights stay the reference's bit for bit and the clean folder runs exactly the built-in
computation.

Bugs (`planted_bug` in config.json, on layer `planted_layer`):
- attn_gate_skip: gated full attention without its output gate (sigmoid(gate) -> 1);
- shared_expert_gate_skip: the shared expert added without its sigmoid gate;
- qk_norm_skip: the query norm of one attention layer left out;
- o_proj_scale: one attention output projection off by `planted_scale`;
- down_proj_scale: one dense MLP's down projection off by `planted_scale`;
- ignore_padding: the attention mask dropped (the whole model), so a left-padded row of a
  batch attends to its padding — invisible on a case run alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ARCHITECTURES = {"qwen3_5_text": "Qwen3_5ForCausalLM", "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM",
                 "ernie4_5_moe": "Ernie4_5_MoeForCausalLM", "llama": "LlamaForCausalLM"}

CODE = '''\
import torch
from transformers import {base}


def _gate_open(head_dim):
    def hook(module, inputs, out):
        view = out.view(*out.shape[:-1], -1, 2 * head_dim)
        view[..., head_dim:] = 30.0        # sigmoid(30) == 1 in float32: no gate
        return out
    return hook


def _constant(value):
    return lambda module, inputs, out: torch.full_like(out, value)


def _identity(module, inputs, out):
    return inputs[0]


def _scale(factor):
    return lambda module, inputs, out: out * factor


class PortModel({base}):
    def __init__(self, config):
        super().__init__(config)
        bug = getattr(config, "planted_bug", "")
        if not bug:
            return
        layer = self.model.layers[int(getattr(config, "planted_layer", 0))]
        factor = float(getattr(config, "planted_scale", 1.01))
        if bug == "attn_gate_skip":
            layer.self_attn.q_proj.register_forward_hook(_gate_open(layer.self_attn.head_dim))
        elif bug == "shared_expert_gate_skip":
            layer.mlp.shared_expert_gate.register_forward_hook(_constant(30.0))
        elif bug == "qk_norm_skip":
            layer.self_attn.q_norm.register_forward_hook(_identity)
        elif bug == "o_proj_scale":
            layer.self_attn.o_proj.register_forward_hook(_scale(factor))
        elif bug == "down_proj_scale":
            layer.mlp.down_proj.register_forward_hook(_scale(factor))
        elif bug != "ignore_padding":
            raise ValueError("unknown planted bug " + bug)

    def forward(self, *args, **kwargs):
        if getattr(self.config, "planted_bug", "") == "ignore_padding":
            kwargs["attention_mask"] = None
        return super().forward(*args, **kwargs)
'''


def port_folder(base: Path, dst: Path, bug: str = "", layer: int = 0,
                scale: float | None = None) -> Path:
    """A copy of the HF folder `base` that ships its own modeling code (the built-in class
    of its architecture, plus `bug` on `layer` when given)."""
    shutil.copytree(base, dst)
    config = json.loads((dst / "config.json").read_text())
    model_type = config["model_type"]
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_port.PortModel"}
    if bug:
        config.update(planted_bug=bug, planted_layer=layer)
        if scale is not None:
            config["planted_scale"] = scale
    (dst / "config.json").unlink()
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    (dst / "modeling_port.py").write_text(CODE.format(base=ARCHITECTURES[model_type]))
    return dst


def candidate_backend(folder: Path, name: str = "candidate", dtype: str = "float32") -> str:
    """The spec text of a torch backend running `folder`'s own code (a `backends:` entry)."""
    return (f"  {name}:\n    runtime: torch\n    device: cpu\n    dtype: {dtype}\n"
            f"    model: {{path: {json.dumps(str(folder))}, trust_remote_code: true}}\n")


def with_backends(spec_text: str, entries: str) -> str:
    """A spec's text with `entries` (backend entries) added to its `backends:`."""
    if "\nbackends:\n" in spec_text:
        return spec_text.replace("\nbackends:\n", "\nbackends:\n" + entries, 1)
    return spec_text.replace("\nreference: cpu\n", "\nreference: cpu\nbackends:\n" + entries, 1)
