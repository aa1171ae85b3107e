"""ONNX Runtime vs torch on the CPU: SmolLM2-135M, 8 cases x 32 new tokens.

    .venv/bin/python benchmarks/onnx_vs_torch.py [--repeats 3] [--model-dir DIR]

Records a cpu golden for a temporary 8-case spec, makes sure the ONNX export is in the
cache (the export is excluded from every timing), then times, interleaved:

- `specengine check --backend cpu` and `specengine check --backend onnx` as fresh
  processes (model loading included), the number the issue's goal is about;
- the backends alone in this process: greedy generation of the 8 cases (32 tokens each)
  plus one teacher-forced scoring pass per case, model loading excluded.

Prints medians and the ratios onnx / cpu. Goal: <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
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
TOKENS = 32


def spec_text(model_yaml: str) -> str:
    cases = "\n".join(f"  - id: case-{i}\n    prompt: {json.dumps(p, ensure_ascii=False)}"
                      for i, p in enumerate(PROMPTS))
    return (f"specengine: 1\nname: onnx-vs-torch\nmodel:\n{model_yaml}\n"
            f"defaults:\n  max_new_tokens: {TOKENS}\n  top_k: 10\n  determinism: {{runs: 1}}\n"
            f"cases:\n{cases}\n")


def model_yaml(model_dir: str | None) -> str:
    """The model section: --model-dir, else the embedded SmolLM2 spec's own source (so the
    ONNX export is the one `check specs/smollm2-135m.yaml --backend onnx` uses)."""
    if model_dir:
        return f"  path: {json.dumps(str(Path(model_dir).resolve()))}"
    from specengine.spec import load_spec

    model = load_spec(REPO / "specs" / "smollm2-135m.yaml").model
    if model.source == "gguf":
        return f"  gguf: {{path: {json.dumps(model.path)}, file: {json.dumps(model.file)}}}"
    return f"  path: {json.dumps(model.path)}"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, SPECENGINE_PROGRESS="0"))
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return elapsed


def backend_seconds(session) -> float:
    """Generation (8 x 32 tokens) + one scoring pass per case, model already loaded."""
    import numpy as np

    prompts = [session.tokenizer.encode(p) for p in PROMPTS]
    start = time.perf_counter()
    for ids in prompts:
        gen = session.backend.generate([ids], TOKENS, 10)[0]
        session.backend.score(ids, gen.output_ids, np.asarray(gen.topk_ids), 10)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", help="a local HF folder instead of the SmolLM2 spec's")
    args = parser.parse_args()
    from specengine.loading.session import open_session
    from specengine.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "onnx-vs-torch.yaml"
        spec_path.write_text(spec_text(model_yaml(args.model_dir)), encoding="utf-8")
        gdir = Path(tmp) / "golden"
        engine = [sys.executable, "-m", "specengine"]
        timed(engine + ["record-golden", str(spec_path), "--backend", "cpu",
                        "--golden-dir", str(gdir)])
        spec = load_spec(spec_path)
        t0 = time.perf_counter()
        sessions = {name: open_session(spec, name) for name in ("onnx", "cpu")}
        print(f"(loading both backends, ONNX export included if it was not cached: "
              f"{time.perf_counter() - t0:.1f} s)")
        check = {name: engine + ["check", str(spec_path), "--backend", name, "--golden-dir",
                                 str(gdir)] for name in ("cpu", "onnx")}
        cli_s = {"cpu": [], "onnx": []}
        raw_s = {"cpu": [], "onnx": []}
        for _ in range(args.repeats):           # interleaved, so load drift hits both alike
            for name in ("cpu", "onnx"):
                raw_s[name].append(backend_seconds(sessions[name]))
                cli_s[name].append(timed(check[name]))
        env = sessions["onnx"].backend.environment()
        for session in sessions.values():
            session.close()
    print(f"SmolLM2-135M, {len(PROMPTS)} cases x {TOKENS} new tokens, "
          f"onnx graph: {env['settings'].get('onnx_graph')}")
    for label, runs in (("specengine check (process)", cli_s), ("backends only", raw_s)):
        cpu, onnx = statistics.median(runs["cpu"]), statistics.median(runs["onnx"])
        print(f"{label:28s} cpu {cpu:7.2f} s   onnx {onnx:7.2f} s   ratio onnx/cpu "
              f"{onnx / cpu:.3f}   (runs cpu: {', '.join(f'{x:.2f}' for x in runs['cpu'])}; "
              f"onnx: {', '.join(f'{x:.2f}' for x in runs['onnx'])})")
    print("goal: ratio <= 1.0 (export excluded: the graph was cached before timing)")


if __name__ == "__main__":
    main()
