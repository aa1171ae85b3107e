"""The pages and text of `specengine localize`: the per-layer table of one case on the
terminal, a self-contained HTML page with the per-layer charts, and the JSON."""

from __future__ import annotations

import json
from typing import Sequence

from specengine.compare.layers import Localization
from specengine.report.render import render_localize


def render_text(loc: Localization) -> str:
    """Terminal table of one localization, the first flagged layer marked."""
    full = loc.mode == "full"
    head = (f"  {'layer':<22}{'rel_err':>10}{'growth':>8}{'cosine':>11}{'norm':>8}"
            + (f"{'max|Δ|':>10}{'max rel':>10}{'<1e-3':>7}{'<5e-3':>7}" if full else ""))
    lines = [f"localize case {loc.case_id}: {loc.candidate} vs {loc.reference} "
             f"({loc.mode}, {loc.positions} positions)", head]
    for m in loc.layers:
        mark = "▶" if m.index == loc.first_flagged else ("!" if m.flagged else " ")
        growth = "—" if m.growth is None else f"{m.growth:.3g}"
        row = (f"{mark} {m.name:<22}{m.rel_err:>10.3g}{growth:>8}{m.cosine:>11.6f}"
               f"{m.norm_ratio:>8.4f}")
        if full:
            row += (f"{m.max_abs:>10.3g}{m.max_rel:>10.3g}{m.frac_rel_lt_1e3:>7.3f}"
                    f"{m.frac_rel_lt_5e3:>7.3f}")
        lines.append(row)
    lines.append(loc.summary)
    lines += [f"note: {n}" for n in loc.notes]
    return "\n".join(lines)


def render_html(locs: Sequence[Localization], spec_name: str) -> str:
    """A self-contained HTML page (templates/localize.html.j2, one view model) for the
    command."""
    return render_localize(locs, spec_name)


def to_json(locs: Sequence[Localization], spec_name: str) -> str:
    return json.dumps({"format": 1, "spec": spec_name, "localizations": [l.to_dict() for l in locs]},
                      indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
