"""Text helpers shared by every report format: visible escapes, number formatting,
Markdown escaping and truncation.

Prompts, model output and error messages are untrusted text. Before any of it reaches a
report it goes through `visible()`, which turns characters that a terminal, a browser or
an XML parser would act on or reject (C0/C1 controls, DEL, lone surrogates, the XML 1.0
non-characters) into readable escapes such as `\\x1b`. Newline and tab are kept.
"""

from __future__ import annotations

import math
import re
from typing import Any

# Everything XML 1.0 forbids, plus the controls a terminal would interpret (ESC, C1),
# plus lone surrogates (not encodable as UTF-8). \t and \n stay; \r becomes visible.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _escape_char(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: Any) -> str:
    """`text` as a string with unsafe characters replaced by visible escapes."""
    return _UNSAFE.sub(_escape_char, str(text))


def one_line(text: Any) -> str:
    """Collapse newlines and tabs to visible markers so the text stays on one line."""
    return visible(text).replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")


def truncate(text: str, limit: int) -> str:
    """At most `limit` characters; an ellipsis marks a cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + "…"


def token_text(token: str) -> str:
    """One token for display: newline and tab as arrows, everything else visible."""
    return visible(token).replace("\n", "↵").replace("\t", "⇥")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for a table: '—' for missing, 'inf'/'nan' spelled out, small values in
    scientific notation, otherwise `digits` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not is_number(value):
        return one_line(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        return f"{value:.{max(digits - 2, 1)}e}"
    if abs(value) >= 1:                 # never scientific for large values: 1234, not 1.23e+03
        decimals = max(digits - len(str(int(abs(value)))), 0)
        text = f"{value:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value:.{digits}g}"


def fmt_ratio(value: Any) -> str:
    """A fraction in [0, 1] (top-1 agreement) with three decimals."""
    if is_number(value) and math.isfinite(value):
        return f"{value:.3f}"
    return fmt(value)


def fmt_seconds(value: Any) -> str:
    if not is_number(value) or not math.isfinite(value):
        return fmt(value)
    return f"{value:.2f} s" if value < 100 else f"{value / 60:.1f} min"


def short_hash(value: str, length: int = 12) -> str:
    """A fingerprint shortened for display (`sha256:` prefixes are kept)."""
    value = visible(value)
    prefix, sep, digest = value.rpartition(":")
    if sep and len(digest) > length:
        return f"{prefix}:{digest[:length]}"
    return value if len(value) <= length else value[:length]


def metrics_text(metrics: dict) -> str:
    """`key=value` pairs of a check's metrics on one line, keys sorted; nested dicts as
    `key={a=1, b=2}`, lists shortened."""
    parts = []
    for key in sorted(metrics, key=str):
        value = metrics[key]
        if isinstance(value, dict):
            text = "{" + metrics_text(value) + "}"
        elif isinstance(value, (list, tuple)):
            shown = ", ".join(fmt(v) for v in value[:8])
            text = f"[{shown}{', …' if len(value) > 8 else ''}]"
        else:
            text = fmt(value)
        parts.append(f"{one_line(key)}={text}")
    return ", ".join(parts)


# --- Markdown -----------------------------------------------------------------------

# Inline characters GFM acts on anywhere in a line. Reports never start a line with
# untrusted text, so line-start markers (#, >, -, 1.) need no escape.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: Any) -> str:
    """Inline Markdown text: HTML tags and entities neutralised, punctuation that GFM
    acts on backslash-escaped, so the text renders exactly as written."""
    text = visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_cell(text: Any, limit: int = 80) -> str:
    """A table cell: one line, at most `limit` characters of the original text."""
    return md_escape(truncate(one_line(text), limit))


def md_pre(text: Any, limit: int = 4000) -> str:
    """Text for a `<pre>` block in Markdown: HTML-escaped (Markdown is not parsed inside
    `<pre>`), controls visible, at most `limit` characters."""
    text = visible(truncate(str(text), limit))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


ICONS = {"pass": "✅", "fail": "❌", "error": "💥", "not-run": "⏭️"}


def icon(status: str) -> str:
    return ICONS.get(status, "❔")
