"""`specengine migrate SPEC... [--class CLASS]` (also `validate --fix`): move flat
tolerance blocks under the numeric class they were measured for.

A flat block has no class of its own, so the class is asked for: `--class`, or on a
terminal a question per file. Off a terminal without `--class` it is exit 2 (nothing
written). The new text is validated before it is written, atomically."""

from __future__ import annotations

import sys
from pathlib import Path

from specengine.errors import UsageError, printable

CLASSES = ("float32", "half", "quantized")


def add_parser(sub) -> None:
    p = sub.add_parser("migrate", help="move flat tolerance blocks under the numeric class "
                       "they were measured for (comments and layout kept)")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files or folders")
    class_arg(p)
    p.add_argument("--dry-run", action="store_true", help="print what would move, write "
                   "nothing")


def class_arg(p) -> None:
    p.add_argument("--class", dest="klass", choices=CLASSES, help="the numeric class the "
                   "flat limits were measured for: half for limits sized on bf16/fp16 noise "
                   "(what calibrate against a bf16 backend proposes), float32 for limits sized "
                   "on float32 noise, quantized for a quantized deployment (asked on a "
                   "terminal when not given)")


def _ask(path: Path, where: list[str]) -> str:
    if not sys.stdin.isatty():
        raise UsageError(f"{path}: {len(where)} flat tolerance block(s) ({', '.join(where)}) "
                         "and no class to move them to: pass --class float32|half|quantized "
                         "(the class the limits were measured for)")
    while True:
        answer = input(f"{printable(path)}: {', '.join(where)} — which numeric class were "
                       f"these limits measured for? [{'/'.join(CLASSES)}] ").strip()
        if answer in CLASSES:
            return answer


def migrate_files(targets: list[str], klass: str | None, dry_run: bool = False) -> int:
    """Migrate each spec file; prints one line per file. Returns how many changed."""
    from specengine.cli.checkall import spec_paths
    from specengine.spec.migrate import flat_blocks, migrate_text, write_spec_text

    paths = spec_paths(targets)
    if not paths:
        raise UsageError(f"no spec files in {' '.join(targets)}")
    changed = 0
    for path in map(Path, paths):
        text = path.read_text("utf-8")
        blocks = flat_blocks(text, str(path))
        if not blocks:
            print(f"unchanged {printable(path)} (every tolerance block is keyed by class)")
            continue
        chosen = klass or _ask(path, [b.where for b in blocks])
        new, moved = migrate_text(text, chosen, str(path))
        verb = "would move" if dry_run else "moved"
        if not dry_run:
            write_spec_text(path, new)
        changed += 1
        print(f"{verb} {', '.join(moved)} under {chosen}: {printable(path)}")
    return changed


def cli_main(args) -> int:
    migrate_files(args.specs, args.klass, args.dry_run)
    return 0
