"""The perf harness's own overhead: tokens/s that `specengine check --perf` reports for
SmolLM2 on `cpu`, against a bare timing loop around `model.generate` on the very same
model object, the same prompt and the same number of new tokens.

    OMP_NUM_THREADS=1 python benchmarks/perf_overhead.py [--runs 7] [--new-tokens 32]
        [--prompt-tokens 32] [--batch-size 1] [--rounds 2]

The harness path is `specengine.kinds.causal_lm.perf.measure` (our greedy loop with per-step top-k
log-probs and tail mass, device synchronised around every clock read); the bare path is
`model.generate(do_sample=False, min_new_tokens=max_new_tokens=N)` between two
`time.perf_counter()` calls. The two are interleaved in `rounds` (A B A B ...) so that a
drift of the machine hits both. Prints both medians and the ratio harness / bare
(1.0 = the harness reports the throughput that a bare loop sees; below 1 = our loop is
slower than `generate`, i.e. the numbers we report are conservative).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=str(REPO / "specs" / "smollm2-135m.yaml"))
    ap.add_argument("--runs", type=int, default=7, help="measured runs per round and path")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from specengine.kinds.causal_lm.perf import PerfSettings, measure, perf_prompts, summarise
    from specengine.loading.session import open_session
    from specengine.spec import load_spec

    spec = load_spec(args.spec)
    session = open_session(spec, "cpu")
    backend, model = session.backend, session.backend.model
    streams = [session.prompt_ids(c) for c in spec.cases]
    prompts = perf_prompts(streams, args.batch_size, args.prompt_tokens)
    settings = PerfSettings(warmup=args.warmup, runs=args.runs, batch_sizes=(args.batch_size,),
                            prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
    ids = torch.tensor(prompts, dtype=torch.long)
    mask = torch.ones_like(ids)
    pad = session.tokenizer.stop_ids[0] if session.tokenizer.stop_ids else 0

    def bare_once() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 pad_token_id=pad)
        elapsed = time.perf_counter() - start
        assert out.shape[1] - ids.shape[1] == args.new_tokens
        return args.batch_size * args.new_tokens / elapsed

    harness_tps, bare_tps = [], []
    for _ in range(args.warmup):
        bare_once()
    for round_no in range(args.rounds):
        m = measure(backend, streams, settings, top_k=spec.cases[0].top_k)
        row = summarise(m.batches[0], m.backend)
        harness_tps.extend(m.batches[0].tokens_per_s())
        bare = [bare_once() for _ in range(args.runs)]
        bare_tps.extend(bare)
        print(f"round {round_no + 1}: harness {row['tokens_per_s']:.2f} tokens/s "
              f"(TTFT p50 {row['ttft_ms']['p50']:.1f} ms, TPOT p50 {row['tpot_ms']['p50']:.2f} ms); "
              f"bare model.generate {statistics.median(bare):.2f} tokens/s", flush=True)
    session.close()

    h, b = statistics.median(harness_tps), statistics.median(bare_tps)
    print(f"\nSmolLM2-135M on cpu (float32, torch threads {torch.get_num_threads()}), batch "
          f"{args.batch_size}, prompt {len(prompts[0])} tokens, {args.new_tokens} new tokens, "
          f"{len(harness_tps)} runs per path")
    print(f"harness (specengine perf): {h:.2f} tokens/s (median)")
    print(f"bare model.generate loop:  {b:.2f} tokens/s (median)")
    print(f"ratio harness / bare: {h / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
