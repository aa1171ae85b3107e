"""Rewriting a spec safely: moving its flat tolerance blocks (the form before numeric classes) under the class
they were measured for, and writing a changed spec back safely.

ruamel.yaml's round-trip parser locates each block; the edit itself is made on the text,
so every other byte — comments, blank lines, quoting, wrapped flow sequences — stays as
the author wrote it. A block-style block gets a `CLASS:` line and two more spaces of
indentation; a flow-style one (`{kl_max: 0.1}`) becomes `{CLASS: {kl_max: 0.1}}`.
`write_tolerances` puts calibrated limits into one class's block (ruamel round-trip,
comments kept). Every rewrite is validated before it is written, atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specengine.errors import SpecError
from specengine.files import atomic_write_text
from specengine.spec.checks import CLASSES, tolerance_blocks
from specengine.spec.load import parse_spec


@dataclass(frozen=True)
class FlatBlock:
    """A tolerance block whose keys are limits, not classes."""

    path: tuple            # e.g. ("defaults", "tolerance") or ("cases", 3, "tolerance")
    key_line: int          # 0-based line of the `tolerance:` key
    line: int              # 0-based position of the block (first key, or its `{`)
    col: int
    flow: bool

    @property
    def where(self) -> str:
        return "/".join(str(p) for p in self.path)


def flat_blocks(text: str, file: str = "<spec>") -> list[FlatBlock]:
    """Every tolerance block of a spec text that is not keyed by numeric class."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise SpecError(f"cannot read the spec to migrate it: {str(exc).splitlines()[0]}",
                        file) from None
    out = []
    for path, block in tolerance_blocks(doc):
        if not block or all(key in CLASSES for key in block):
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        key_line = parent.lc.key(path[-1])[0]
        out.append(FlatBlock(path, key_line, block.lc.line, block.lc.col,
                             bool(block.fa.flow_style())))
    return out


def migrate_text(text: str, klass: str, file: str = "<spec>") -> tuple[str, list[str]]:
    """`text` with every flat tolerance block moved under `klass`; and the blocks moved."""
    if klass not in CLASSES:
        raise SpecError(f"'{klass}' is not a numeric class (float32, half, quantized)", file)
    blocks = flat_blocks(text, file)
    lines = text.splitlines(keepends=True)
    for block in sorted(blocks, key=lambda b: b.line, reverse=True):
        lines = _wrap_flow(lines, block, klass) if block.flow else _wrap_block(lines, block, klass)
    return "".join(lines), [b.where for b in blocks]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _wrap_block(lines: list[str], block: FlatBlock, klass: str) -> list[str]:
    start, end = block.key_line + 1, block.key_line + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) >= block.col):
        end += 1
    while end > start and not lines[end - 1].strip():   # trailing blank lines stay put
        end -= 1
    newline = "\r\n" if lines[block.key_line].endswith("\r\n") else "\n"
    body = ["  " + ln if ln.strip() else ln for ln in lines[start:end]]
    return lines[:start] + [" " * block.col + f"{klass}:{newline}"] + body + lines[end:]


def _wrap_flow(lines: list[str], block: FlatBlock, klass: str) -> list[str]:
    text = "".join(lines)
    offset = sum(len(ln) for ln in lines[:block.line]) + block.col
    close = _matching_brace(text, offset)
    text = text[:offset] + "{" + klass + ": " + text[offset:close + 1] + "}" + text[close + 1:]
    return text.splitlines(keepends=True)


def _matching_brace(text: str, start: int) -> int:
    """Index of the `}` closing the flow mapping that opens at `start`."""
    depth, i, quote = 0, start, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise SpecError("unbalanced flow mapping in a tolerance block")


def write_spec_text(path: Path, text: str) -> None:
    """Write a changed spec: validated first (SpecError, file untouched, when the new text
    is not a valid spec), then atomically, keeping the file's permissions."""
    path = Path(path)
    parse_spec(text, str(path), base_dir=path.parent)
    mode = path.stat().st_mode & 0o7777
    atomic_write_text(path, text)
    os.chmod(path, mode)


def write_tolerances(path: Path, tolerance: dict[str, Any], klass: str) -> str:
    """Put `tolerance` into the spec's defaults.tolerance.<klass> (the class measured; no
    other class's block is touched) with ruamel.yaml's round-trip mode (comments, key
    order, flow style and quoting kept), write atomically, and validate the result with
    the safe loader; on a validation error the file is left as it was. Returns the new
    text."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

    path = Path(path)
    original = path.read_text("utf-8")
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    offset = _sequence_offset(original)
    yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
    doc = yaml.load(original)
    defaults = doc.get("defaults")
    if defaults is None:
        defaults = CommentedMap()
        doc["defaults"] = defaults
    classes = defaults.get("tolerance")
    if classes is None:
        classes = CommentedMap()
        defaults["tolerance"] = classes
    tol = classes.get(klass)
    if tol is None:
        tol = CommentedMap()
        classes[klass] = tol
    for key, value in tolerance.items():
        if key == "divergence":
            div = tol.get("divergence")
            if div is None:
                div = CommentedMap()
                div.fa.set_flow_style()
                tol["divergence"] = div
            for k, v in value.items():
                div[k] = v
        else:
            tol[key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    write_spec_text(path, text)      # validated first (SpecError, file untouched); atomic
    return text


def _sequence_offset(text: str) -> int:
    """How far block sequences are indented under their key in `text` ("cases:\n  - id"
    is 2, "cases:\n- id" is 0), so a round-trip dump keeps the file's layout."""
    import re

    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        key = re.match(r"^( *)[^\s#-][^:#]*:\s*(#.*)?$", line)
        nxt = re.match(r"^( *)- ", lines[i + 1])
        if key and nxt:
            return max(0, len(nxt.group(1)) - len(key.group(1)))
    return 0
