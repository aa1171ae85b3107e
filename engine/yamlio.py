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

from .errors import SpecError

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
    root = _compose_fast(text)
    if root is not None:
        located = Located(None, file)
        try:
            located.data = _Builder(located).build(root, ())
            return located
        except SpecError:
            pass  # the reference parser below words the error
    return _load_ruamel(text, file)


_SLOW_ONLY = re.compile(r"^%|^\.\.\.|(?:^|[\s\[\]{},])!|[\t\r\x85\u2028\u2029\ufeff]", re.M)


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
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        if mark is None:
            raise SpecError(f"YAML syntax error: {problem}", file) from None
        raise SpecError(f"YAML syntax error: {problem}", file, mark.line + 1,
                        mark.column + 1) from None
    except YAMLError as exc:
        raise SpecError(f"YAML error: {' '.join(str(exc).split())}", file) from None
    except (ValueError, RecursionError) as exc:
        raise SpecError(f"YAML error: {exc}", file) from None
    located = Located(None, file)
    if root is None:
        raise SpecError("the file is empty", file, 1, 1)
    builder = _Builder(located)
    located.data = builder.build(root, ())
    return located


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
        if len(path) > 64:
            raise self._fail(node, "document nested too deeply (more than 64 levels)")
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
                    raise self._fail(key_node, f"duplicate key '{key}'")
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
