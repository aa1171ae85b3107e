"""specengine's own overhead: the same 8 cases x 32 new tokens on SmolLM2-135M, run by a
minimal hand-written transformers script (greedy generate, top-k capture) and by
`specengine check --backend cpu`. Both run as fresh processes, model loading included.

    .venv/bin/python benchmarks/overhead.py [--repeats 3]

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
folder, prompts = sys.argv[1], sys.argv[2:]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
with torch.inference_mode():
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=32, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, eos_token_id=tok.eos_token_id)
        for scores in out.scores:
            top = torch.log_softmax(scores.float(), -1).topk(10)
        tok.decode(out.sequences[0, ids["input_ids"].shape[1]:])
'''


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
    args = parser.parse_args()
    from specengine.sources import resolve
    from specengine.spec import load_spec

    folder = resolve(load_spec(REPO / "specs" / "smollm2-135m.yaml").model).hf_dir
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "overhead.yaml"
        spec.write_text(spec_text(folder), encoding="utf-8")
        gdir = Path(tmp) / "golden"
        engine = [sys.executable, "-m", "specengine"]
        subprocess.run(engine + ["record-golden", str(spec), "--golden-dir", str(gdir)],
                       check=True, capture_output=True)
        base_cmd = [sys.executable, "-c", BASELINE, str(folder), *PROMPTS]
        check_cmd = engine + ["check", str(spec), "--backend", "cpu", "--golden-dir", str(gdir)]
        base, ours = [], []
        for _ in range(args.repeats):          # interleaved, so drift hits both alike
            base.append(timed(base_cmd))
            ours.append(timed(check_cmd))
    b, o = statistics.median(base), statistics.median(ours)
    print(f"hand-written transformers script : {b:6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in base)})")
    print(f"specengine check --backend cpu   : {o:6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"ratio specengine / script        : {o / b:.3f}  (target <= 1.10; 8 cases x 32 tokens, "
          "model loading included)")


if __name__ == "__main__":
    main()
