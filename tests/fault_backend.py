"""A test-only backend that misbehaves on purpose: the torch runtime with injected faults.

Registered as runtime `test-fault` by the suite (runtimes.py). A spec selects it under
`backends:` and picks the faults in `options`; each `*_on` option is a marker string, and
the fault fires on every forward pass whose prompt (decoded with the bytes tokenizer of
synthetic models) contains the marker:

  nan_on: MARK     the logits become NaN (generation and teacher-forced scoring)
  inf_on: MARK     one logit becomes +Inf (so the log-softmax is NaN)
  raise_on: MARK   a ValueError is raised (a bug in a backend)
  crash_on: MARK   a RuntimeError is raised (a device error: BackendCrashed)
  oom_on: MARK     a RuntimeError "CUDA out of memory" is raised
  hang_on: MARK    the forward pass sleeps `hang_s` seconds (default 3600) first
  fail_init: true  the constructor raises (a device that cannot start)
  fail_load: true  load() raises a RuntimeError (weights that cannot be placed)

Importable as `fault_backend` when tests/ is on sys.path (pytest puts it there;
CLI subprocesses run through cli_main.py).
"""

from __future__ import annotations

import time

from specengine.backends.torch.backend import TorchBackend
from specengine.errors import BackendCrashed

OFFSET = 3   # the bytes tokenizer: ids 3..258 are the bytes 0..255


def _text(ids) -> str:
    return bytes(int(i) - OFFSET for i in ids if OFFSET <= int(i) < OFFSET + 256).decode(
        "utf-8", errors="replace")


class FaultBackend(TorchBackend):
    def __init__(self, config):
        options = dict(config.options)
        if options.get("fail_init"):
            raise RuntimeError("injected fault: the device failed to initialise")
        super().__init__(config)
        self.options = options
        self.hang_s = float(options.get("hang_s", 3600))
        self._prompts: list[str] = []
        self.settings["test.faults"] = ",".join(sorted(k for k in options if k.endswith("_on")))

    def load(self, source) -> None:
        if self.options.get("fail_load"):
            raise RuntimeError("injected fault: the weights could not be placed on the device")
        super().load(source)

    def _hit(self, kind: str) -> bool:
        marker = self.options.get(f"{kind}_on")
        return bool(marker) and any(marker in text for text in self._prompts)

    def _before_forward(self) -> None:
        if self._hit("hang"):
            time.sleep(self.hang_s)
        if self._hit("raise"):
            raise ValueError("injected fault: a bug in the backend")
        # device errors are reported as the torch runtime reports its own RuntimeErrors
        if self._hit("crash"):
            raise BackendCrashed(f"backend '{self.name}' forward failed: injected fault: "
                                 "device lost")
        if self._hit("oom"):
            raise BackendCrashed(f"backend '{self.name}' forward failed: CUDA out of memory. "
                                 "Tried to allocate 20.00 GiB (injected fault)")

    def _poison(self, logits) -> None:
        if self._hit("nan"):
            logits[..., :] = float("nan")
        elif self._hit("inf"):
            logits[..., 0] = float("inf")

    def generate(self, prompts, max_new_tokens, top_k, stop_ids=(), **options):
        self._prompts = [_text(p) for p in prompts]
        return super().generate(prompts, max_new_tokens, top_k, stop_ids, **options)

    def _forward(self, input_ids, mask, position, past):
        self._before_forward()
        out = super()._forward(input_ids, mask, position, past)
        self._poison(out.logits)
        return out

    def score(self, prompt_ids, target_ids, gather_ids, top_k):
        self._prompts = [_text(prompt_ids)]
        self._before_forward()
        if self._hit("nan") or self._hit("inf"):
            model = self.model
            original = model.forward

            def poisoned(*args, **kwargs):
                out = original(*args, **kwargs)
                self._poison(out.logits)
                return out

            model.forward = poisoned
            try:
                return super().score(prompt_ids, target_ids, gather_ids, top_k)
            finally:
                del model.forward
        return super().score(prompt_ids, target_ids, gather_ids, top_k)


# -- test support: the command line in-process, figures in the test output --------------

def run_cli(*args):
    """`specengine ARGS` in this process (the console script's code without the
    interpreter start); a helpers.Result with stdout and stderr captured."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from helpers import Result
    from specengine.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in args])
    return Result(rc, out.getvalue(), err.getvalue())


class _Figures:
    """A pytest plugin, registered on first use, that prints the robustness figures the
    tests measured (inputs tried, kill trials, timings) in the terminal summary, so they
    show in `pytest -q` output without -s."""

    name = "specengine-robustness-figures"

    def __init__(self):
        self.sections: dict[str, dict] = {}

    def pytest_terminal_summary(self, terminalreporter):
        if not self.sections:
            return
        terminalreporter.section("robustness figures (docs/robustness.md)")
        for section, figures in self.sections.items():
            for key, value in figures.items():
                terminalreporter.write_line(f"{section}: {key}: {value}")


def publish_figures(config, section: str, figures: dict) -> None:
    """Show `figures` under `section` in the terminal summary of this pytest session."""
    if not figures:
        return
    plugin = config.pluginmanager.get_plugin(_Figures.name)
    if plugin is None:
        plugin = _Figures()
        config.pluginmanager.register(plugin, _Figures.name)
    plugin.sections.setdefault(section, {}).update(figures)
