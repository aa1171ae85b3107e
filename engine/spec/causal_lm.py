"""The keys of a causal-lm spec's cases: prompts (text, chat, file, long prompt by
recipe), length sweeps, generation settings and the token-distribution tolerances."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from specengine.compare.limits import LimitSource, is_relative
from specengine.compare.tolerances import CLASS_ORDER, DEFAULTS
from specengine.errors import SpecError
from specengine.spec.long_prompt import Recipe, read_text_file, sweep_lengths
from specengine.spec.model import Case, Determinism, check_unique_id
from specengine.spec.yamlio import Located


def build_cases(located: Located, data: dict, det: Determinism, base_dir: Path
                ) -> tuple[list[Case], None]:
    """(cases, settings) of a causal-lm spec; SpecError with file:line:col."""
    defaults = data.get("defaults", {})
    cases: list[Case] = []
    seen: dict[str, int] = {}
    base_new = defaults.get("max_new_tokens", 16)
    base_k = defaults.get("top_k", 10)
    base_kwargs = defaults.get("chat_template_kwargs", {})
    spec_limits = LimitSource.of(defaults.get("tolerance"))
    _check_tolerance(located, ("defaults",), spec_limits, base_k)
    for i, entry in enumerate(data["cases"]):
        cid = check_unique_id(located, "cases", i, seen)
        limits = LimitSource.of(defaults.get("tolerance"), entry.get("tolerance"))
        top_k = entry.get("top_k", base_k)
        _check_tolerance(located, ("cases", i), limits, top_k)
        expect = entry.get("expect", {}) or {}
        if "regex" in expect:
            try:
                re.compile(expect["regex"])
            except re.error as exc:
                raise located.error(("cases", i, "expect", "regex"),
                                    f"bad regular expression: {exc}") from None
        common = dict(
            messages=entry.get("messages"),
            expect=expect, tags=tuple(entry.get("tags", ())),
            max_new_tokens=entry.get("max_new_tokens", base_new), top_k=top_k,
            determinism=det.merged(entry.get("determinism")),
            chat_template_kwargs={**base_kwargs, **entry.get("chat_template_kwargs", {})},
            line=located.where(("cases", i))[0],
            limit_source=limits,
        )
        for sub_id, prompt, recipe, length in prompts_of(located, i, entry, base_dir):
            if sub_id != cid and sub_id in seen:
                raise located.error(("cases", i, "id"), f"sub-case id '{sub_id}' of a length "
                                    "sweep is also the id of another case")
            seen.setdefault(sub_id, i)
            cases.append(Case(id=sub_id, prompt=prompt, recipe=recipe, sweep_of=cid if
                              length is not None else None, **common))
    return cases, None


def prompts_of(located: Located, i: int, entry: dict, base_dir: Path) -> list[tuple]:
    """(id, prompt text, long-prompt recipe, sweep length) of each case a spec entry
    makes: one, or one per length of a `lengths` / `around` sweep."""
    cid = entry["id"]
    if "prompt_file" in entry:
        path = Path(entry["prompt_file"]).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            text = read_text_file(path, "prompt_file")
        except SpecError as exc:
            raise located.error(("cases", i, "prompt_file"), exc.message) from None
        return [(cid, text, None, None)]
    lengths = sweep_lengths(entry)
    if lengths and "long_prompt" not in entry:
        key = "lengths" if "lengths" in entry else "around"
        raise located.error(("cases", i, key), f"a length sweep ({key}) needs long_prompt: "
                            "{tokens, source, seed} to make prompts of those lengths")
    if "long_prompt" not in entry:
        return [(cid, entry.get("prompt"), None, None)]
    lp = entry["long_prompt"]
    source, sha = lp.get("source", "builtin"), ""
    resolved_source = source
    if source != "builtin":
        path = Path(source).expanduser()
        path = path if path.is_absolute() else base_dir / path
        try:
            sha = hashlib.sha256(read_text_file(path, "long_prompt source").encode()).hexdigest()
        except SpecError as exc:
            raise located.error(("cases", i, "long_prompt", "source"), exc.message) from None
        resolved_source = str(path)
    if not lengths:
        if "tokens" not in lp:
            raise located.error(("cases", i, "long_prompt"), "long_prompt needs tokens: N "
                                "(or the case needs lengths / around)")
        lengths, sweep = [int(lp["tokens"])], False
    else:
        sweep = True
    out = []
    for n in lengths:
        recipe = Recipe(tokens=n, source=resolved_source, seed=int(lp.get("seed", 0)),
                        source_sha256=sha, written=source)
        out.append((f"{cid}-{n}" if sweep else cid, None, recipe, n if sweep else None))
    return out



def _check_tolerance(located: Located, path: tuple, limits: LimitSource, top_k: int) -> None:
    """Per numeric class, what the schema cannot say: kl_mean_max not above kl_max (both
    absolute), and the near-tie rank within the ids the golden keeps."""
    for klass in CLASS_ORDER:
        written = limits.written(klass)
        if not written:
            continue
        values = {k: v for k, (_, v) in written.items() if not is_relative(v)}
        tol = DEFAULTS[klass].merged(values)
        where = path + ("tolerance", klass)
        if not any(is_relative(written.get(k, (0, 0))[1]) for k in ("kl_mean_max", "kl_max")) \
                and tol.kl_mean_max > tol.kl_max:
            raise located.error(where + ("kl_mean_max",) if "kl_mean_max" in written else where,
                                f"{klass}: kl_mean_max {tol.kl_mean_max} is larger than kl_max "
                                f"{tol.kl_max}")
        if tol.within_top_k > top_k:
            raise located.error(where + ("divergence", "within_top_k") if "within_top_k" in
                                written else where,
                                f"{klass}: divergence.within_top_k {tol.within_top_k} exceeds "
                                f"top_k {top_k} (the golden only keeps top_k ids per step)")
