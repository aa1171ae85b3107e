"""`specengine localize` and `specengine calibrate`: the commands that analyse one spec's
candidate against its reference, for the kinds that have them (the kind table's
`localize` / `calibrate` columns); a kind without one is refused before any model loads."""

from __future__ import annotations

from pathlib import Path

from specengine.cli.output import golden_dir_arg
from specengine.errors import UsageError
from specengine.files import atomic_write_text
from specengine.golden.store import default_golden_dir


def add_parsers(sub) -> None:
    """`localize` and `calibrate` (kinds.causal_lm.localize, kinds.causal_lm.calibrate)."""
    p = sub.add_parser("localize", help="find the first layer where a candidate drifts: "
                       "per-layer hidden-state errors against a live reference or the golden's "
                       "layer sketch (exit 1 when a layer is flagged)")
    p.add_argument("spec", metavar="SPEC", help="spec file")
    p.add_argument("--backend", required=True, help="candidate backend")
    p.add_argument("--against", metavar="BACKEND", help="reference backend run live (full "
                   "hidden states); default: the golden's layer sketch alone")
    p.add_argument("--case", action="append", metavar="ID", help="case to localize "
                   "(repeatable; default: every case)")
    p.add_argument("--path", choices=("prefill", "decode"), default="prefill",
                   help="prefill (default): per-layer states of the one-pass forward against "
                   "the reference; decode: at the first bad decode step, the candidate's "
                   "incremental-decode states against its own one-pass states at that position")
    p.add_argument("--growth", type=float, default=4.0, metavar="K", help="flag a layer whose "
                   "rel_err is at least K x the previous layer's (default 4)")
    p.add_argument("--floor", type=float, default=None, metavar="F", help="and at least F "
                   "(default: 25 x the unit roundoff of the coarser dtype, at least 0.001)")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the localizations as JSON")
    p.add_argument("--html", type=Path, metavar="PATH", help="write an HTML page with the "
                   "per-layer charts")
    golden_dir_arg(p)

    p = sub.add_parser("calibrate", help="measure the noise between two good backends and "
                       "propose tolerances (--write puts them into the spec)")
    p.add_argument("spec", metavar="SPEC", help="spec file")
    p.add_argument("--backend", required=True, help="one good backend (the candidate side)")
    p.add_argument("--against", metavar="BACKEND", help="the other good backend, run live; "
                   "default: the spec's golden")
    p.add_argument("--case", action="append", metavar="ID", help="calibrate on these cases "
                   "only (repeatable; default: every case)")
    p.add_argument("--headroom", type=float, default=2.0, metavar="X", help="proposed upper "
                   "limits are the max observed x X (default 2)")
    p.add_argument("--write", action="store_true", help="write the proposal into the spec's "
                   "defaults.tolerance block of the numeric class measured (the coarser "
                   "side's: half for a bf16 backend), never another class's; comments and "
                   "layout kept, the spec validated")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the measurement and the "
                   "proposal as JSON")
    golden_dir_arg(p)


def cmd_localize(args) -> int:
    """Prints the per-layer table of each case; --json / --html write them. Exit 1 when a
    layer is flagged in some case, 0 when none is."""
    from specengine.report.localize import render_html, render_text, to_json

    spec, localize = _kind_command(args, "localize", "localize works on causal-lm specs (this "
                                                     "one is kind: {kind})")
    locs = localize(spec, args.case, args.backend, args.against,
                    args.golden_dir or default_golden_dir(spec.path), args.growth, args.floor,
                    path=args.path)
    for loc in locs:
        print(render_text(loc))
        print()
    if args.json:
        atomic_write_text(args.json, to_json(locs, spec.name) + "\n")
        print(f"json: {args.json}")
    if args.html:
        atomic_write_text(args.html, render_html(locs, spec.name))
        print(f"html: {args.html}")
    return 1 if any(loc.first_flagged is not None for loc in locs) else 0


def cmd_calibrate(args) -> int:
    """Measure the good pair and print the proposal; --json writes it, --write puts it into
    the spec (the block of the class measured only; comments kept, validated). Exit 0."""
    import json

    from specengine.compare.tolerances import CLASS_ORDER
    from specengine.report.calibration import render
    from specengine.spec.migrate import write_tolerances

    spec, calibrate = _kind_command(args, "calibrate", "calibrate proposes causal-lm "
                                                       "tolerances (this spec is kind: {kind})")
    cal = calibrate(spec, args.backend, args.against,
                    args.golden_dir or default_golden_dir(spec.path), args.case, args.headroom)
    print(render(cal))
    if args.json:
        atomic_write_text(args.json, json.dumps(cal.to_dict(), indent=1, sort_keys=True,
                                                ensure_ascii=False) + "\n")
        print(f"json: {args.json}")
    if args.write:
        write_tolerances(Path(spec.path), cal.proposed_tolerance(), cal.klass)
        others = [c for c in CLASS_ORDER if c != cal.klass]
        print(f"wrote the proposed {cal.klass} limits into {spec.path} "
              f"(defaults.tolerance.{cal.klass}; the {' and '.join(others)} blocks are "
              "untouched: this measurement says nothing about them)")
    return 0


def _kind_command(args, column: str, refusal: str):
    """The spec and the kind's `column` command (a kind without one is refused before any
    model loads)."""
    from specengine.run import kind_of
    from specengine.spec import load_spec

    spec = load_spec(args.spec)
    command = getattr(kind_of(spec), column)
    if command is None:
        raise UsageError(f"{spec.path}: {refusal.format(kind=spec.kind)}")
    return spec, command
