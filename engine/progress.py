"""Progress on stderr that works everywhere.

On a terminal a bar (tqdm) names the case being run; anywhere else (CI logs, output
redirected to a file) one line per case is printed as it finishes, like pytest:
`check smollm2-135m on cpu-bf16  capital-fr  pass  1.23 s`. Long one-off steps (model
conversion, export, load) print a line before and after.

The mode is set once by the command line (`-q` turns progress off, `-v` adds detail):
SPECENGINE_PROGRESS=0 turns it off, =1 forces it on; `bar` / `lines` force a style.
Colours follow `--color`, NO_COLOR and FORCE_COLOR (see `use_color`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_STATE: dict[str, Any] = {"quiet": False, "verbose": False, "color": None}
_STATUS_COLORS = {"pass": "32", "fail": "31", "error": "35", "not-run": "33",
                  "recorded": "32"}


def configure(quiet: bool = False, verbose: bool = False, color: str = "auto") -> None:
    """Set by the command line: `-q`, `-v` and `--color auto|always|never`."""
    _STATE.update(quiet=quiet, verbose=verbose, color=color)


def verbose() -> bool:
    return bool(_STATE["verbose"])


def use_color(stream=None, choice: str | None = None) -> bool:
    """Whether to colour what goes to `stream`: `--color always|never` wins; with `auto`
    a non-empty NO_COLOR turns colour off, a FORCE_COLOR other than 0 turns it on, and
    otherwise colour is used on a terminal only."""
    choice = choice or _STATE["color"] or "auto"
    if choice == "always":
        return True
    if choice == "never":
        return False
    if os.environ.get("NO_COLOR"):
        return False
    force = os.environ.get("FORCE_COLOR")
    if force is not None and force not in ("", "0", "false", "no"):
        return True
    stream = stream or sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def style() -> str:
    """"bar", "lines" or "off"."""
    if _STATE["quiet"]:
        return "off"
    forced = os.environ.get("SPECENGINE_PROGRESS")
    if forced is not None:
        if forced in ("0", "", "false", "no", "off"):
            return "off"
        if forced in ("bar", "lines"):
            return forced
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "bar" if tty else "lines"


def enabled() -> bool:
    return style() != "off"


def _emit(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (BrokenPipeError, ValueError):    # a closed stderr must not stop a run
        pass


def _status_text(status: str) -> str:
    code = _STATUS_COLORS.get(status)
    if code and use_color(sys.stderr):
        return f"\033[{code}m{status}\033[0m"
    return status


def cases(items: Iterable[T], action: str, spec: str, backend: str,
          results: list | None = None, name: Callable[[T], str] | None = None,
          total: int | None = None) -> Iterator[T]:
    """Iterate the cases of one spec, reporting each: a bar naming the running case on a
    terminal, else one line per finished case with its status (the `status` of the
    last entry appended to `results`, or `done`) and seconds."""
    mode = style()
    label = f"{action} {spec} on {backend}"
    name = name or (lambda item: str(getattr(item, "id", item)))
    if mode == "off":
        yield from items
        return
    items = list(items)
    total = len(items) if total is None else total
    bar = None
    if mode == "bar":
        from tqdm import tqdm

        bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True,
                   disable=False)
    try:
        for index, item in enumerate(items):
            if bar is not None:
                bar.set_postfix_str(name(item), refresh=True)
            before = len(results) if results is not None else 0
            start = time.perf_counter()
            yield item
            seconds = time.perf_counter() - start
            status = "done"
            if results is not None and len(results) > before:
                status = str(getattr(results[-1], "status", "done"))
            elif action.startswith("record"):
                status = "recorded"
            if bar is not None:
                bar.update(1)
                if status not in ("pass", "done", "recorded"):
                    bar.write(f"{label}  {name(item)}  {_status_text(status)}  {seconds:.2f} s",
                              file=sys.stderr)
            else:
                _emit(f"{label}  [{index + 1}/{total}]  {name(item)}  {_status_text(status)}"
                      f"  {seconds:.2f} s")
    finally:
        if bar is not None:
            bar.close()


def bar(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """A plain bar over `items` on a terminal (nothing elsewhere): for loops that are
    not cases of a spec."""
    if style() != "bar":
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True, disable=False)


def note(text: str) -> None:
    """A progress line (shown unless progress is off)."""
    if enabled():
        _emit(text)


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """A one-off long step (conversion, export, model load): a line before and after."""
    show = enabled()
    start = time.perf_counter()
    if show:
        _emit(f"… {desc}")
    yield
    if show:
        _emit(f"✓ {desc} ({time.perf_counter() - start:.1f} s)")


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def quiet_libraries() -> None:
    """Off a terminal (a CI log, output redirected to a file), what libraries draw for a
    person at a terminal stays out of the log: every tqdm bar that specengine does not
    draw itself (the GGUF conversion's "Converting and de-quantizing", downloads) is off
    by default (TQDM_DISABLE, read when tqdm is first imported, so this runs before any
    library loads; it is inherited by child processes too), and so are the hub's bars.
    A user's own setting of these variables wins."""
    if _stderr_is_terminal():
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _PlainText:
    """A logging filter that removes ANSI colour and style codes from a record's text
    (transformers' load report is bold and coloured even when it goes to a file)."""

    def filter(self, record) -> bool:
        if isinstance(record.msg, str) and "\x1b" in record.msg:
            record.msg = _ANSI.sub("", record.msg)
        return True


def silence_library_bars() -> None:
    """Turn off the progress bars libraries draw themselves (transformers' "Loading
    weights", "Writing model shards"): specengine reports progress on its own. Off a
    terminal, the library's log lines also lose their colour codes."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()
    if _stderr_is_terminal():
        return
    root = hf_logging.get_logger("transformers")
    for handler in root.handlers:
        if not any(isinstance(f, _PlainText) for f in handler.filters):
            handler.addFilter(_PlainText())
