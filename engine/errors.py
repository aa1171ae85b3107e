"""The error hierarchy. Mismatches are results (exit 1), not exceptions; these are for
problems that stop a run, each carrying the exit code the CLI returns."""

from __future__ import annotations

import re

# what a terminal or a log viewer would act on: C0/C1 controls (ESC, CR, BEL...), DEL
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: object) -> str:
    """`text` (a file name, a command-line argument, spec text) safe to print on a
    terminal or in a CI log: control characters (ESC, BEL, CR, LF, line separators) shown
    as escapes, so none can move the cursor, retitle the window or start a new line that a
    CI runner would read as a workflow command."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(text))


class SpecEngineError(Exception):
    """Base class. `exit_code` is what the command line returns for it."""

    exit_code = 2
    # the run so far, when a run stops part-way (a backend out of memory): the CLI still
    # writes the reports that were asked for from it
    partial_run: object | None = None

    def one_line(self) -> str:
        """The message on one line, with control characters from hostile input (a spec
        key, a prompt) shown as escapes instead of reaching the terminal."""
        return printable(" ".join(str(self).split("\n")))


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


class ReferenceInconsistent(SpecEngineError):
    """A reference whose own incremental-decode and one-pass paths disagree: it is not
    recorded as a golden (exit 1: a measured failure, not a usage problem)."""

    exit_code = 1


class ReferenceFailsExpectations(SpecEngineError):
    """A reference whose own output fails its spec's expectations: it is not recorded as
    a golden (exit 1: the spec and the reference disagree; fix one of them)."""

    exit_code = 1


class BackendUnavailable(SpecEngineError):
    """A backend whose runtime or device is not present (exit 3)."""

    exit_code = 3


class BackendCrashed(SpecEngineError):
    """A backend that failed while running (exit 3)."""

    exit_code = 3


class BackendStopped(BackendCrashed):
    """A backend that stopped for good part-way through a run — a server that answered
    requests, then no longer did (killed, crashed, connection refused). Nothing after it
    can run: the run stops there, keeping the cases already judged (exit 3). `at` adds
    where in the run it stopped ("for case 'capital-fr'", "while measuring perf")."""

    def at(self, where: str) -> "BackendStopped":
        said = str(self.args[0]) if self.args else ""
        if not said.endswith(where):
            self.args = (f"{said} {where}",)
        return self


class OutputError(SpecEngineError):
    """A file specengine was asked to write (a golden, a report, a cache entry) that
    could not be written: a full disk, a read-only folder, a path that is a folder
    (exit 2). What was there before is left as it was."""

    @classmethod
    def writing(cls, path, exc: OSError) -> "OutputError":
        reason = exc.strerror or str(exc) or type(exc).__name__
        code = f" (errno {exc.errno})" if exc.errno else ""
        return cls(f"cannot write {path}: {reason}{code}; nothing was replaced")


def brief(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace collapsed), at most `limit` characters:
    how every runtime error is quoted in a one-line message."""
    return " ".join(str(exc).split())[:limit]
