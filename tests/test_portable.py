"""Goldens travel: synthetic weights are portable draws, so a golden recorded here verifies
with another transformers version (and on another CPU) as long as the checkpoint's
tensor names and shapes are the same."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import CLI_MAIN, REPO, TINY_MODEL, write_spec
from specengine.portable_init import A_LOG_MAX, draw, uniforms, unit_noise

NEWER_TRANSFORMERS = "5.24.0"     # one minor release past the pin (constraints.txt)


def test_draws_are_pinned_bytes():
    """The exact bytes of two draws: integer hashing and exactly rounded operations only,
    so these digests hold on every CPU and with every numpy that rounds IEEE correctly."""
    matrix = draw(0, "model.w", (4, 5), 0.02)
    norm = draw(7, "model.norm.weight", (8,), 0.02, np.ones(8))
    assert hashlib.sha256(matrix.tobytes()).hexdigest() == \
        "0edc8658e4b25c55e8b09f1297c7f3cc174c5934ee75c0f5b5658389b3a98c3b"
    assert hashlib.sha256(norm.tobytes()).hexdigest() == \
        "ec0826ae3cd235770a388e53fcf7c7c993f65d3bf369d30e43f77c4022c192b0"


def test_draws_depend_on_seed_name_and_shape_only():
    a = draw(1, "x.weight", (64, 32), 0.1)
    assert np.array_equal(a, draw(1, "x.weight", (64, 32), 0.1))
    for other in (draw(2, "x.weight", (64, 32), 0.1), draw(1, "y.weight", (64, 32), 0.1),
                  draw(1, "x.weight", (32, 64), 0.1).reshape(64, 32)):
        assert not np.array_equal(a, other)
    assert a.dtype == np.float32
    assert abs(float(a.std()) - 0.1) < 0.005 and abs(float(a.mean())) < 0.005
    u = uniforms(0, "u", (100_000,))[0]
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    z = unit_noise(0, "z", (100_000,))
    assert abs(z.std() - 1) < 0.01 and np.abs(z).max() <= 2 * np.sqrt(3)


def test_one_dimensional_rules():
    ones = draw(0, "model.layers.0.input_layernorm.weight", (512,), 0.2, np.ones(512))
    assert abs(ones.mean() - 1) < 0.01 and 0.03 < ones.std() < 0.07
    bias = draw(0, "model.layers.0.self_attn.q_proj.bias", (512,), 0.2, np.zeros(512))
    assert abs(bias.mean()) < 0.005 and 0.015 < bias.std() < 0.025      # 0.1 x std
    a_log = draw(0, "model.layers.0.linear_attn.A_log", (512,), 0.2, np.log(np.arange(1, 513)))
    assert 0 <= a_log.min() and a_log.max() <= A_LOG_MAX
    lib = np.random.default_rng(0).normal(3.0, 0.5, 512)
    other = draw(0, "model.x.scale", (512,), 0.2, lib)
    assert abs(other.mean() - 3.0) < 0.1 and abs(other.std() - 0.5) < 0.05


def _newer_transformers(tmp_root: Path) -> Path:
    """transformers NEWER_TRANSFORMERS installed (no dependencies) into a throw-away
    folder, reused between runs; skip where it cannot be installed (offline)."""
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "specengine-tests" / f"transformers-{NEWER_TRANSFORMERS}"
    if (target / "transformers" / "__init__.py").is_file():
        return target
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                           "--target", str(target), f"transformers=={NEWER_TRANSFORMERS}"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (target / "transformers" / "__init__.py").is_file():
        pytest.skip(f"transformers {NEWER_TRANSFORMERS} cannot be installed here: "
                    f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:] or '?'}")
    return target


def _cli(*args, cache: Path, pythonpath: Path | None = None):
    env = {**os.environ, "SPECENGINE_PROGRESS": "0", "SPECENGINE_CACHE": str(cache)}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([sys.executable, str(CLI_MAIN), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=900)


def test_a_golden_recorded_here_verifies_with_a_newer_transformers(tmp_path):
    """Record a tiny synthetic llama with the pinned transformers, verify it with the next
    minor release in a fresh cache (the weights drawn again there); and the committed
    ernie45-tiny golden (a MoE checkpoint) verifies with it too."""
    newer = _newer_transformers(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import transformers; print(transformers.__version__)"],
                           env={**os.environ, "PYTHONPATH": str(newer)}, capture_output=True,
                           text=True, timeout=300)
    assert probe.stdout.strip() == NEWER_TRANSFORMERS, probe.stderr
    spec = write_spec(tmp_path / "travel.yaml", "specengine: 1\nname: travel\n" + TINY_MODEL
                      + "defaults: {max_new_tokens: 4}\ncases:\n  - id: a\n    prompt: Hello\n")
    gdir = tmp_path / "golden"
    rec = _cli("record-golden", spec, "--golden-dir", gdir, cache=tmp_path / "cache-pinned")
    assert rec.returncode == 0, rec.stderr
    check = _cli("check", spec, REPO / "specs" / "tiny" / "ernie45-tiny.yaml", "--backend",
                 "cpu", "--golden-dir", gdir, cache=tmp_path / "cache-newer", pythonpath=newer)
    # ernie45-tiny's golden is the committed one: copy it beside ours
    if check.returncode == 2 and "no golden" in check.stderr:
        pytest.fail(check.stderr)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr


@pytest.fixture(autouse=True)
def _ernie_golden(tmp_path):
    """The committed ernie45-tiny golden, in the test's golden folder."""
    target = tmp_path / "golden" / "ernie45-tiny"
    target.mkdir(parents=True)
    (target / "cpu.json").write_bytes((REPO / "golden" / "ernie45-tiny" / "cpu.json").read_bytes())
