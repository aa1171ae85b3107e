"""Served tokens back to token ids: a byte-level BPE's printable-character table, and the
re-reading of a text-only reply along the golden's ids. Pure functions, no model."""

from __future__ import annotations

import json


def resegment(golden_ids: list[int], text: str, decode, retokenize) -> list[int]:
    """Ids for `text` that follow the golden's ids as far as the texts agree, then the
    tokenizer's own ids for the rest. `decode(ids) -> str`, `retokenize(str) -> ids`.

    A server that returns only text gives no segmentation; any ids that decode to the
    text are an equally valid reading of it, and reading it along the golden's makes the
    id comparison a comparison of text. A golden prefix that ends inside a character
    (byte tokens, shown as U+FFFD) counts only at the very end of the golden.
    """
    best, best_len = 0, 0
    for i in range(1, len(golden_ids) + 1):
        prefix = decode(golden_ids[:i])
        clean = prefix.rstrip("\ufffd")
        if clean != prefix and i < len(golden_ids):
            if not text.startswith(clean):
                break
            continue
        if not text.startswith(clean):
            break
        best, best_len = i, len(clean)
    rest = text[best_len:]
    return list(golden_ids[:best]) + (retokenize(rest) if rest else [])


def is_byte_level(hf) -> bool:
    try:
        state = json.loads(hf.backend_tokenizer.to_str())
    except Exception:
        return False
    decoder = state.get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", []) or []}
    return "ByteLevel" in kinds


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character -> byte table (the inverse of bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def align_echo(expected: list[int], n_steps: int, matches, skippable) -> list[int | None] | int:
    """Which echoed step carries each expected id: a list (None where the server left a
    skippable token out), or the first position that does not follow (an int).
    `matches(step_index, id) -> bool`, `skippable(id) -> bool`."""
    out: list[int | None] = []
    k = 0
    for j, tid in enumerate(expected):
        if k < n_steps and matches(k, tid):
            out.append(k)
            k += 1
        elif skippable(tid):
            out.append(None)
        else:
            return j
    return out
