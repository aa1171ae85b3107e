"""The summary of one accelerator check: what benchmarks/device_check.sh measured, as JSON
and Markdown, from the reports the accelerator tests kept and the overhead benchmark wrote.

    python benchmarks/device_summary.py --work DIR --out DIR --device cuda

Reads DIR/raw/*.json (check-defaults, perf, planted, localize, tiny), DIR/junit.xml,
DIR/overhead.json, DIR/steps.tsv (step, seconds, exit status) and DIR/env.json; writes
OUT/summary.json, OUT/summary.md and copies the defaults check's HTML report to
OUT/report.html. Anything missing is reported as missing, never filled in.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path


def _load(path: Path):
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def _run(report):
    return (report or {}).get("runs", [{}])[0] if report else None


def _checks(case: dict) -> dict:
    return {c["name"]: c for c in case.get("checks", [])}


def accuracy(report) -> dict | None:
    run = _run(report)
    if not run:
        return None
    cases = []
    for case in run.get("cases", []):
        checks = _checks(case)
        tf = checks.get("teacher-forced", {}).get("metrics", {})
        cases.append({"id": case["id"], "status": case.get("status"),
                      "kl_mean": tf.get("kl_mean"), "kl_max": tf.get("kl_max"),
                      "top1_agreement": tf.get("top1_agreement"),
                      "max_abs_dlogprob": tf.get("max_abs_dlogprob"),
                      "checks": {n: c.get("status") for n, c in checks.items()}})
    cand = run.get("candidate", {})
    return {"status": run.get("status"), "comparison": run.get("comparison"),
            "candidate": {k: cand.get(k) for k in ("backend", "device", "device_name", "dtype",
                                                   "versions", "settings")},
            "cases": cases}


def determinism(report) -> dict | None:
    run = _run(report)
    if not run:
        return None
    cases = []
    for case in run.get("cases", []):
        checks = _checks(case)
        det, batch = checks.get("determinism", {}), checks.get("batch-invariance", {})
        per = batch.get("metrics", {}).get("per_batch_size", [])
        cases.append({"id": case["id"], "determinism": det.get("status"),
                      "runs": det.get("metrics", {}).get("runs"),
                      "repeat_max_abs_dlogprob": det.get("metrics", {}).get("max_abs_dlogprob"),
                      "batch_invariance": batch.get("status"),
                      "batch": [{"size": d.get("batch_size"), "identical_tokens": d.get("identical_tokens"),
                                 "max_abs_dlogprob": d.get("max_abs_dlogprob")} for d in per],
                      "batch_message": batch.get("message")})
    return {"status": run.get("status"), "cases": cases}


def perf(report) -> dict | None:
    run = _run(report)
    p = (run or {}).get("perf")
    if not p:
        return None
    rows = [{"batch_size": r["batch_size"], "ttft_ms": r["ttft_ms"], "tpot_ms": r["tpot_ms"],
             "tokens_per_s": r["tokens_per_s"], "peak_mem_gib": r.get("peak_mem_gib"),
             "runs": r.get("runs")} for r in p.get("rows", [])]
    return {"device_name": p.get("device_name"), "dtype": p.get("dtype"), "load_s": p.get("load_s"),
            "prompt_tokens": p.get("prompt_tokens"), "new_tokens": p.get("new_tokens"),
            "peak_mem_kind": p.get("peak_mem_kind"), "rows": rows}


def planted(report) -> dict | None:
    run = _run(report)
    if not run:
        return None
    kl = [_checks(c).get("teacher-forced", {}).get("metrics", {}).get("kl_mean")
          for c in run.get("cases", [])]
    return {"status": run.get("status"),
            "failed_cases": sum(c.get("status") == "fail" for c in run.get("cases", [])),
            "cases": len(run.get("cases", [])), "kl_mean": kl}


def localize(report) -> dict | None:
    if not report:
        return None
    return {"first_flagged": [{"case": loc.get("case_id") or loc.get("case"),
                               "layer": loc.get("first_flagged_name"), "mode": loc.get("mode")}
                              for loc in report.get("localizations", [])]}


def tests(junit: Path) -> dict | None:
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {"passed": [], "failed": [], "skipped": []}
    for tc in root.iter("testcase"):
        name = f"{tc.get('classname', '').split('.')[-1]}::{tc.get('name')}"
        if tc.find("failure") is not None or tc.find("error") is not None:
            node = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            out["failed"].append({"test": name, "message": (node.get("message") or "")[:400]})
        elif tc.find("skipped") is not None:
            out["skipped"].append({"test": name, "reason": tc.find("skipped").get("message", "")[:300]})
        else:
            out["passed"].append(name)
    return out


def steps(path: Path) -> list[dict]:
    rows = []
    try:
        for line in path.read_text("utf-8").splitlines():
            name, seconds, rc = line.split("\t")
            rows.append({"step": name, "seconds": float(seconds), "rc": int(rc)})
    except (OSError, ValueError):
        pass
    return rows


def build(work: Path, device: str, elapsed: float | None = None) -> dict:
    raw = work / "raw"
    return {
        "device": device, "elapsed_s": elapsed, "environment": _load(work / "env.json"),
        "steps": steps(work / "steps.tsv"),
        "tests": tests(work / "junit.xml"),
        "accuracy": accuracy(_load(raw / "check-defaults.json")),
        "determinism": determinism(_load(raw / "perf.json")),
        "perf": perf(_load(raw / "perf.json")), "planted_bug": planted(_load(raw / "planted.json")),
        "localize": localize(_load(raw / "localize.json")),
        "tiny_float32": accuracy(_load(raw / "tiny.json")),
        "overhead": _load(work / "overhead.json")}


def _f(x, fmt=".3g") -> str:
    return "–" if x is None else format(x, fmt)


def _md(text) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def markdown(s: dict) -> str:
    env = s.get("environment") or {}
    lines = [f"# specengine accelerator check: `{_md(s['device'])}`", ""]
    lines += [f"- {_md(k)}: {_md(v)}" for k, v in env.items()]
    if s.get("elapsed_s") is not None:
        lines.append(f"- wall time of the whole check: {s['elapsed_s']:.0f} s")
    lines += ["", "| step | seconds | exit |", "|---|---|---|"]
    lines += [f"| {_md(r['step'])} | {r['seconds']:.1f} | {r['rc']} |" for r in s["steps"]]
    t = s.get("tests")
    lines += ["", "## Tests", ""]
    if t is None:
        lines.append("no JUnit file: the test step did not finish (see its exit status above)")
    else:
        lines.append(f"{len(t['passed'])} passed, {len(t['failed'])} failed, {len(t['skipped'])} skipped")
        lines += [f"- FAILED {_md(f['test'])}: {_md(f['message'])}" for f in t["failed"]]
        lines += [f"- skipped {_md(k['test'])}: {_md(k['reason'])}" for k in t["skipped"]]
    a = s.get("accuracy")
    lines += ["", "## bf16 on the device against the cpu float32 golden (default tolerances)", ""]
    if a:
        c = a["candidate"]
        lines.append(f"{_md(c.get('backend'))} on {_md(c.get('device_name'))} "
                     f"({_md(c.get('dtype'))}): **{_md(a['status'])}** ({_md(a['comparison'])})")
        lines += ["", "| case | status | KL mean | KL max | top-1 | max abs Δ logprob | decode | consistency |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in a["cases"]:
            lines.append(f"| {_md(r['id'])} | {_md(r['status'])} | {_f(r['kl_mean'])} | {_f(r['kl_max'])} | "
                         f"{_f(r['top1_agreement'])} | {_f(r['max_abs_dlogprob'])} | "
                         f"{_md(r['checks'].get('decode', 'absent'))} | "
                         f"{_md(r['checks'].get('consistency', 'absent'))} |")
    else:
        lines.append("not measured")
    d = s.get("determinism")
    lines += ["", "## Determinism and batch invariance", ""]
    if d:
        lines += ["| case | repeats | repeat max abs Δ | batch | per size: tokens identical, max abs Δ logprob |",
                  "|---|---|---|---|---|"]
        for r in d["cases"]:
            per = "; ".join(f"{b['size']}: {b['identical_tokens']}, {_f(b['max_abs_dlogprob'])}"
                            for b in r["batch"])
            lines.append(f"| {_md(r['id'])} | {_md(r['determinism'])} ({r['runs']}) | "
                         f"{_f(r['repeat_max_abs_dlogprob'])} | {_md(r['batch_invariance'])} | {_md(per)} |")
    else:
        lines.append("not measured")
    p = s.get("perf")
    lines += ["", "## Performance (`check --perf`)", ""]
    if p:
        lines.append(f"{_md(p['device_name'])}, {_md(p['dtype'])}, prompt {p['prompt_tokens']} tokens, "
                     f"{p['new_tokens']} new tokens, load {_f(p['load_s'])} s; memory: {_md(p['peak_mem_kind'])}")
        lines += ["", "| batch | TTFT ms p50/p90/p99 | TPOT ms p50/p90/p99 | tokens/s | peak GiB |",
                  "|---|---|---|---|---|"]
        for r in p["rows"]:
            tt, tp = r["ttft_ms"], r["tpot_ms"]
            lines.append(f"| {r['batch_size']} | {_f(tt['p50'])} / {_f(tt['p90'])} / {_f(tt['p99'])} | "
                         f"{_f(tp['p50'])} / {_f(tp['p90'])} / {_f(tp['p99'])} | "
                         f"{_f(r['tokens_per_s'], '.4g')} | {_f(r['peak_mem_gib'])} |")
    else:
        lines.append("not measured")
    pb, lo, ov = s.get("planted_bug"), s.get("localize"), s.get("overhead")
    lines += ["", "## Planted bug and localization", ""]
    lines.append(f"o_proj sign-flipped candidate: {_md(pb['status'])}, {pb['failed_cases']} of "
                 f"{pb['cases']} cases failed" if pb else "planted bug: not measured")
    lines.append("first flagged layer: " + ", ".join(f"{_md(x['case'])} → {_md(x['layer'])} ({_md(x['mode'])})"
                                                     for x in lo["first_flagged"]) if lo else
                 "localize: not measured")
    ti = s.get("tiny_float32")
    lines += ["", "## Tiny synthetic llama, float32 on the device", ""]
    lines.append(f"{_md(ti['candidate'].get('device_name'))}: **{_md(ti['status'])}**, max KL max "
                 f"{_f(max((c['kl_max'] or 0.0) for c in ti['cases']))}" if ti and ti["cases"]
                 else "not measured")
    lines += ["", "## specengine's own overhead", ""]
    lines.append(f"`--backend {_md(ov['backend'])}`: script {ov['script_median_s']:.2f} s, specengine "
                 f"{ov['specengine_median_s']:.2f} s, ratio **{ov['ratio']:.3f}** "
                 f"(median of {len(ov['script_s'])})" if ov else "not measured")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--elapsed", type=float, help="seconds the whole check took so far")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = build(args.work, args.device, args.elapsed)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    (args.out / "summary.md").write_text(markdown(summary), encoding="utf-8")
    report = args.work / "raw" / "check-defaults.html"
    if report.exists():
        shutil.copy2(report, args.out / "report.html")
    print(f"summary: {args.out / 'summary.json'}, {args.out / 'summary.md'}"
          + (f", {args.out / 'report.html'}" if report.exists() else " (no HTML report)"))


if __name__ == "__main__":
    main()
