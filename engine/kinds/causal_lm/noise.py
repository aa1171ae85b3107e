"""The reference's own noise of a numeric class: the yardstick relative limits use.

`record-golden --noise CLASS` runs the *reference model* again on the recording host in
that class — half: the reference's runtime and device in bfloat16 (float16 where the
reference already computes in float16); float32: in float32 with another intra-op thread
count, so reductions split differently — and measures, per case, its error against the
golden on both paths exactly as a candidate's is measured: the one-pass path (the golden's
sequence scored in one forward) and the decode path (its own greedy steps, then the
golden's tokens through its KV cache). KL mean, KL max and max |Δ logprob| per path are
stored with the case (4 significant digits, so a re-record on the same host is byte for
byte), and how the run was made with the golden.

A limit may then be `{noise: K}`: K times that error, which makes "as close to the
reference as the reference is to itself in this class" a declarative rule (the three-way
comparison of msprobe and Neuron: candidate vs reference, judged by reference vs itself).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, Sequence

from specengine.backends.base import BackendConfig
from specengine.backends.registry import config_for
from specengine.compare import tokens as compare
from specengine.compare.tolerances import FLOAT32, HALF, Tolerance, dtype_class
from specengine.errors import BackendCrashed, UsageError
from specengine.kinds.policy import record_one
from specengine.kinds.causal_lm import decode
from specengine.kinds.causal_lm.golden import LmGolden
from specengine.loading.session import Session, open_session
from specengine.progress import cases as progress_cases
from specengine.spec import Case, Spec

NOISE_CLASSES = (FLOAT32, HALF)
RUNTIMES = ("torch",)   # runtimes whose compute dtype specengine sets itself


def noise_config(ref: BackendConfig, klass: str) -> BackendConfig:
    """The reference's backend, made to compute in `klass` (UsageError where it cannot)."""
    if klass not in NOISE_CLASSES:
        raise UsageError(f"--noise {klass}: the reference's own noise is measured for "
                         f"{' and '.join(NOISE_CLASSES)} (a quantized deployment's error is "
                         "what `check` measures against the golden)")
    if ref.runtime not in RUNTIMES:
        raise UsageError(f"--noise {klass}: the reference '{ref.name}' runs on the "
                         f"{ref.runtime} runtime, whose compute dtype specengine does not set; "
                         f"noise runs need a {' or '.join(RUNTIMES)} reference")
    options = dict(ref.options)
    if dtype_class(ref.dtype, ref.quantization) == klass:
        dtype = ref.dtype
        current = int(options.get("threads") or os.environ.get("OMP_NUM_THREADS")
                      or os.cpu_count() or 1)
        options["threads"] = 2 if current == 1 else max(1, current // 2)
    else:
        dtype = "bfloat16" if klass == HALF else "float32"
    return BackendConfig(f"{ref.name}.noise-{klass}", ref.runtime, ref.device, dtype, options)


def _rounded(x: float) -> float:
    return float(f"{float(x):.4g}")


def _metrics(tf) -> dict[str, float]:
    return {"kl_mean": _rounded(tf.kl_mean), "kl_max": _rounded(tf.kl_max),
            "max_abs_dlogprob": _rounded(tf.max_abs_dlogprob)}


def case_noise(session: Session, case: Case, golden: LmGolden) -> dict[str, dict[str, float]]:
    """One case's error of the noise run against the golden, on both paths."""
    backend, tok = session.backend, session.tokenizer
    record = golden.case(case.id)
    prompt_ids, out_ids = list(record.prompt_ids or ()), list(record.output_ids)
    g_ids, g_lp, g_tail = record.steps.arrays()
    if not out_ids:
        zero = {"kl_mean": 0.0, "kl_max": 0.0, "max_abs_dlogprob": 0.0}
        return {"prefill": dict(zero), "decode": dict(zero)}
    gen = backend.generate([prompt_ids], case.max_new_tokens, case.top_k, tok.stop_ids,
                           gather=[g_ids])[0]
    tol = Tolerance()         # the metrics are what is kept; no verdict is drawn here
    div = compare.first_divergence(out_ids, gen.output_ids, g_ids, g_lp, tol)
    scores = backend.score(prompt_ids, out_ids, g_ids, case.top_k)
    one_pass = compare.teacher_forced(g_ids, g_lp, g_tail, scores.gathered_logprobs,
                                      scores.gathered_tail, scores.top_ids[:, 0], tol)
    rows = decode.decode_rows(backend, prompt_ids, out_ids, g_ids, gen, div.step, case.top_k)
    n = rows.covered
    if n < len(out_ids):
        raise BackendCrashed(f"noise run '{session.config.name}': case '{case.id}': the decode "
                             f"path covered {n} of {len(out_ids)} steps ({rows.note})")
    decoded = compare.teacher_forced(g_ids[:n], g_lp[:n], g_tail[:n], rows.lp, rows.tail,
                                     rows.top1, tol)
    return {"prefill": _metrics(one_pass), "decode": _metrics(decoded)}


def measure_noise(spec: Spec, ref_name: str, golden: LmGolden, cases: list[Case], klass: str
                  ) -> tuple[dict[str, dict], dict]:
    """Per case id the reference's own `klass` error ({prefill, decode}), and a description
    of the noise run (backend, dtype, device, settings) for the golden."""
    ref = config_for(ref_name, spec.backends)
    config = noise_config(ref, klass)
    models = dict(spec.backend_models)
    if ref.name in models:
        models[config.name] = models[ref.name]
    noise_spec = replace(spec, backends={**spec.backends, config.name: config},
                         backend_models=models)
    session = open_session(noise_spec, config.name)
    session.bind_chats()
    try:
        out = {}
        for case in progress_cases(cases, f"noise {klass}", spec.name, config.name):
            out[case.id] = record_one(config.name, case.id,
                                      lambda c=case: case_noise(session, c, golden),
                                      spec.timeout_s, what="noise case")
        side = session.side()
    finally:
        session.close()
    made = {"backend": config.name, "runtime": side.runtime, "device": side.device,
            "device_name": side.device_name, "dtype": side.dtype,
            "settings": {k: v for k, v in side.settings.items() if k != "device_map"}}
    return out, made


def with_noise(spec: Spec, name: str, golden: LmGolden, classes: Sequence[str],
               echo: Callable[[str], None]) -> LmGolden:
    """`golden` (its prompt ids resolved) with each class's noise measured and added to
    every case and to how its noise runs were made."""
    cases, runs = dict(golden.cases), dict(golden.noise_runs)
    for klass in classes:
        measured, runs[klass] = measure_noise(spec, name, golden, list(spec.cases), klass)
        echo(summary_line(measured, klass))
        for cid, values in measured.items():
            cases[cid] = cases[cid].with_noise(klass, values)
    return replace(golden.with_cases(cases), noise_runs=runs)


def summary_line(noise: dict[str, dict], klass: str) -> str:
    """One line for the terminal: the largest noise measured over the cases."""
    values = [v[p]["kl_mean"] for v in noise.values() for p in ("prefill", "decode")]
    dl = [v[p]["max_abs_dlogprob"] for v in noise.values() for p in ("prefill", "decode")]
    return (f"{klass} noise of the reference over {len(noise)} case(s): KL mean up to "
            f"{max(values, default=0.0):.3g}, max |Δ logprob| up to "
            f"{max(dl, default=0.0):.3g}")


