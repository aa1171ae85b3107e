"""Run results: what a check measured, as plain dataclasses that serialise to the JSON
validated by schemas/results.schema.json, and that every report format renders."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

RESULTS_FORMAT = 1

PASS, FAIL, ERROR, NOT_RUN = "pass", "fail", "error", "not-run"


@dataclass
class Check:
    """One kind of check on one case: expect, divergence, teacher-forced, determinism, ..."""

    name: str
    status: str                       # pass | fail | error | not-run
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class TopKRow:
    token: str
    id: int
    golden_p: float
    candidate_p: float
    delta: float


@dataclass
class CaseResult:
    id: str
    status: str                       # pass | fail | error
    line: int = 0                     # line of the case in the spec
    tags: list[str] = field(default_factory=list)
    prompt: str = ""                  # as given (raw prompt, or the rendered chat)
    golden_text: str = ""
    candidate_text: str = ""
    golden_tokens: list[str] = field(default_factory=list)     # per generated step, for display
    candidate_tokens: list[str] = field(default_factory=list)
    golden_token_bytes: list[str | None] = field(default_factory=list)   # hex per step
    candidate_token_bytes: list[str | None] = field(default_factory=list)
    golden_ids: list[int] = field(default_factory=list)
    candidate_ids: list[int] = field(default_factory=list)
    divergence_step: int | None = None
    prompt_length: int = 0            # prompt tokens (long prompts, length sweeps)
    checks: list[Check] = field(default_factory=list)
    per_position: dict[str, list[float]] = field(default_factory=dict)   # kl, abs_dlogprob
    worst_position: int | None = None
    worst_topk: list[TopKRow] = field(default_factory=list)
    error: str = ""
    duration_s: float = 0.0
    localization: dict[str, Any] | None = None   # check --localize (kinds.causal_lm.localize)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.message}" for c in self.checks if c.status in (FAIL, ERROR)] + (
            [f"error: {self.error}"] if self.error else [])


@dataclass
class Side:
    """The environment of one side of a comparison."""

    backend: str
    runtime: str = ""
    device: str = ""
    device_name: str = ""
    dtype: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    model_fingerprint: str = ""
    model_source: str = ""
    model_override: bool = False      # the backend's own model, not the spec's
    trust_remote_code: bool = False
    settings: dict[str, Any] = field(default_factory=dict)   # determinism switches etc.
    quantization: dict[str, Any] | None = None   # declared weight/activation/KV formats
    modeling: dict[str, Any] = field(default_factory=dict)   # which modeling code ran

    @classmethod
    def of(cls, env: dict[str, Any], name: str, runtime: str, device: str, dtype: str,
           quantization: dict | None = None, **model: Any) -> "Side":
        """The one Side builder for a live backend: its `environment()` over what it was
        asked to be (name, runtime, device, dtype), plus the model facts in `model`
        (model_fingerprint, model_source, model_override, trust_remote_code)."""
        return cls(backend=name, runtime=env.get("runtime", runtime),
                   device=env.get("device", device), device_name=env.get("device_name", ""),
                   dtype=env.get("dtype", dtype), versions=env.get("versions", {}),
                   settings=env.get("settings", {}),
                   quantization=env.get("quantization", quantization),
                   modeling=env.get("modeling", {}), **model)

    @classmethod
    def of_recording(cls, recorded_with: dict, fingerprint: str = "", source: str = ""
                     ) -> "Side":
        """The recording side of a golden: what it says recorded it, and its model."""
        allowed = set(cls.__dataclass_fields__)
        side = cls(**{k: v for k, v in dict(recorded_with or {}).items() if k in allowed})
        side.model_fingerprint = fingerprint or side.model_fingerprint
        side.model_source = source or side.model_source
        return side

    def recorded(self) -> dict[str, Any]:
        """What a golden stores of the recording side (the model has its own entry)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("model_fingerprint", "model_source")}


def comparison_label(a: Side, b: Side) -> str:
    """self-check: same runtime, device and dtype and model fingerprint (it shows
    repeatability only); cross-model: only the weights differ; cross-backend otherwise."""
    same = (a.runtime, a.device.split(":")[0], a.dtype) == (b.runtime, b.device.split(":")[0],
                                                            b.dtype)
    if not same:
        return "cross-backend"
    fingerprints = a.model_fingerprint, b.model_fingerprint
    if all(fingerprints) and fingerprints[0] != fingerprints[1]:
        return "cross-model"
    return "self-check"


@dataclass
class RunResult:
    spec_name: str
    spec_path: str
    command: str                      # check | record-golden
    candidate: Side
    reference: Side
    comparison: str                   # self-check | cross-model | cross-backend
    reference_kind: str               # golden | live
    status: str = PASS                # pass | fail | error
    cases: list[CaseResult] = field(default_factory=list)
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    perf: dict[str, Any] | None = None
    format: int = RESULTS_FORMAT
    error: str = ""                   # why the spec could not run at all (no cases then)
    tolerance_class: str = ""         # float32 | half | quantized: the default set in force
    distribution: dict[str, Any] | None = None   # whole-spec statistics per path

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def summary(self) -> dict[str, int]:
        counts = {PASS: 0, FAIL: 0, ERROR: 0}
        for case in self.cases:
            counts[case.status] = counts.get(case.status, 0) + 1
        return {"cases": len(self.cases), "passed": counts[PASS], "failed": counts[FAIL],
                "errors": counts[ERROR]}

    def finish(self) -> None:
        statuses = {c.status for c in self.cases} | ({ERROR} if self.error else set())
        if self.perf and self.perf.get("status") == FAIL:
            statuses.add(FAIL)
        if self.distribution and self.distribution.get("failures"):
            statuses.add(FAIL)
        self.status = ERROR if ERROR in statuses else FAIL if FAIL in statuses else PASS
        if self.status == PASS and self.cases and statuses == {NOT_RUN}:
            self.status = NOT_RUN   # nothing could be compared: never a pass

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False,
                          allow_nan=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def from_dict(data: dict[str, Any]) -> RunResult:
    """Rebuild a RunResult from its JSON (for `specengine report`)."""
    data = dict(data)
    data.pop("summary", None)
    cases = []
    for c in data.pop("cases", []):
        c = dict(c)
        c["checks"] = [Check(**x) for x in c.get("checks", [])]
        c["worst_topk"] = [TopKRow(**x) for x in c.get("worst_topk", [])]
        cases.append(CaseResult(**c))
    cand = Side(**data.pop("candidate"))
    ref = Side(**data.pop("reference"))
    return RunResult(candidate=cand, reference=ref, cases=cases, **data)
