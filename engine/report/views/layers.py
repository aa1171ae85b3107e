"""The view of a per-layer localization (one case's layers, candidate against reference,
and the first layer that drifts) as the HTML report's case section and the `localize`
page show it, and the view of that page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from markupsafe import Markup

from specengine import __version__
from specengine.compare.layers import Localization
from specengine.report.layers import layer_chart
from specengine.report.text import fmt


@dataclass(frozen=True)
class LayerLine:
    """One row of the per-layer table (values unformatted; `None` where a mode does not
    measure them)."""

    name: Any
    css: str                  # row class: flag, first-flagged
    badge: str                # "first flagged" | "flagged" | ""
    rel_err: Any
    growth: Any
    cosine: Any
    norm_ratio: Any
    max_abs: Any
    max_rel: Any
    frac_rel_lt_1e3: Any
    frac_rel_lt_5e3: Any


@dataclass(frozen=True)
class LocalizationView:
    """One case's localization: why none was made (`error`), or the first flagged layer,
    both sides, the rule, the chart and the per-layer rows."""

    anchor: str
    case_id: Any
    error: str
    flagged: Any              # the first flagged layer's name; falsy when none is
    candidate: Any
    reference: Any
    mode_text: str            # what was compared: full hidden states or a layer sketch
    positions: Any
    rule: Any
    notes: tuple[Any, ...]
    full: bool                # element-wise columns exist (both sides' hidden states)
    chart: Markup
    layers: tuple[LayerLine, ...]


def _layer_line(m: dict[str, Any], first: Any) -> LayerLine:
    is_first = m.get("index") == first
    css = ("flag" if m.get("flagged") else "") + (" first-flagged" if is_first else "")
    badge = "first flagged" if is_first else "flagged" if m.get("flagged") else ""
    return LayerLine(m.get("name"), css, badge, m.get("rel_err"), m.get("growth"),
                     m.get("cosine"), m.get("norm_ratio"), m.get("max_abs"), m.get("max_rel"),
                     m.get("frac_rel_lt_1e3"), m.get("frac_rel_lt_5e3"))


def localization_view(loc: dict[str, Any], anchor: str) -> LocalizationView:
    """The view of a localization as `Localization.to_dict()` (or a results file) holds it."""
    error = loc.get("error")
    layers = () if error else tuple(_layer_line(m, loc.get("first_flagged"))
                                    for m in loc.get("layers") or [])
    return LocalizationView(
        anchor=anchor, case_id=loc.get("case_id"), error=str(error) if error else "",
        flagged=loc.get("first_flagged_name"), candidate=loc.get("candidate"),
        reference=loc.get("reference"),
        mode_text="full hidden states" if loc.get("mode") == "full"
        else "the golden's layer sketch",
        positions=loc.get("positions"), rule=loc.get("rule"), notes=tuple(loc.get("notes") or ()),
        full=loc.get("mode") == "full", chart=Markup("") if error else layer_chart(loc),
        layers=layers)


@dataclass(frozen=True)
class LocalizeRow:
    """One case in the summary table of the `localize` page."""

    case_id: Any
    anchor: str
    mode: Any
    state: str                # error | fail (a layer flagged) | pass (none flagged)
    flagged: Any
    rel_err: str              # the first flagged layer's rel_err, formatted ('—' if none)


@dataclass(frozen=True)
class LocalizePage:
    """The page `specengine localize --html` writes: a summary row and a section per case."""

    spec_name: str
    candidate: str
    reference: str
    rows: tuple[LocalizeRow, ...]
    sections: tuple[LocalizationView, ...]
    version: str


def _localize_row(loc: dict[str, Any], anchor: str) -> LocalizeRow:
    first = loc.get("first_flagged")
    state = "error" if loc.get("error") else "fail" if loc.get("first_flagged_name") else "pass"
    rel_err = "—" if first is None else fmt(loc["layers"][first]["rel_err"], 3)
    return LocalizeRow(loc.get("case_id"), anchor, loc.get("mode") or "—", state,
                       loc.get("first_flagged_name"), rel_err)


def localize_view(locs: Sequence[Localization], spec_name: str) -> LocalizePage:
    """The `localize` page of one spec's localizations (all of one candidate and reference)."""
    dicts = [loc.to_dict() for loc in locs]
    first = locs[0] if locs else None
    anchors = [f"loc-{i}" for i in range(len(dicts))]
    return LocalizePage(
        spec_name=spec_name, candidate=first.candidate if first else "",
        reference=first.reference if first else "",
        rows=tuple(_localize_row(d, a) for d, a in zip(dicts, anchors)),
        sections=tuple(localization_view(d, a) for d, a in zip(dicts, anchors)),
        version=__version__)
