"""specengine's own overhead: the same 8 cases x 32 new tokens on SmolLM2-135M, run by a
minimal hand-written transformers script (greedy generate, top-k capture, one-pass scoring
of the continuation compared with the decode path's log-probs) and by
`specengine check --backend cpu`. Both run as fresh processes, model loading included.

    .venv/bin/python benchmarks/overhead.py [--repeats 3] [--backend cpu|cpu-bf16|cuda] [--json PATH]

`--backend` runs both sides on that device and dtype (the script in the same dtype, on the
same device); `--json` also writes the numbers.

Prints both times (median of the repeats) and the ratio. Target: <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The capital of France is",
    "The theory of relativity was proposed by",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "法国的首都是",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]

BASELINE = r'''
import sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, device, dtype, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
with torch.inference_mode():
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").to(device)
        out = model.generate(**ids, max_new_tokens=32, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, eos_token_id=tok.eos_token_id)
        tops = [torch.log_softmax(s.float(), -1).topk(10) for s in out.scores]
        # the same comparison work by hand: the one-pass (teacher-forced) scores of the
        # continuation at the decode path's top-k ids, against the decode path's own values
        n = len(out.scores)
        full = out.sequences[:, :-1]
        lp = torch.log_softmax(model(input_ids=full, use_cache=False).logits[0, -n:].float(), -1)
        want = torch.stack([t.indices[0] for t in tops])
        one_pass = lp.gather(-1, want)
        decode = torch.stack([t.values[0] for t in tops])
        float((one_pass - decode).abs().max())
        tok.decode(out.sequences[0, ids["input_ids"].shape[1]:])
'''


# --backend: (device, dtype) of both sides
BACKENDS = {"cpu": ("cpu", "float32"), "cpu-bf16": ("cpu", "bfloat16"), "cuda": ("cuda", "bfloat16")}


def spec_text(folder: Path) -> str:
    return (f"specengine: 1\nname: overhead\nmodel:\n  path: {folder}\n"
            f"defaults:\n  max_new_tokens: 32\n  top_k: 10\n  determinism: {{runs: 1}}\n"
            f"cases:\n{_yaml_cases()}\n")


def _yaml_cases() -> str:
    import json

    return "\n".join(f"  - id: case-{i}\n    prompt: {json.dumps(p, ensure_ascii=False)}"
                     for i, p in enumerate(PROMPTS))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="cpu")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args()
    device, dtype = BACKENDS[args.backend]
    from specengine.loading.sources import resolve
    from specengine.spec import load_spec

    folder = resolve(load_spec(REPO / "specs" / "smollm2-135m.yaml").model).hf_dir
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "overhead.yaml"
        spec.write_text(spec_text(folder), encoding="utf-8")
        gdir = Path(tmp) / "golden"
        engine = [sys.executable, "-m", "specengine"]
        subprocess.run(engine + ["record-golden", str(spec), "--golden-dir", str(gdir)],
                       check=True, capture_output=True)
        base_cmd = [sys.executable, "-c", BASELINE, str(folder), device, dtype, *PROMPTS]
        check_cmd = engine + ["check", str(spec), "--backend", args.backend, "--golden-dir", str(gdir)]
        base, ours = [], []
        for _ in range(args.repeats):          # interleaved, so drift hits both alike
            base.append(timed(base_cmd))
            ours.append(timed(check_cmd))
    b, o = statistics.median(base), statistics.median(ours)
    print(f"hand-written transformers script : {b:6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in base)})")
    print(f"specengine check --backend {args.backend:<5}: {o:6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"ratio specengine / script        : {o / b:.3f}  (target <= 1.10; 8 cases x 32 tokens, "
          "model loading included)")
    if args.json:
        import json

        args.json.write_text(json.dumps({
            "backend": args.backend, "device": device, "dtype": dtype, "cases": len(PROMPTS),
            "new_tokens": 32, "script_s": base, "specengine_s": ours, "script_median_s": b,
            "specengine_median_s": o, "ratio": o / b}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
