"""A test-only backend: the torch runtime slowed on purpose.

Registered as runtime `test-slow` by the suite (runtimes.py). Every forward step (prefill and
each decode step) first sleeps `options.sleep_ms` milliseconds, so a perf test can make
a backend slower without touching the model or its outputs. `options.batch_bias` (nats)
tilts the last-position logits of every forward pass over more than one prompt: a
backend that is deliberately *not* batch-invariant, for the batch-invariance tests. Importable as
`slow_backend` when tests/ is on sys.path (pytest puts it there; CLI subprocesses run
through cli_main.py).
"""

from __future__ import annotations

import time

from specengine.backends.torch.backend import TorchBackend


class SlowTorchBackend(TorchBackend):
    def __init__(self, config):
        super().__init__(config)
        self.sleep_s = float(config.options.get("sleep_ms", 0.0)) / 1e3
        self.batch_bias = float(config.options.get("batch_bias", 0.0))
        self.settings["test.sleep_ms_per_step"] = str(config.options.get("sleep_ms", 0.0))

    def _forward(self, input_ids, mask, position, past):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        out = super()._forward(input_ids, mask, position, past)
        if self.batch_bias and input_ids.shape[0] > 1:
            vocab = out.logits.shape[-1]
            tilt = self.torch.linspace(0.0, self.batch_bias, vocab, device=out.logits.device)
            out.logits[:, -1, :] += tilt.to(out.logits.dtype)
        return out
