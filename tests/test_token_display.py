"""Readable tokens: byte pieces merged into the characters they form, partial characters
shown as bytes, in every report format. Chinese, emoji, and a character split across a
divergence; the real SmolLM2 tokenizer on its golden's `capital-zh` case."""

from __future__ import annotations

import json

import pytest

from helpers import REPO
from specengine.report.annotations import case_failure_text
from specengine.report import render_html, render_junit, render_markdown, render_terminal
from specengine.report.tokens import chips, divergence_texts, marked
from specengine.results import CaseResult, Check, RunResult, Side
from specengine.token_display import joined, show_bytes, token_pieces
from specengine.loading.tokenizer import BytesTokenizer

# 一 位 人 ， 被 : e4b880 | e4bd 8d | e4baba | efbc8c | e8 a2 ab
ZH = [b"\xe4\xb8\x80", b"\xe4\xbd", b"\x8d", b"\xe4\xba\xba", b"\xef\xbc\x8c",
      b"\xe8", b"\xa2", b"\xab"]


def names(raw):
    return [show_bytes(b) for b in raw]


def test_bytes_merge_into_characters():
    pieces = token_pieces(names(ZH), ZH, list(range(8)))
    assert [p.text for p in pieces] == ["一", "位", "人", "，", "被"]
    assert [(p.start, p.end) for p in pieces] == [(0, 1), (1, 3), (3, 4), (4, 5), (5, 8)]
    assert pieces[1].ids == [1, 2]
    assert not any(p.partial for p in pieces)


def test_partial_character_is_shown_as_its_bytes():
    assert show_bytes(b"\xe4\xb8") == "⟨e4 b8⟩"
    assert show_bytes(b"ab\xe4") == "ab⟨e4⟩"
    pieces = token_pieces(names(ZH[:7]), ZH[:7])      # 被 cut off after two bytes
    assert pieces[-1].text == "⟨e8 a2⟩" and pieces[-1].partial
    assert "\ufffd" not in joined(pieces)


def test_emoji_and_special_tokens():
    raw = [b"Hi", b" \xf0\x9f\x98", b"\x80", None, b"!"]
    pieces = token_pieces(["Hi", "x", "y", "<eos>", "!"], raw)
    assert [p.text for p in pieces] == ["Hi", " 😀", "<eos>", "!"]
    assert pieces[2].special


def test_a_character_split_across_the_divergence_is_never_merged_over_it():
    golden = ZH
    cand = ZH[:6] + [b"\xa3", b"\xab"]     # 被 (e8 a2 ab) vs 裫 (e8 a3 ab) at step 6
    g = token_pieces(names(golden), golden, boundary=6)
    c = token_pieces(names(cand), cand, boundary=6)
    assert joined(g, 6) == "一位人，⟨e8⟩⟦⟨a2 ab⟩⟧"
    assert joined(c, 6) == "一位人，⟨e8⟩⟦⟨a3 ab⟩⟧"
    # without a boundary the same bytes are one character
    assert joined(token_pieces(names(cand), cand)) == "一位人，裫"


def test_bytes_tokenizer_round_trip():
    tok = BytesTokenizer()
    ids = tok.encode("北京😀")[1:]
    assert tok.token_strings(ids[:1]) == ["⟨e5⟩"]
    assert joined(token_pieces(tok.token_strings(ids), tok.token_bytes(ids), ids)) == "北京😀"


def _side(backend, dtype="float32"):
    return Side(backend=backend, runtime="torch", device="cpu", dtype=dtype)


def zh_case(golden_ids, golden_raw, cand_ids, cand_raw, step, tok_names) -> CaseResult:
    decode = lambda raw: b"".join(b for b in raw if b).decode("utf-8", "replace")  # noqa: E731
    return CaseResult(
        id="capital-zh", status="fail", prompt="法国的首都是",
        golden_text=decode(golden_raw), candidate_text=decode(cand_raw),
        golden_tokens=tok_names(golden_ids, golden_raw),
        candidate_tokens=tok_names(cand_ids, cand_raw),
        golden_token_bytes=[b.hex() if b is not None else None for b in golden_raw],
        candidate_token_bytes=[b.hex() if b is not None else None for b in cand_raw],
        golden_ids=list(golden_ids), candidate_ids=list(cand_ids), divergence_step=step,
        checks=[Check("divergence", "fail", f"step {step}: not in the golden's top-10")])


def zh_run(case) -> RunResult:
    return RunResult(spec_name="smollm2-135m", spec_path="specs/smollm2-135m.yaml",
                     command="check", candidate=_side("cpu-bf16", "bfloat16"),
                     reference=_side("cpu"), comparison="cross-backend",
                     reference_kind="golden", status="fail", cases=[case])


def _every_report(run) -> dict[str, str]:
    return {"html": render_html([run]), "markdown": render_markdown([run]),
            "terminal": render_terminal([run]), "junit": render_junit([run]),
            "annotation": case_failure_text(run, run.cases[0])}


def test_every_report_shows_the_characters():
    case = zh_case(range(8), ZH, range(8), ZH[:5] + [b"\xe8", b"\xa3", b"\xab"], 6,
                   lambda ids, raw: names(raw))
    for fmt, text in _every_report(zh_run(case)).items():
        assert "\ufffd" not in text, fmt
        assert "一位人，" in text, fmt
        assert "⟨a2 ab⟩" in text and "⟨a3 ab⟩" in text, fmt
    html = render_html([zh_run(case)])
    assert 'class="tok diverged' in html and "steps 6–7" in html
    assert divergence_texts(case) == ("⟨a2 ab⟩", "⟨a3 ab⟩")


def test_results_without_token_bytes_still_render():
    case = zh_case(range(2), [b"a", b"b"], range(2), [b"a", b"c"], 1,
                   lambda ids, raw: names(raw))
    case.golden_token_bytes = case.candidate_token_bytes = []
    assert [c.text for c in chips(case, "candidate")] == ["a", "c"]
    assert marked(case, "golden") == "a⟦b⟧"


@pytest.mark.slow
def test_smollm2_capital_zh_golden(smollm2_dir):
    """The committed golden's capital-zh continuation through the real tokenizer: every
    character readable; the candidate diverges in the middle of `被` (step 6)."""
    from specengine.loading.tokenizer import HFTokenizer

    tok = HFTokenizer(smollm2_dir)
    golden = json.loads((REPO / "golden/smollm2-135m/cpu.json").read_text())
    ids = golden["cases"]["capital-zh"]["output_ids"]
    raw = tok.token_bytes(ids)
    per_token = tok.token_strings(ids)
    assert "\ufffd" not in "".join(per_token)
    assert joined(token_pieces(per_token, raw, ids)).startswith("一位人，被福河")
    cand = ids[:6] + [ids[6] + 1] + ids[7:]
    case = zh_case(ids, raw, cand, tok.token_bytes(cand), 6,
                   lambda i, _raw: tok.token_strings(i))
    reports = _every_report(zh_run(case))
    for fmt, text in reports.items():
        assert "\ufffd" not in text, fmt
        if fmt in ("html", "markdown", "junit"):
            assert "一位人，被福河⟨e6 b4⟩" in text, fmt      # the decoded continuation
        if fmt != "html":
            assert "一位人，⟨e8⟩⟦" in text.replace("<b>", ""), fmt   # the divergence, marked
    assert ">⟨e8⟩</span>" in reports["html"] and ">，</span>" in reports["html"]
