"""Environment interpolation: only ${VAR} and ${VAR:-default}. Nothing else is expanded
(no $VAR, no command substitution, no nesting)."""

from __future__ import annotations

import os
import re
from typing import Mapping

_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MissingVariable(Exception):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def variables(text: str) -> list[str]:
    """Names of the variables a string reads."""
    return [m.group(1) for m in _PATTERN.finditer(text)]


def expand(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ${VAR} / ${VAR:-default}; an unset VAR without default raises MissingVariable.

    As in the shell, the default is used when VAR is unset or empty.
    """
    env = os.environ if environ is None else environ

    def repl(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise MissingVariable(name)

    return _PATTERN.sub(repl, text)
