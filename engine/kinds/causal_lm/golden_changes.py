"""The causal-lm golden codec's other half: what re-recording a golden changed, read off
the old and the new file's JSON case by case (outputs, steps beyond 4 significant digits,
hashes, noise, layer sketches), for the terminal."""

from __future__ import annotations

from specengine.golden.store import changed_records


def describe_changes(old: dict, new: dict, limit: int = 40) -> list[str]:
    """What re-recording changed, case by case (deepdiff), for the terminal."""
    lines = changed_records(old.get("cases", {}), new.get("cases", {}), "case", _case_changes,
                            limit)
    if old.get("model") != new.get("model"):
        lines.insert(0, f"  ~ model: {old.get('model')} -> {new.get('model')}")
    return lines or ["  (no change in ids, log-probs or hashes)"]


def _case_changes(cid: str, a: dict, b: dict) -> list[str]:
    from deepdiff import DeepDiff

    lines = []
    if a["output_ids"] != b["output_ids"]:
        lines.append(f"  ~ case {cid}: output {a['output_text']!r} -> {b['output_text']!r}")
    diff = DeepDiff(a["steps"], b["steps"], significant_digits=4, ignore_numeric_type_changes=True)
    changed = len(diff.get("values_changed", {})) + len(diff.get("iterable_item_added", {})) \
        + len(diff.get("iterable_item_removed", {}))
    if changed:
        lines.append(f"  ~ case {cid}: {changed} step value(s) changed beyond 4 significant digits")
    if a["hash"] != b["hash"]:
        lines.append(f"  ~ case {cid}: prompt, settings or model changed (hash)")
    if a.get("noise") != b.get("noise"):
        lines.append(f"  ~ case {cid}: reference noise now recorded for "
                     f"{', '.join(sorted(b.get('noise') or {})) or 'no class'}")
    sketch_change = _sketch_change(a.get("sketch"), b.get("sketch"))
    if sketch_change:
        lines.append(f"  ~ case {cid}: layer sketch {sketch_change}")
    return lines


def _sketch_change(old: dict | None, new: dict | None) -> str:
    """How a case's layer sketch changed on re-record ('' for nothing beyond 1e-4)."""
    if not old and not new:
        return ""
    if not old or not new:
        return "added" if new else "removed"
    shape = lambda s: (s["method"], s["seed"], s["dims"], s["positions"],  # noqa: E731
                       [layer["name"] for layer in s["layers"]])
    if shape(old) != shape(new):
        return "changed (layers or positions)"
    delta = max((abs(x - y) for la, lb in zip(old["layers"], new["layers"])
                 for x, y in zip(la["v"], lb["v"])), default=0.0)
    return f"changed (max |Δ| {delta:.2g})" if delta > 1e-4 else ""
