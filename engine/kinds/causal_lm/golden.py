"""The causal-lm golden codec: the verified JSON file (schemas/golden.schema.json) turned
into typed, frozen records once, and typed records turned back into the file's JSON.

Per case the golden holds the prompt ids (or, for a long prompt made by recipe, their
sha256 and length), the greedy output ids and text, per step the top-k ids and
log-probabilities with the log of the tail mass, a per-case hash of what produced it
(against staleness), and optionally the layer sketch `localize` reads, the reference's
top-k at sampled prompt positions, the reference's own noise per numeric class and the
expectations the reference itself fails. Nothing outside this module reads the file's
keys; staleness is a pure verdict (`staleness`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from specengine.errors import GoldenError
from specengine.golden.store import GoldenFormat, ModelGolden, model_header, read_verified, seal
from specengine.spec.long_prompt import ids_sha256

GOLDEN_FORMAT = 1
ROUND = 6   # decimals kept for log-probabilities
FORMAT = GoldenFormat(kind="causal-lm", version=GOLDEN_FORMAT, what="golden", schema="golden",
                      default_kind="causal-lm", slim=True)


@dataclass(frozen=True)
class Steps:
    """Per generated step (or sampled prompt position): top-k ids (n, k), their
    log-probabilities (n, k) and the log of the mass outside them (n,), -inf when none."""

    ids: np.ndarray
    logprobs: np.ndarray
    tail: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @classmethod
    def rounded(cls, ids: Sequence, logprobs: Sequence, tail: Sequence) -> "Steps":
        """A run's steps as a golden keeps them (log-probs to ROUND decimals, at most 0)."""
        return cls.decode([_entry(i, lp, t) for i, lp, t in zip(ids, logprobs, tail)])

    @classmethod
    def decode(cls, entries: Sequence[Mapping]) -> "Steps":
        if not entries:
            return cls(np.zeros((0, 1), np.int64), np.zeros((0, 1), np.float64),
                       np.zeros((0,), np.float64))
        k = min(len(s["ids"]) for s in entries)
        return cls(np.array([s["ids"][:k] for s in entries], dtype=np.int64),
                   np.array([s["logprobs"][:k] for s in entries], dtype=np.float64),
                   np.array([-np.inf if s["tail"] is None else s["tail"] for s in entries],
                            dtype=np.float64))

    def encode(self) -> list[dict]:
        return [_entry(self.ids[i], self.logprobs[i], self.tail[i]) for i in range(len(self))]

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.ids, self.logprobs, self.tail


def step_record(ids: Sequence, logprobs: Sequence, tail: float) -> dict:
    """One step as the golden file keeps it."""
    return _entry(ids, logprobs, tail)


def _entry(ids: Sequence, logprobs: Sequence, tail: float) -> dict:
    t = float(tail)
    return {"ids": [int(i) for i in ids],
            "logprobs": [min(0.0, round(float(x), ROUND)) for x in logprobs],
            "tail": None if not math.isfinite(t) else min(0.0, round(t, ROUND))}


@dataclass(frozen=True)
class PathNoise:
    """The reference's own error of one class on one path (one-pass or decode)."""

    kl_mean: float
    kl_max: float
    max_abs_dlogprob: float

    @classmethod
    def decode(cls, m: Mapping[str, float]) -> "PathNoise":
        return cls(float(m["kl_mean"]), float(m["kl_max"]), float(m["max_abs_dlogprob"]))

    def as_dict(self) -> dict[str, float]:
        return {"kl_mean": self.kl_mean, "kl_max": self.kl_max,
                "max_abs_dlogprob": self.max_abs_dlogprob}


@dataclass(frozen=True)
class CaseNoise:
    """The reference's own error of one numeric class on a case, per path."""

    prefill: PathNoise
    decode: PathNoise

    @classmethod
    def decode_from(cls, m: Mapping[str, Mapping[str, float]]) -> "CaseNoise":
        return cls(PathNoise.decode(m["prefill"]), PathNoise.decode(m["decode"]))

    def path(self, name: str) -> PathNoise:
        return self.prefill if name == "prefill" else self.decode

    def worse(self) -> PathNoise:
        """Per metric the larger of the two paths (what a consistency check is judged by)."""
        a, b = self.prefill, self.decode
        return PathNoise(max(a.kl_mean, b.kl_mean), max(a.kl_max, b.kl_max),
                         max(a.max_abs_dlogprob, b.max_abs_dlogprob))

    def encode(self) -> dict:
        return {"prefill": self.prefill.as_dict(), "decode": self.decode.as_dict()}


@dataclass(frozen=True)
class PromptSteps:
    """A long prompt's sampled positions and the reference's top-k at each."""

    positions: tuple[int, ...]
    steps: Steps


@dataclass(frozen=True)
class LmCaseRecord:
    """One case of a causal-lm golden (or of a live reference run)."""

    id: str
    hash: str
    prompt: str
    output_ids: tuple[int, ...]
    output_text: str
    settings: Mapping[str, Any]
    steps: Steps
    prompt_ids: tuple[int, ...] | None = None   # None: a long prompt stored by its hash
    prompt_ids_sha256: str | None = None
    prompt_length: int = 0
    sketch: Mapping[str, Any] | None = None     # compare.sketch's stored form
    prompt_steps: PromptSteps | None = None
    noise: Mapping[str, CaseNoise] = field(default_factory=dict)    # by numeric class
    reference_fails: tuple[str, ...] = ()

    @property
    def recipe(self) -> bool:
        """Its prompt was made by recipe (stored by length and hash, not ids)."""
        return "prompt_recipe" in self.settings

    def noise_of(self, klass: str) -> CaseNoise | None:
        return self.noise.get(klass)

    def with_prompt_ids(self, ids: Sequence[int]) -> "LmCaseRecord":
        return replace(self, prompt_ids=tuple(int(i) for i in ids),
                       prompt_length=len(ids))

    def with_noise(self, klass: str, values: Mapping[str, Mapping[str, float]]
                   ) -> "LmCaseRecord":
        return replace(self, noise={**self.noise, klass: CaseNoise.decode_from(values)})


@dataclass(frozen=True)
class LmGolden(ModelGolden):
    """A verified causal-lm golden: where it is, what recorded it, its typed cases."""

    cases: Mapping[str, LmCaseRecord] = field(default_factory=dict)
    inconsistent_reference: tuple[str, ...] = ()
    noise_runs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def case(self, case_id: str) -> LmCaseRecord:
        return self.cases[case_id]

    def with_cases(self, cases: Mapping[str, LmCaseRecord]) -> "LmGolden":
        return replace(self, cases=dict(cases))


# -- decode -------------------------------------------------------------------------------

def decode(data: Mapping[str, Any], path: Path) -> LmGolden:
    """A verified golden's JSON as typed records."""
    cases = {cid: _decode_case(cid, rec) for cid, rec in data["cases"].items()}
    return LmGolden(**model_header(data, path), cases=cases,
                    inconsistent_reference=tuple(data.get("inconsistent_reference") or ()),
                    noise_runs=dict(data.get("noise") or {}))


def _decode_case(cid: str, rec: Mapping[str, Any]) -> LmCaseRecord:
    prompt_steps = rec.get("prompt_steps")
    ids = rec.get("prompt_ids")
    return LmCaseRecord(
        id=cid, hash=rec["hash"], prompt=rec["prompt"], output_ids=tuple(rec["output_ids"]),
        output_text=rec["output_text"], settings=dict(rec["settings"]),
        steps=Steps.decode(rec["steps"]),
        prompt_ids=None if ids is None else tuple(ids),
        prompt_ids_sha256=rec.get("prompt_ids_sha256"),
        prompt_length=len(ids) if ids is not None else int(rec.get("prompt_length", 0)),
        sketch=rec.get("sketch"),
        prompt_steps=None if not prompt_steps else PromptSteps(
            tuple(prompt_steps["positions"]), Steps.decode(prompt_steps["steps"])),
        noise={k: CaseNoise.decode_from(v) for k, v in (rec.get("noise") or {}).items()},
        reference_fails=tuple(rec.get("reference_fails") or ()))


def load_golden(path: Path, spec_name: str | None = None) -> LmGolden:
    """Read, verify and decode a causal-lm golden; GoldenError (exit 2) naming the
    problem."""
    return decode(load_data(path, spec_name), Path(path))


def load_data(path: Path, spec_name: str | None = None) -> dict:
    """The verified JSON of a causal-lm golden (what a re-record compares with)."""
    path = Path(path)
    data = read_verified(path, FORMAT, spec_name)
    for cid, case in data["cases"].items():
        if len(case["steps"]) != len(case["output_ids"]):
            raise GoldenError(f"golden {path}: case '{cid}' has {len(case['steps'])} steps for "
                              f"{len(case['output_ids'])} output ids")
        prompt_steps = (case.get("prompt_steps") or {}).get("steps") or []
        for n, step in enumerate(list(case["steps"]) + list(prompt_steps)):
            _check_step(path, cid, n, step)
        sketch = case.get("sketch")
        if sketch and any(len(layer["v"]) != sketch["dims"]
                          or len(layer["norms"]) != len(sketch["positions"])
                          for layer in sketch["layers"]):
            raise GoldenError(f"golden {path}: case '{cid}' has a layer sketch whose sizes do "
                              "not match its dims / positions")
    return data


def _check_step(path: Path, cid: str, n: int, step: Any) -> None:
    """One stored step is ids and as many finite log-probabilities, and a tail."""
    try:
        ids, lps, tail = list(step["ids"]), list(step["logprobs"]), step["tail"]
        values = [float(v) for v in lps] + ([] if tail is None else [float(tail)])
        whole = all(int(i) == i for i in ids)
    except (KeyError, TypeError, ValueError):
        raise GoldenError(f"golden {path}: case '{cid}' step {n} is not ids, log-probs and "
                          "a tail") from None
    if not ids or len(ids) != len(lps) or not whole:
        raise GoldenError(f"golden {path}: case '{cid}' step {n} has {len(ids)} ids and "
                          f"{len(lps)} log-probabilities")
    if not all(math.isfinite(v) for v in values):
        raise GoldenError(f"golden {path}: case '{cid}' step {n} holds a log-probability "
                          "that is not finite (a recorded golden stores only finite ones; "
                          "an empty tail is null)")


# -- encode -------------------------------------------------------------------------------

def encode_case(rec: LmCaseRecord) -> dict:
    """A case record as the golden file keeps it: a long prompt made by recipe is stored
    by its length and the sha256 of its ids (the recipe is in the settings), not the ids."""
    out: dict[str, Any] = {"hash": rec.hash, "prompt": rec.prompt,
                           "output_ids": [int(i) for i in rec.output_ids],
                           "output_text": rec.output_text, "settings": dict(rec.settings),
                           "steps": rec.steps.encode()}
    if rec.recipe:
        out["prompt_ids_sha256"] = ids_sha256(list(rec.prompt_ids or ()))
        out["prompt_length"] = len(rec.prompt_ids or ())
    else:
        out["prompt_ids"] = [int(i) for i in rec.prompt_ids or ()]
    if rec.sketch:
        out["sketch"] = rec.sketch
    if rec.prompt_steps is not None:
        out["prompt_steps"] = {"positions": list(rec.prompt_steps.positions),
                               "steps": rec.prompt_steps.steps.encode()}
    if rec.noise:
        out["noise"] = {k: v.encode() for k, v in rec.noise.items()}
    if rec.reference_fails:
        out["reference_fails"] = list(rec.reference_fails)
    return out


def build_golden(spec_name: str, backend: str, fingerprint: str, source: str,
                 environment: Mapping[str, Any], cases: Mapping[str, LmCaseRecord | dict],
                 inconsistent_allowed: Sequence[str] = (),
                 noise_runs: Mapping[str, Any] | None = None) -> dict:
    """The sealed JSON of a golden of typed records (or of case entries already in the
    file's form)."""
    data = {"format": GOLDEN_FORMAT, "spec": spec_name, "backend": backend, "kind": "causal-lm",
            "model": {"fingerprint": fingerprint, "source": source},
            "recorded_with": dict(environment),
            "cases": {cid: encode_case(rec) if isinstance(rec, LmCaseRecord) else dict(rec)
                      for cid, rec in cases.items()}}
    if inconsistent_allowed:   # recorded with --allow-inconsistent-reference
        data["inconsistent_reference"] = list(inconsistent_allowed)
    if noise_runs:
        data["noise"] = dict(noise_runs)
    return seal(data)


def encode(golden: LmGolden) -> dict:
    """A typed golden back as its sealed JSON (byte for byte what was read, plus what
    was added to it, e.g. noise)."""
    return build_golden(golden.spec, golden.backend, golden.fingerprint, golden.source,
                        golden.recorded_with, golden.cases, golden.inconsistent_reference,
                        golden.noise_runs)


def case_hash(prompt_ids: Sequence[int], settings: Mapping, fingerprint: str) -> str:
    payload = json.dumps({"prompt_ids": list(prompt_ids), "settings": settings,
                          "model": fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


# -- staleness ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Staleness:
    """The verdict on a golden against what the spec now asks: the problem (None when
    the golden fits), and the golden with every checked case's prompt ids resolved (a
    long prompt's from the spec's recipe, verified against the stored hash)."""

    problem: str | None
    golden: LmGolden

    def raise_if_stale(self) -> LmGolden:
        if self.problem:
            raise GoldenError(self.problem)
        return self.golden


def staleness(golden: LmGolden, fingerprint: str, cases: Sequence[tuple[Any, list[int]]],
              spec_path: str) -> Staleness:
    """Does the golden still fit? `cases`: (case, its prompt ids now) for each case to
    check; the case's `id`, `line` and `settings()` are read. Pure."""
    if fingerprint != golden.fingerprint:
        return Staleness(f"golden {golden.path} was recorded from another model "
                         f"({golden.fingerprint[:23]}…, now {fingerprint[:23]}…); re-record "
                         "it with --update", golden)
    resolved = dict(golden.cases)
    for case, ids in cases:
        where = f"({spec_path}:{case.line})"
        rec = golden.cases.get(case.id)
        if rec is None:
            return Staleness(f"case '{case.id}' {where} has no golden in {golden.path}; "
                             "re-record with --update", golden)
        if rec.prompt_ids is None and rec.prompt_ids_sha256 != ids_sha256(ids):
            return Staleness(f"golden for case '{case.id}' {where} is stale: its long prompt's "
                             "recipe no longer reproduces the recorded prompt ids (sha256 "
                             "differs); re-record with `specengine record-golden --update`",
                             golden)
        if case_hash(ids, case.settings(), fingerprint) != rec.hash:
            return Staleness(f"golden for case '{case.id}' {where} is stale: its prompt or "
                             "generation settings changed since it was recorded; re-record "
                             "with `specengine record-golden --update`", golden)
        resolved[case.id] = rec.with_prompt_ids(ids)
    return Staleness(None, golden.with_cases(resolved))
