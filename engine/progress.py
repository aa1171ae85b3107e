"""Progress bars on stderr (tqdm), quiet when stderr is not a terminal.

SPECENGINE_PROGRESS=1 forces them on, =0 off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    forced = os.environ.get("SPECENGINE_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return sys.stderr.isatty()


def bar(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from items
        return
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False,
                    dynamic_ncols=True)


@contextlib.contextmanager
def step(desc: str) -> Iterator[None]:
    """A one-off long step (conversion, export, model load): a line before and after.

    Always printed to stderr when progress is enabled; silent otherwise.
    """
    show = enabled()
    start = time.perf_counter()
    if show:
        print(f"… {desc}", file=sys.stderr, flush=True)
    yield
    if show:
        print(f"✓ {desc} ({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
