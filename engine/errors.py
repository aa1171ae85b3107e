"""The error hierarchy. Mismatches are results (exit 1), not exceptions; these are for
problems that stop a run, each carrying the exit code the CLI returns."""

from __future__ import annotations

import re

# what a terminal or a log viewer would act on: C0/C1 controls (ESC, CR, BEL...), DEL
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class SpecEngineError(Exception):
    """Base class. `exit_code` is what the command line returns for it."""

    exit_code = 2

    def one_line(self) -> str:
        """The message on one line, with control characters from hostile input (a spec
        key, a prompt) shown as escapes instead of reaching the terminal."""
        text = " ".join(str(self).split("\n"))
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


class UsageError(SpecEngineError):
    """Bad command-line usage."""


class SpecError(SpecEngineError):
    """A spec that cannot be used. Carries `file:line:col` when it is known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 col: int | None = None):
        self.message, self.file, self.line, self.col = message, file, line, col
        super().__init__(self._format())

    def _format(self) -> str:
        if self.file is None:
            return self.message
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.col or 1}: {self.message}"


class ModelSourceError(SpecEngineError):
    """A model source that is missing or unreadable (exit 2)."""


class GoldenError(SpecEngineError):
    """A golden that is missing, stale, corrupted or otherwise unusable (exit 2)."""


class BackendUnavailable(SpecEngineError):
    """A backend whose runtime or device is not present (exit 3)."""

    exit_code = 3


class BackendCrashed(SpecEngineError):
    """A backend that failed while running (exit 3)."""

    exit_code = 3
