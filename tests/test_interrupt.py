"""Interrupted and concurrent `record-golden`: a golden is always the previous complete
file or the new complete file, never a part; leftovers never break a later run.

Real signals to real subprocesses: `specengine record-golden --update` killed with SIGINT
or SIGKILL at random moments (seeded; SPECENGINE_KILL_TRIALS raises the count for a
soak), and a tight loop of golden writes killed mid-write. The random moments and the
outcomes are printed in the terminal summary.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fault_backend import publish_figures, run_cli
from helpers import CLI_MAIN, TINY_MODEL, REPO, cli, write_spec
from specengine.kinds.causal_lm.golden import build_golden, load_golden, step_record
from specengine.golden.store import dumps

FIGURES: dict = {}
KILL_TRIALS = int(os.environ.get("SPECENGINE_KILL_TRIALS", "6"))   # 3 per signal
WRITE_TRIALS = int(os.environ.get("SPECENGINE_WRITE_KILL_TRIALS", "16"))
SEED = int(os.environ.get("SPECENGINE_KILL_SEED", "20240601"))

SPEC = """\
specengine: 1
name: tiny-interrupt
""" + TINY_MODEL + """defaults:
  max_new_tokens: NEW
cases:
  - id: hello
    prompt: "Hello there"
  - id: chat
    messages: [{role: user, content: "What is 2 + 3?"}]
  - id: third
    prompt: "One more case"
"""


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    publish_figures(request.config, "interrupt", FIGURES)


def _env(cache: Path) -> dict:
    return {**os.environ, "SPECENGINE_PROGRESS": "0", "SPECENGINE_CACHE": str(cache),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}


def _record(spec: Path, gdir: Path, cache: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLI_MAIN), "record-golden", str(spec),
                             "--golden-dir", str(gdir), *extra], env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "cpu.json")


def _new_tokens(path: Path) -> set[int]:
    golden = load_golden(path, "tiny-interrupt")      # raises unless complete and intact
    return {case.settings["max_new_tokens"] for case in golden.cases.values()}


@pytest.fixture(scope="module")
def concurrent_record(tmp_path_factory):
    """Two `record-golden` runs started at once on one spec, golden folder and fresh
    cache (both build the synthetic model too)."""
    root = tmp_path_factory.mktemp("concurrent")
    spec = write_spec(root / "s.yaml", SPEC.replace("NEW", "5"))
    gdir, cache = root / "golden", root / "cache"
    start = time.perf_counter()
    procs = [_record(spec, gdir, cache) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    elapsed = time.perf_counter() - start
    return spec, gdir, cache, [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)], elapsed


def test_two_record_golden_runs_at_once_leave_one_complete_golden(concurrent_record):
    spec, gdir, cache, results, elapsed = concurrent_record
    FIGURES["two concurrent record-golden runs"] = (
        f"exit codes {[rc for rc, _, _ in results]} in {elapsed:.1f} s; one complete golden")
    for rc, out, err in results:
        assert rc in (0, 2), err
        assert "Traceback" not in err
        if rc == 2:
            assert "already exists" in err
    assert 0 in [rc for rc, _, _ in results]
    path = gdir / "tiny-interrupt" / "cpu.json"
    assert _new_tokens(path) == {5}
    assert _leftovers(path.parent) == []
    check = run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir)
    assert check.rc == 0, check.text


PHASES = ("starting", "loading the model", "recording", "writing")


def _launch_and_kill(spec, gdir, cache, phase: int, sig, rng) -> tuple[int, str, str]:
    """Start `record-golden --update` with progress lines on and signal it: at a random
    moment of the interpreter start; after its '… loading' line (model load); after its
    '✓ loading' line (recording and writing); or the moment its temp file appears."""
    env = {**_env(cache), "SPECENGINE_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, str(CLI_MAIN), "record-golden", str(spec),
                             "--golden-dir", str(gdir), "--update"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    marker = (None, "… loading", "✓ loading", None)[phase]
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    folder = gdir / "tiny-interrupt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if marker and any(line.startswith(marker) for line in list(lines)):
            break
        if phase == 3:
            if any(name.endswith(".tmp") for name in os.listdir(folder)):
                break
            time.sleep(0.0005)
        elif not marker:
            break
        else:
            time.sleep(0.005)
    delay = (rng.uniform(0.0, 3.0), rng.uniform(0.0, 0.3), rng.uniform(0.0, 1.5), 0.0)[phase]
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(sig)
    proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    return proc.returncode, "".join(lines), f"{PHASES[phase]}+{delay:.2f}s{'' if sent else ' (done)'}"


def _kill_lane(lane: int, trials: int, spec: Path, gdir: Path, cache: Path, report: dict) -> None:
    """One lane of kill trials on its own spec and golden folder: alternate the spec
    between two settings, re-record with --update, signal it at a random moment of a
    phase; the golden is the previous file byte for byte, or a complete new one."""
    rng = random.Random(SEED + lane)
    path = gdir / "tiny-interrupt" / "cpu.json"
    sig = signal.SIGINT if lane == 0 else signal.SIGKILL
    for trial in range(trials):
        target = 6 + trial % 2
        write_spec(spec, SPEC.replace("NEW", str(target)))
        previous = path.read_bytes()
        phase = (trial + 1) % 4          # load, record, write first; start from the 4th
        rc, err, moment = _launch_and_kill(spec, gdir, cache, phase, sig, rng)
        report["moments"].append(f"{sig.name}@{moment}")
        report["exit codes"][rc] = report["exit codes"].get(rc, 0) + 1
        if path.read_bytes() == previous:
            report["previous"] += 1
        else:
            assert _new_tokens(path) == {target}, (lane, trial, rc, err)
            report["new"] += 1
        assert _new_tokens(path) <= {5, 6, 7}             # always loads, hash intact
        assert "Traceback" not in err or "KeyboardInterrupt" in err, err
        if sig == signal.SIGINT:
            if rc == 130:
                assert err.strip().endswith("specengine: interrupted"), err
            assert _leftovers(path.parent) == [], (trial, err)   # cleaned up on the way out
    report["tmp_left"] += len(_leftovers(path.parent))


def test_killed_record_golden_never_leaves_a_broken_golden(concurrent_record, tmp_path):
    """SIGINT in one lane and SIGKILL in another, run side by side, each at random
    moments of the model load, the recording, the write (and, from the 4th trial of a
    lane on, the interpreter start)."""
    spec0, gdir0, cache, _, elapsed = concurrent_record
    start_golden = gdir0 / "tiny-interrupt" / "cpu.json"
    report = {"previous": 0, "new": 0, "tmp_left": 0, "moments": [], "exit codes": {}}
    lanes, errors = [], []
    for lane in range(2):
        spec, gdir = tmp_path / f"lane{lane}.yaml", tmp_path / f"golden{lane}"
        (gdir / "tiny-interrupt").mkdir(parents=True)
        shutil.copy2(start_golden, gdir / "tiny-interrupt" / "cpu.json")

        def work(lane=lane, spec=spec, gdir=gdir):
            try:
                _kill_lane(lane, (KILL_TRIALS + 1 - lane) // 2, spec, gdir, cache, report)
            except BaseException as exc:      # re-raised below, in the test's thread
                errors.append(exc)
        lanes.append(threading.Thread(target=work))
    started = time.perf_counter()
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    if errors:
        raise errors[0]
    FIGURES["record-golden kill trials"] = (
        f"{KILL_TRIALS} in {time.perf_counter() - started:.0f} s (seed {SEED}; golden afterwards: "
        f"previous {report['previous']}, new complete {report['new']}; temp files left by "
        f"SIGKILL: {report['tmp_left']}; exit codes {dict(sorted(report['exit codes'].items()))}; "
        f"signal@phase+delay: {', '.join(report['moments'])})")

    # whatever was left, the golden works
    path = tmp_path / "golden1" / "tiny-interrupt" / "cpu.json"
    write_spec(spec := tmp_path / "lane1.yaml", SPEC.replace("NEW", str(min(_new_tokens(path)))))
    check = run_cli("check", spec, "--backend", "cpu", "--golden-dir", tmp_path / "golden1")
    assert check.rc == 0, check.text


WRITER = """\
import json, sys
from specengine.golden.store import write_golden
a, b = json.load(open(sys.argv[1]))
path = sys.argv[2]
print("ready", flush=True)
while True:
    write_golden(path, a)
    write_golden(path, b)
"""


def _golden_data(n_cases: int, tag: str) -> dict:
    step = step_record([5, 3, 9, 11], [-0.1, -2.5, -3.25, -4.0], -5.0)
    cases = {f"case-{i}": {"hash": f"{i:064x}", "prompt": f"{tag} prompt {i}",
                           "prompt_ids": list(range(20)), "output_ids": [5] * 16,
                           "output_text": f"{tag} output", "settings": {"max_new_tokens": 16},
                           "steps": [step] * 16} for i in range(n_cases)}
    return build_golden("demo", "cpu", "sha256:" + tag, "synthetic", {"backend": "cpu"}, cases)


def test_killing_golden_writes_mid_write_keeps_one_complete_file(tmp_path):
    """A process writing two ~0.5 MB goldens in turn, as fast as it can, killed at random
    moments with SIGKILL or SIGINT: the file is always exactly one of the two."""
    import json

    rng = random.Random(SEED + 1)
    a, b = _golden_data(100, "a"), _golden_data(100, "b")
    texts = {dumps(a).encode(), dumps(b).encode()}
    data = tmp_path / "data.json"
    data.write_text(json.dumps([a, b]))
    path = tmp_path / "demo" / "cpu.json"
    path.parent.mkdir()
    left_by_kill = 0
    for trial in range(WRITE_TRIALS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(path)],
                                env=_env(tmp_path / "cache"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.01, 0.3))
        sig = signal.SIGKILL if trial % 2 else signal.SIGINT
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        if path.exists():
            assert path.read_bytes() in texts, f"trial {trial}: a partial golden"
            load_golden(path, "demo")
        extra = sorted(p.name for p in path.parent.iterdir() if p.name != "cpu.json")
        if sig == signal.SIGINT:
            assert extra == [], extra                     # the temp file was removed
        else:
            left_by_kill += len(extra)
            for name in extra:
                assert name.startswith(".cpu.json.") and name.endswith(".tmp")
                (path.parent / name).unlink()
    FIGURES["golden writer kill trials"] = (
        f"{WRITE_TRIALS} (~0.5 MB golden rewritten in a loop; half SIGKILL, half SIGINT): "
        f"always one complete file; SIGKILL left {left_by_kill} hidden .tmp file(s)")


def test_concurrent_golden_writers_never_show_a_partial_file(tmp_path):
    """Two processes rewriting the same golden in a loop while this one reads it: every
    read is one of the two complete files."""
    import json

    a, b = _golden_data(100, "a"), _golden_data(100, "b")
    texts = {dumps(a).encode(), dumps(b).encode()}
    (tmp_path / "ab.json").write_text(json.dumps([a, b]))
    (tmp_path / "ba.json").write_text(json.dumps([b, a]))
    path = tmp_path / "demo" / "cpu.json"
    path.parent.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / name), str(path)],
                              env=_env(tmp_path / "cache"), stdout=subprocess.PIPE, text=True)
             for name in ("ab.json", "ba.json")]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    reads, end = 0, time.monotonic() + 2.0
    while time.monotonic() < end:
        if path.exists():
            assert path.read_bytes() in texts
            reads += 1
    for proc in procs:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    load_golden(path, "demo")
    assert sorted(p.name for p in path.parent.iterdir()) == ["cpu.json"]
    FIGURES["two concurrent golden writers"] = f"{reads} reads in 2 s, every one complete"
