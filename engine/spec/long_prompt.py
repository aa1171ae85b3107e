"""Prompts that are long by design, and length sweeps.

Ports break at length: rope scaling past the trained length, chunked-prefill kernels that
switch on above a threshold, KV-cache blocks whose boundary positions corrupt, sliding
windows. A case reaches them with

- `prompt_file: FILE` — the prompt text read from a file beside the spec (size-checked);
- `long_prompt: {tokens: N, source: builtin | FILE, seed: S}` — a prompt of exactly N
  tokens of the spec's tokenizer: the source text (the built-in one is pseudo-text drawn
  word by word from a fixed list with a portable integer generator, so it is the same on
  every machine; a file is repeated until long enough) is tokenized and cut to its first N
  ids. Ids are the truth, so "exactly N tokens" holds whatever the tokenizer does at the
  cut;
- `lengths: [512, 1024, …]` or `around: [256, 1024]` with `delta: 1` — one case expanded
  into one sub-case per prompt length, each with its own id (`ID-N`) in every report.

A golden stores such a prompt by its recipe and the sha256 of its ids, not the ids: the
golden stays small, and verifying it regenerates the ids and compares the hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from specengine.errors import SpecError

MAX_PROMPT_FILE_BYTES = 4 * 1024 * 1024
MAX_TOKENS = 1_048_576
RECIPE_VERSION = 1

# a fixed vocabulary for the built-in source: common English words of mixed length
_WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which "
    "this be or has had not but have they their one all been also its new after first two "
    "who more other into time when there some can years would she only over year most many "
    "later such made then may between where city people both about during these than under "
    "through world state known while three number part since early high called each used "
    "large river north south east west water light music system family church school group "
    "history government country army music series book film game team season album song "
    "station village island house road bridge market garden valley mountain forest field "
    "language science theory energy number letter story night morning summer winter spring "
    "history century region border harbor castle temple library museum painting stone"
).split()


def _splitmix64(x: int) -> int:
    """One step of the splitmix64 integer mixer (exact on every machine)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


def builtin_text(words: int, seed: int) -> str:
    """Deterministic pseudo-text of `words` words, in sentences of 6–17 words."""
    out: list[str] = []
    state = _splitmix64(seed & 0xFFFFFFFFFFFFFFFF)
    sentence_left = 0
    for _ in range(words):
        state = _splitmix64(state)
        if sentence_left == 0:
            sentence_left = 6 + (state >> 59) % 12
            word = _WORDS[(state >> 8) % len(_WORDS)].capitalize()
        else:
            word = _WORDS[(state >> 8) % len(_WORDS)]
        sentence_left -= 1
        out.append(word + ("." if sentence_left == 0 else ""))
    return " ".join(out)


@dataclass(frozen=True)
class Recipe:
    """How a long prompt is made: exactly `tokens` ids of `source` text (seeded)."""

    tokens: int
    source: str = "builtin"       # builtin, or the path of a text file (resolved)
    seed: int = 0
    source_sha256: str = ""       # of the file's bytes (a changed file is a new prompt)
    written: str = "builtin"      # the source as written in the spec (for reports)

    def as_dict(self) -> dict[str, Any]:
        return {"version": RECIPE_VERSION, "tokens": self.tokens, "source": self.written,
                "seed": self.seed, "source_sha256": self.source_sha256}


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file beside a spec: regular file, size-checked before reading."""

    try:
        if not path.is_file():
            raise SpecError(f"{what} {path} is not a regular file")
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            raise SpecError(f"{what} {path} is {size} bytes; the limit is "
                            f"{MAX_PROMPT_FILE_BYTES}")
        with open(path, "rb") as handle:
            data = handle.read(MAX_PROMPT_FILE_BYTES + 1)
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{what} {path} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def source_text(recipe: Recipe, min_words: int) -> str:
    if recipe.source == "builtin":
        return builtin_text(min_words, recipe.seed)
    return read_text_file(Path(recipe.source), "long_prompt source")


def build_ids(recipe: Recipe, encode) -> list[int]:
    """Exactly `recipe.tokens` prompt ids: the source tokenized (a file repeated, the
    built-in text grown) until long enough, then cut. `encode(text) -> ids`."""
    words = max(64, recipe.tokens)            # about one token per word or more
    for _ in range(12):
        text = source_text(recipe, words)
        if recipe.source != "builtin":
            base = text
            while True:
                ids = encode(text)
                if len(ids) >= recipe.tokens or not base.strip():
                    break
                text = text + "\n\n" + base
        ids = encode(text)
        if len(ids) >= recipe.tokens:
            return list(ids[:recipe.tokens])
        words *= 2
    raise ValueError(f"the long_prompt source gives only {len(ids)} tokens, fewer than "
                     f"{recipe.tokens}")


def ids_sha256(ids: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps([int(i) for i in ids], separators=(",", ":")).encode()
                          ).hexdigest()


def sweep_lengths(entry: dict) -> list[int]:
    """The prompt lengths a case expands into (`lengths`, or `around` ± `delta`)."""
    if "lengths" in entry:
        values = [int(x) for x in entry["lengths"]]
    elif "around" in entry:
        delta = int(entry.get("delta", 1))
        values = [c + d for c in entry["around"] for d in (-delta, 0, delta)]
    else:
        return []
    return sorted(set(v for v in values if v > 0))


def display_text(decode, ids: Sequence[int], recipe: Recipe, edge: int = 24) -> str:
    """A long prompt for reading: its recipe, its first and last tokens decoded."""
    head = decode(list(ids[:edge]))
    tail = decode(list(ids[-edge:])) if len(ids) > 2 * edge else ""
    body = f"{head} … {tail}" if tail else head
    return f"[{len(ids)} tokens of {recipe.written} (seed {recipe.seed})] {body}"


PROMPT_POSITIONS = 16


def prompt_positions(length: int, count: int = PROMPT_POSITIONS) -> list[int]:
    """The prompt positions a long case is also scored at: `count` positions spread evenly
    over the prompt, the last one included (position p predicts prompt token p + 1), so
    drift inside a long prefill is seen without keeping logits for every position."""
    if length < 2:
        return []
    last = length - 2
    if last + 1 <= count:
        return list(range(last + 1))
    return sorted({round(i * last / (count - 1)) for i in range(count)})
