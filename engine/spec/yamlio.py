"""Safe YAML loading that remembers where every value came from.

The document is composed into nodes (no object construction), every tag is checked
against the plain-data whitelist, and the value tree is built here from scalars, maps and
lists only. `Located.where(path)` gives the (line, col) of a value or key, 1-based.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from specengine.errors import SpecError

_PLAIN = "tag:yaml.org,2002:"
_ALLOWED = {"str", "int", "float", "bool", "null", "map", "seq"}
MAX_NODES = 200_000  # alias expansion bound ("billion laughs")


@dataclass
class Located:
    """Plain data plus the positions of its values and mapping keys."""

    data: Any
    file: str
    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: tuple | list, key: bool = False) -> tuple[int, int]:
        """Position of the value at `path` (or of its key), else of its nearest parent."""
        path = tuple(path)
        table = self.keys if key else self.values
        while path:
            if path in table:
                return table[path]
            if not key and path in self.keys:
                return self.keys[path]
            path = path[:-1]
        return self.values.get((), (1, 1))

    def error(self, path: tuple | list, message: str, key: bool = False) -> SpecError:
        line, col = self.where(path, key=key)
        return SpecError(message, self.file, line, col)


def load_yaml(text: str, file: str) -> Located:
    """Parse YAML text safely into plain data with positions; SpecError on any problem.

    A document that libyaml (PyYAML's C parser, when installed) composes and the builder
    accepts is taken from there — same YAML 1.2 tag rules as ruamel's, ~30x faster on a
    1,000-case spec. Anything else (no libyaml, a %directive, a `...` line, a !tag, a tab,
    CR or other line breaks, any error) goes through ruamel, which words every error;
    tests/test_fuzz.py checks that the two give identical data and positions.
    """
    _prescan(text, file)
    root = _compose_fast(text)
    if root is not None:
        located = Located(None, file)
        located.data = _Builder(located).build(root, ())   # its errors are the same either way
        return located
    return _load_ruamel(text, file)


MAX_DEPTH = 64


def _prescan(text: str, file: str) -> None:
    """Refuse a document with more than MAX_NODES nodes (before alias expansion, which the
    builder bounds) or nested deeper than MAX_DEPTH, from its parser events alone: no node
    tree is built, so a document at the size limit is refused in about a second, with the
    position of the first node past the limit. libyaml's events where it parses the text,
    else ruamel's; a text neither parses is left to the composer, which words the error."""
    for events in (_fast_events, _ruamel_events):
        try:
            for count, depth, event in _walk(events(text)):
                if depth > MAX_DEPTH:
                    raise _event_error(event, file, f"YAML document nested too deeply (more than "
                                                    f"{MAX_DEPTH} levels)")
                if count > MAX_NODES:
                    raise _event_error(event, file, f"document too large (more than "
                                                    f"{MAX_NODES} values)")
            return
        except SpecError:
            raise
        except Exception:
            continue


def _walk(events):
    """(values so far, depth, event) for every value node, as the builder counts them:
    mapping keys are not values, and depth is the length of the value's path."""
    count = 0
    stack: list[list[bool]] = []      # per open collection: [is_mapping, next is a key]
    for event in events:
        name = type(event).__name__
        if name in ("MappingEndEvent", "SequenceEndEvent"):
            stack.pop()
            continue
        if name not in ("MappingStartEvent", "SequenceStartEvent", "ScalarEvent",
                        "AliasEvent"):
            continue
        is_key = bool(stack) and stack[-1][0] and stack[-1][1]
        if stack and stack[-1][0]:
            stack[-1][1] = not stack[-1][1]
        if not is_key:
            count += 1
            yield count, len(stack), event
        if name in ("MappingStartEvent", "SequenceStartEvent"):
            stack.append([name == "MappingStartEvent", True])


def _event_error(event, file: str, message: str) -> SpecError:
    mark = event.start_mark
    return SpecError(message, file, mark.line + 1, mark.column + 1)


def _fast_events(text: str):
    loader_class = _fast_loader()
    if loader_class is None:
        raise LookupError("no libyaml")
    loader = loader_class(text)
    try:
        while loader.check_event():
            yield loader.get_event()
    finally:
        loader.dispose()


def _ruamel_events(text: str):
    from ruamel.yaml import YAML

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield from YAML(typ="safe", pure=True).parse(text)


# (libyaml also accepts a block scalar header glued to a comment, `|#`, which the YAML
# spec and ruamel refuse: such a text goes the reference way)
_SLOW_ONLY = re.compile(r"^%|^\.\.\.|(?:^|[\s\[\]{},])!|[\t\r\x85\u2028\u2029\ufeff]"
                        r"|[|>][-+0-9]*#", re.M)


@lru_cache(maxsize=1)
def _fast_loader():
    """A libyaml composer with ruamel's YAML 1.2 implicit resolvers, or None."""
    try:
        from ruamel.yaml.resolver import implicit_resolvers
        from yaml.cyaml import CParser
        from yaml.resolver import BaseResolver
    except ImportError:
        return None

    class Loader(CParser, BaseResolver):
        yaml_implicit_resolvers: dict = {}

        def __init__(self, stream):
            CParser.__init__(self, stream)
            BaseResolver.__init__(self)

    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) in versions:
            Loader.add_implicit_resolver(tag, re.compile(regexp.pattern, regexp.flags), first)
    return Loader


def _compose_fast(text: str):
    """The root node as libyaml composes it, or None (not available, or not sure)."""
    loader_class = _fast_loader()
    if loader_class is None or _SLOW_ONLY.search(text):
        return None
    try:
        loader = loader_class(text)
        try:
            return loader.get_single_node()
        finally:
            loader.dispose()
    except Exception:
        return None


def _load_ruamel(text: str, file: str) -> Located:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="safe", pure=True)
    try:
        with warnings.catch_warnings():   # a reused anchor is legal YAML: no stderr noise
            warnings.simplefilter("ignore")
            root = yaml.compose(text)
    except MarkedYAMLError as exc:
        message, mark = plain_syntax_error(exc)
        if mark is None:
            raise SpecError(message, file, 1, 1) from None
        raise SpecError(message, file, mark.line + 1, mark.column + 1) from None
    except YAMLError as exc:
        position = getattr(exc, "position", None)   # a reader error: a character offset
        line, col = _line_col(text, position) if isinstance(position, int) else (1, 1)
        problem = " ".join(str(getattr(exc, "reason", None) or exc).split())
        character = getattr(exc, "character", None)
        if isinstance(character, str):
            character = ord(character)
        if isinstance(character, int):
            problem = f"unacceptable character #x{character:04x} ({problem})"
        raise SpecError(f"YAML error: {problem}", file, line, col) from None
    except RecursionError:
        raise SpecError(f"YAML document nested too deeply (more than {MAX_DEPTH} levels)",
                        file, 1, 1) from None
    except ValueError as exc:
        raise SpecError(f"YAML error: {exc}", file, 1, 1) from None
    located = Located(None, file)
    if root is None:
        raise SpecError("the file is empty", file, 1, 1)
    builder = _Builder(located)
    located.data = builder.build(root, ())
    return located


def plain_syntax_error(exc) -> tuple[str, object]:
    """A YAML parser error in plain words, and the place to point at: a tab, a line
    that does not line up with its block, a quote or bracket never closed, a ':' inside
    a plain value. Anything else keeps the parser's own words."""
    problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
    context = str(exc.context or "")
    where, opened = exc.problem_mark or exc.context_mark, exc.context_mark
    at = (f"line {opened.line + 1}, column {opened.column + 1}" if opened is not None
          else "earlier")
    if "'\\t'" in problem or "'\t'" in problem:
        return ("a tab character: YAML indents with spaces only (replace the tab with "
                "spaces)"), where
    if "quoted scalar" in context:
        return (f"a quoted string is never closed: the quote opened at {at} has no closing "
                "quote"), opened or where
    if "flow sequence" in context or "flow mapping" in context:
        bracket = "[" if "sequence" in context else "{"
        return (f"the '{bracket}' opened at {at} is not closed before this "
                f"({problem})"), where
    if problem.startswith("expected <block end>") or "did not find expected key" in problem:
        return (f"bad indentation: this line does not line up with the block it belongs "
                f"to (the block starting at {at}); indent it like that block's other "
                "entries"), where
    if "mapping values are not allowed here" in problem:
        return ("bad indentation or an unquoted ': ': a key where a value was expected "
                "(align the key with the keys above it, or quote a value that contains "
                "': ')"), where
    return f"YAML syntax error: {problem}", where


def _line_col(text: str, position: int) -> tuple[int, int]:
    position = max(0, min(position, len(text)))
    return text.count("\n", 0, position) + 1, position - text.rfind("\n", 0, position)


class _Builder:
    def __init__(self, located: Located):
        self.located = located
        self.count = 0

    def _pos(self, node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _fail(self, node, message: str) -> SpecError:
        line, col = self._pos(node)
        return SpecError(message, self.located.file, line, col)

    def build(self, node, path: tuple) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self._fail(node, f"document too large (more than {MAX_NODES} values after "
                                   "alias expansion)")
        if len(path) > MAX_DEPTH:
            raise self._fail(node, f"YAML document nested too deeply (more than {MAX_DEPTH} levels)")
        tag = str(node.tag)
        short = tag[len(_PLAIN):] if tag.startswith(_PLAIN) else None
        if short not in _ALLOWED:
            raise self._fail(node, f"YAML tag {tag.replace(_PLAIN, '!!')!s} is not allowed "
                                   "(specs hold plain data: strings, numbers, booleans, "
                                   "null, maps and lists)")
        self.located.values[path] = self._pos(node)
        if node.id == "mapping":
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.build_key(key_node)
                if key in out:
                    first = self.located.keys.get(path + (key,), (0, 0))[0]
                    raise self._fail(key_node, f"duplicate key '{key}' (first at line {first}; "
                                               "a key appears once per map)")
                self.located.keys[path + (key,)] = self._pos(key_node)
                out[key] = self.build(value_node, path + (key,))
            return out
        if node.id == "sequence":
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.id == "scalar":
            if short == "str":
                return node.value
            try:
                return _scalar(short, node.value)
            except ValueError:
                raise self._fail(node, f"bad {short} value {node.value!r}") from None
        raise self._fail(node, "unsupported YAML node")

    def build_key(self, node) -> str:
        if node.id != "scalar":
            raise self._fail(node, "mapping keys must be plain scalars")
        tag = str(node.tag)
        if tag.startswith(_PLAIN) and tag[len(_PLAIN):] in {"str", "int", "bool", "null", "float"}:
            return str(node.value)
        raise self._fail(node, f"YAML tag {tag} is not allowed on a key")


def _scalar(kind: str, text: str) -> Any:
    """Plain YAML 1.2 core-schema scalars (the resolver already chose `kind`)."""
    if kind == "null":
        return None
    if kind == "bool":
        return text.strip().lower() in ("true", "yes", "on")
    value = text.strip().replace("_", "")
    if kind == "int":
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-")
        if digits[:2].lower() in ("0x", "0o", "0b"):
            return sign * int(digits, 0)
        return sign * int(digits, 10)
    lowered = value.lower()
    if lowered in (".inf", "+.inf"):
        return float("inf")
    if lowered == "-.inf":
        return float("-inf")
    if lowered == ".nan":
        return float("nan")
    return float(value)
