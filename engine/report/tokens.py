"""A case's two continuations as readable display pieces, the same for every report
format: multi-byte characters split over several tokens are merged into the character,
a partial character is shown as its bytes (`⟨e4 b8⟩`), and the first divergence always
starts a piece of its own."""

from __future__ import annotations

from dataclasses import dataclass

from specengine.results import CaseResult
from specengine.token_display import Piece, decode_hex, joined, piece_at, token_pieces


@dataclass
class Chip:
    """One token chip of a continuation: its text, the steps and ids it covers, and its
    class: "" | "diverged" (the first divergence) | "after" (past it, candidate side)."""

    text: str
    start: int
    end: int
    ids: list[int]
    cls: str
    partial: bool = False

    @property
    def title(self) -> str:
        steps = f"step {self.start}" if self.end - self.start == 1 else \
            f"steps {self.start}–{self.end - 1}"
        ids = ", ".join(str(i) for i in self.ids)
        return f"{steps} · id{'s' if len(self.ids) > 1 else ''} {ids}" if ids else steps


def side_pieces(case: CaseResult, side: str) -> list[Piece]:
    """The pieces of one side ("golden" or "candidate")."""
    golden = side == "golden"
    names = case.golden_tokens if golden else case.candidate_tokens
    raw = decode_hex(case.golden_token_bytes if golden else case.candidate_token_bytes)
    ids = case.golden_ids if golden else case.candidate_ids
    return token_pieces(names, raw, ids, boundary=case.divergence_step)


def chips(case: CaseResult, side: str) -> list[Chip]:
    step = case.divergence_step
    out = []
    for p in side_pieces(case, side):
        cls = ""
        if step is not None and p.start <= step < p.end:
            cls = "diverged"
        elif step is not None and p.start > step and side == "candidate":
            cls = "after"
        out.append(Chip(p.text, p.start, p.end, p.ids, cls, p.partial))
    return out


def divergence_texts(case: CaseResult) -> tuple[str | None, str | None]:
    """What each side shows at the first divergence (None past a side's end)."""
    step = case.divergence_step
    if step is None:
        return None, None
    g = piece_at(side_pieces(case, "golden"), step)
    c = piece_at(side_pieces(case, "candidate"), step)
    return (g.text if g else None), (c.text if c else None)


def marked(case: CaseResult, side: str, mark: bool = True) -> str:
    """One side's continuation as one readable string, the first divergence in ⟦ ⟧; the
    decoded text when there are no per-token texts."""
    pieces = side_pieces(case, side)
    if not pieces:
        return case.golden_text if side == "golden" else case.candidate_text
    return joined(pieces, case.divergence_step if mark else None)


def split_marked(case: CaseResult, side: str) -> tuple[str, str | None, str]:
    """(before, at, after) around the first divergence; `at` None when there is none."""
    pieces = side_pieces(case, side)
    step = case.divergence_step
    at = piece_at(pieces, step)
    if at is None:
        text = joined(pieces) if pieces else (case.golden_text if side == "golden"
                                              else case.candidate_text)
        return text, None, ""
    before = "".join(p.text for p in pieces if p.end <= at.start)
    after = "".join(p.text for p in pieces if p.start >= at.end)
    return before, at.text, after


def decoded(case: CaseResult, side: str) -> str:
    """One side's whole continuation decoded: every character merged (also across the
    divergence), a character cut off at the end shown as its bytes instead of `�`."""
    golden = side == "golden"
    text = case.golden_text if golden else case.candidate_text
    raw = decode_hex(case.golden_token_bytes if golden else case.candidate_token_bytes)
    if raw is None or any(b is None for b in raw):   # special tokens: the tokenizer's text
        return text
    return joined(token_pieces(case.golden_tokens if golden else case.candidate_tokens, raw))
