"""The files specengine reads and writes: the cache folder (conversions, synthetic weights,
ONNX exports, fingerprints), the one atomic writer shared by goldens, reports and the
cache, and size-limited reads of the files a user (or an attacker) names.

Reading files that a user (or an attacker) named: specs, goldens, results.

Only regular files are read. The size is checked on the open file before reading, and
the read itself stops one byte past the limit, so a FIFO, a device (`/dev/zero`,
`/dev/urandom`), a symbolic-link loop or a file that grows while it is read is a clear
refusal instead of a hang, a MemoryError or a read of gigabytes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from specengine.errors import OutputError
from specengine.errors import GoldenError


def cache_dir() -> Path:
    """$SPECENGINE_CACHE, else $XDG_CACHE_HOME/specengine, else ~/.cache/specengine."""
    env = os.environ.get("SPECENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "specengine"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` as UTF-8 (a lone surrogate as a backslash escape) to a temp file in the
    target's folder, then rename it over the target: readers see the old file or the new
    one, never half of one. The file gets the usual permissions (0666 less the umask).

    The temp name is chosen before the file is created, so an interrupt at any moment
    (Ctrl-C between creating and renaming) still removes it; only SIGKILL can leave a
    hidden `.NAME.*.tmp` beside the target."""
    path = Path(path)
    data = text.encode("utf-8", errors="backslashreplace")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.writing(path, exc) from None
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError.writing(path, exc) from None
        raise


@contextlib.contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success rename it into place atomically.

    If another process finished the same folder first, theirs is kept (same content key).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError):
        return None


# -- reading what a user named ----------------------------------------------------------

class FileRefused(Exception):
    """A file that cannot be read as asked; the message is one line without the name."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        return "no such file"
    return exc.strerror or str(exc)


def read_limited(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of regular file `path`, at most `limit` of them; FileRefused otherwise
    (FileNotFoundError is raised as is, for callers that word a missing file)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise FileRefused(f"cannot read {what}: "
                          f"{_describe(exc) if isinstance(exc, OSError) else exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused(f"cannot read {what}: {_kind(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise FileRefused(f"{what} is {info.st_size} bytes; the limit is {limit}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | \
        getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise FileRefused(f"cannot read {what}: {_describe(exc)}") from None
    try:
        info = os.fstat(fd)        # the file opened, which may not be the one stat saw
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused(f"cannot read {what}: {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileRefused(f"{what} is {info.st_size} bytes; the limit is {limit}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise FileRefused(f"{what} is larger than the limit of {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(f"cannot read {what}: {_describe(exc)}") from None
    finally:
        os.close(fd)


MAX_GOLDEN_BYTES = 64 * 1024 * 1024   # a 1,000-case causal-LM golden is about 6.4 MB


class DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def read_golden_json(path, what: str = "golden", limit: int = MAX_GOLDEN_BYTES):
    """A golden file's JSON, read strictly: a regular file within `limit` bytes, UTF-8,
    and no object with a key twice (JSON parsers keep the last one, a reviewer reads the
    first). GoldenError (exit 2) naming the file and the problem."""
    import json

    shown = f"{what} {path}"
    try:
        raw = read_limited(path, limit, what)
    except FileNotFoundError:
        raise GoldenError(f"no {shown}") from None
    except FileRefused as exc:
        raise GoldenError(f"{path}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise GoldenError(f"{shown} is corrupted (not UTF-8)") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKey as exc:
        raise GoldenError(f"{shown} is corrupted: an object holds the key {str(exc)!r} twice "
                          "(strict JSON: every key once)") from None
    except RecursionError:
        raise GoldenError(f"{shown} is corrupted (nested too deeply)") from None
    except ValueError as exc:
        detail = f"{exc.msg} at line {exc.lineno}" if hasattr(exc, "msg") else str(exc)[:100]
        raise GoldenError(f"{shown} is corrupted or truncated (not valid JSON: {detail})") \
            from None


def offline() -> None:
    """Make sure no hub is ever contacted from this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
