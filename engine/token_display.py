"""Readable token display: a token's raw bytes turned into the characters they form.

Byte-level tokenizers (GPT-2 style BPE, SentencePiece byte fallback, the built-in bytes
tokenizer) split a multi-byte character such as `一` (e4 b8 80) or an emoji over several
tokens. Decoded one token at a time each part is `�`. Here consecutive tokens whose bytes
only form characters together are merged into one display piece, and bytes that form no
character within their run are shown as their hex values, `⟨e4 b8⟩`.

Pure functions over lists of bytes; no tokenizer and no report format is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

PARTIAL_OPEN, PARTIAL_CLOSE = "⟨", "⟩"


@dataclass
class Piece:
    """One display chip: the steps `start..end-1` whose bytes form `text` together."""

    text: str
    start: int
    end: int
    ids: list[int] = field(default_factory=list)
    partial: bool = False       # holds bytes that form no character in this run
    special: bool = False       # a special token shown by its name

    @property
    def steps(self) -> range:
        return range(self.start, self.end)


def _char_len(lead: int) -> int:
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0                    # a continuation byte or one UTF-8 never uses


def _units(data: bytes) -> list[tuple[int, int, str | None]]:
    """`data` cut into characters `(start, end, char)` and stray bytes `(i, i+1, None)`."""
    out, pos = [], 0
    while pos < len(data):
        n = _char_len(data[pos])
        if n:
            try:
                char = data[pos:pos + n].decode("utf-8")
            except UnicodeDecodeError:
                char = None
            if char is not None and len(char) == 1:
                out.append((pos, pos + n, char))
                pos += n
                continue
        end = pos + 1
        if n > 1 and pos + n > len(data) and all(0x80 <= b <= 0xBF for b in data[pos + 1:]):
            end = len(data)                     # a character cut off at the end of the run
        elif n == 0 and 0x80 <= data[pos] <= 0xBF:
            while end < len(data) and 0x80 <= data[end] <= 0xBF:
                end += 1                        # the tail of a character cut off before
        out.append((pos, end, None))
        pos = end
    return out


def _render(units: list[tuple[int, int, str | None]], data: bytes) -> tuple[str, bool]:
    """Characters as themselves, each run of stray bytes as `⟨e4 b8⟩`."""
    parts: list[str] = []
    stray: list[str] = []
    for start, end, char in units:
        if char is None:
            stray += [f"{b:02x}" for b in data[start:end]]
            continue
        if stray:
            parts.append(PARTIAL_OPEN + " ".join(stray) + PARTIAL_CLOSE)
            stray = []
        parts.append(char)
    if stray:
        parts.append(PARTIAL_OPEN + " ".join(stray) + PARTIAL_CLOSE)
    return "".join(parts), any(c is None for _, _, c in units)


def show_bytes(data: bytes) -> str:
    """One token's bytes for display (a top-k row): characters, stray bytes as hex."""
    return _render(_units(data), data)[0]


def _segment(raw: Sequence[bytes | None], names: Sequence[str], ids: Sequence[int | None],
             first: int) -> list[Piece]:
    pieces: list[Piece] = []
    run: list[int] = []         # indexes (into raw) of the current run of byte tokens

    def flush() -> None:
        if not run:
            return
        data = b"".join(raw[i] for i in run)
        bounds, pos = [], 0
        for i in run:
            bounds.append(pos)
            pos += len(raw[i])
        units = _units(data)
        # token k belongs to group owner[k]; a character over several tokens joins them
        owner = list(range(len(run)))
        for start, end, char in units:
            if end - start == 1:
                continue
            a = _token_at(bounds, start)
            b = _token_at(bounds, end - 1)
            for k in range(a + 1, b + 1):
                owner[k] = owner[a]
        k = 0
        while k < len(run):
            m = k
            while m + 1 < len(run) and owner[m + 1] == owner[k]:
                m += 1
            lo = bounds[k]
            hi = bounds[m + 1] if m + 1 < len(run) else len(data)
            inside = [u for u in units if lo <= u[0] < hi]
            text, partial = _render(inside, data)
            pieces.append(Piece(text, first + run[k], first + run[m] + 1,
                                [x for x in (ids[j] for j in run[k:m + 1]) if x is not None],
                                partial=partial))
            k = m + 1
        run.clear()

    for i, data in enumerate(raw):
        if data is None:
            flush()
            pieces.append(Piece(names[i] if i < len(names) else "", first + i, first + i + 1,
                                [ids[i]] if ids[i] is not None else [], special=True))
        else:
            run.append(i)
    flush()
    return pieces


def _token_at(bounds: list[int], offset: int) -> int:
    k = 0
    while k + 1 < len(bounds) and bounds[k + 1] <= offset:
        k += 1
    return k


def decode_hex(values: Sequence[str | None] | None) -> list[bytes | None] | None:
    """Per-token hex strings (as stored in results) back to bytes; None when absent or
    malformed, so callers fall back to the per-token texts."""
    if not values:
        return None
    out: list[bytes | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        try:
            out.append(bytes.fromhex(v))
        except (TypeError, ValueError):
            return None
    return out


def token_pieces(names: Sequence[str], token_bytes: Sequence[bytes | None] | None = None,
                 ids: Sequence[int] | None = None, boundary: int | None = None) -> list[Piece]:
    """Display pieces of one side's continuation.

    `names` are the per-token display texts (one per step), `token_bytes` each token's
    raw bytes (None for a special token, shown by its name). Without bytes every token is
    its own piece. `boundary` (the first divergence step) is never merged across, so the
    divergence always starts a piece of its own.
    """
    n = len(names) if token_bytes is None else len(token_bytes)
    id_list: list[int | None] = [ids[i] if ids is not None and i < len(ids) else None
                                 for i in range(n)]
    if token_bytes is None or len(token_bytes) != n:
        return [Piece(names[i], i, i + 1, [id_list[i]] if id_list[i] is not None else [])
                for i in range(len(names))]
    cuts = [0, n] if boundary is None or not 0 < boundary < n else [0, boundary, n]
    out: list[Piece] = []
    for lo, hi in zip(cuts, cuts[1:]):
        out += _segment(token_bytes[lo:hi], names[lo:hi], id_list[lo:hi], lo)
    return out


def piece_at(pieces: Sequence[Piece], step: int | None) -> Piece | None:
    """The piece holding `step`."""
    if step is None:
        return None
    return next((p for p in pieces if p.start <= step < p.end), None)


def joined(pieces: Sequence[Piece], mark: int | None = None,
           left: str = "⟦", right: str = "⟧") -> str:
    """The pieces as one string, the piece holding step `mark` between `left`/`right`."""
    out = []
    for p in pieces:
        if mark is not None and p.start <= mark < p.end:
            out.append(f"{left}{p.text}{right}")
        else:
            out.append(p.text)
    return "".join(out)
