"""The keys of an embedding spec's cases: texts, image files or seeded synthetic images,
and the feature tolerances."""

from __future__ import annotations

from pathlib import Path

from specengine.compare.limits import LimitSource
from specengine.spec.model import Determinism, EmbeddingCase, EmbeddingSettings, check_unique_id
from specengine.spec.paths import expand_path
from specengine.spec.yamlio import Located


def build_cases(located: Located, data: dict, determinism: Determinism, base_dir: Path
                ) -> tuple[list[EmbeddingCase], EmbeddingSettings]:
    """(cases, settings) of an embedding spec; SpecError with file:line:col."""
    defaults = data.get("defaults") or {}
    settings = EmbeddingSettings.from_dict(data.get("embedding"))
    cases, seen = [], {}
    for i, entry in enumerate(data["cases"]):
        cid = check_unique_id(located, "cases", i, seen)
        images = written = None
        if "images" in entry:
            written = list(entry["images"])
            images = [expand_path(located, ("cases", i, "images", j), w, base_dir)[0]
                      for j, w in enumerate(written)]
        synthetic = None
        if "synthetic_images" in entry:
            synthetic = {"count": entry["synthetic_images"]["count"],
                         "seed": entry["synthetic_images"].get("seed", 0)}
        cases.append(EmbeddingCase(
            id=cid, texts=list(entry["texts"]) if "texts" in entry else None, images=images,
            images_written=written, synthetic=synthetic, tags=tuple(entry.get("tags", ())),
            limit_source=LimitSource.of(defaults.get("tolerance"), entry.get("tolerance")),
            determinism=determinism.merged(entry.get("determinism")),
            line=located.where(("cases", i))[0]))
    return cases, settings


# -- pooling (pure) --------------------------------------------------------------------
