"""The one record/check skeleton (kinds.base) with a kind made of nothing but hooks: the
order it calls them in, that both sides are closed however a check ends, the one error
policy (a case's exception is that case's error; a backend out of memory or stopped ends
the run with the judged cases kept), --fail-fast, and the record twin (amend first, refuse
to overwrite without --update, write what the kind's codec built)."""

from __future__ import annotations

import contextlib
import json

import pytest

from specengine.errors import BackendCrashed, BackendStopped, GoldenError
from specengine.kinds.base import (CheckOptions, CheckRequest, Kind, RecordRequest, check,
                                   new_run, record)
from specengine.golden.store import seal
from specengine.results import CaseResult, Side
from specengine.run import KINDS
from specengine.spec import parse_spec

SPEC = ("specengine: 1\nname: skel\nmodel: {path: m}\ncases:\n"
        "  - {id: a, prompt: p}\n  - {id: b, prompt: q}\n  - {id: c, prompt: r}\n")


class Session:
    def __init__(self, log, name):
        self.log, self.name = log, name

    def side(self):
        return Side(self.name)

    def close(self):
        self.log.append(f"close {self.name}")


class Recorder(Kind):
    """A kind whose hooks write what they are asked to a log; `fail` maps a case id to the
    exception its check raises."""

    name = "fake"

    def __init__(self, fail=None):
        self.log, self.fail = [], dict(fail or {})

    @contextlib.contextmanager
    def reference(self, req):
        self.log.append("open reference")
        try:
            yield "REF"
        finally:
            self.log.append("close reference")

    @contextlib.contextmanager
    def candidate(self, req, ref):
        self.log.append(f"open candidate ({ref})")
        try:
            yield "CAND"
        finally:
            self.log.append("close candidate")

    def start(self, req, cand, ref):
        return new_run(req.spec, Side(req.candidate), Side("ref"), "golden"), req.cases

    def check_case(self, req, cand, ref, case):
        self.log.append(f"check {case.id}")
        if case.id in self.fail:
            raise self.fail[case.id]
        return CaseResult(case.id, "pass")

    def after_case(self, req, cand, ref, run, case, result):
        self.log.append(f"after {case.id} {result.status}")

    def finish(self, req, cand, ref, run):
        self.log.append("finish")

    def amend(self, req):
        return req.path if req.options.get("amend") else None

    def load_data(self, path, spec_name):
        return json.loads(path.read_text())

    def describe_changes(self, old, new):
        return ["  (changed)"]

    @contextlib.contextmanager
    def recorder(self, req):
        session = Session(self.log, req.backend)
        try:
            yield session
        finally:
            session.close()

    def record_case(self, req, session, case):
        self.log.append(f"record {case.id}")
        return {"id": case.id}

    def golden_data(self, req, session, side, records):
        return seal({"format": 1, "spec": req.spec.name, "cases": dict(records)})


def _request(tmp_path, **options):
    spec = parse_spec(SPEC, str(tmp_path / "s.yaml"))
    return CheckRequest(spec, "cand", tuple(spec.cases), tmp_path, None, CheckOptions(**options))


def test_every_kind_is_a_kind_and_run_goes_through_the_one_skeleton():
    assert set(KINDS) == {"causal-lm", "embedding", "ops"}
    assert all(isinstance(kind, Kind) for kind in KINDS.values())
    for kind in KINDS.values():           # each fills in the hooks, none its own loop
        for hook in ("reference", "candidate", "start", "check_case", "recorder",
                     "record_case", "golden_data", "load_data", "describe_changes"):
            assert getattr(type(kind), hook) is not getattr(Kind, hook), (kind.name, hook)


def test_check_calls_the_hooks_in_order_and_closes_both_sides(tmp_path):
    kind = Recorder()
    run = check(kind, _request(tmp_path))
    assert run.status == "pass" and [c.id for c in run.cases] == ["a", "b", "c"]
    assert kind.log == ["open reference", "open candidate (REF)",
                        "check a", "after a pass", "check b", "after b pass",
                        "check c", "after c pass", "finish",
                        "close candidate", "close reference"]


def test_one_case_raising_is_not_the_run_but_a_stopped_backend_is(tmp_path):
    kind = Recorder({"b": BackendCrashed("backend 'cand' ran out of memory")})
    with pytest.raises(BackendCrashed) as info:
        check(kind, _request(tmp_path))
    partial = info.value.partial_run
    assert [(c.id, c.status) for c in partial.cases] == [("a", "pass"), ("b", "error")]
    assert kind.log[-2:] == ["close candidate", "close reference"]
    stopped = Recorder({"c": BackendStopped("the server answered 4 requests, then stopped")})
    with pytest.raises(BackendStopped) as info:
        check(stopped, _request(tmp_path))
    assert "for case 'c'" in info.value.one_line()
    assert [c.status for c in info.value.partial_run.cases] == ["pass", "pass", "error"]


def test_fail_fast_stops_at_the_first_case_that_does_not_pass(tmp_path):
    class Failing(Recorder):
        def check_case(self, req, cand, ref, case):
            super().check_case(req, cand, ref, case)
            return CaseResult(case.id, "fail" if case.id == "a" else "pass")

    kind = Failing()
    run = check(kind, _request(tmp_path, fail_fast=True))
    assert [c.id for c in run.cases] == ["a"] and run.status == "fail"
    assert "stopped at the first failing case (--fail-fast)" in run.notes


def test_record_amends_refuses_without_update_and_writes_the_codecs_json(tmp_path):
    spec = parse_spec(SPEC, str(tmp_path / "s.yaml"))
    kind, lines = Recorder(), []
    req = RecordRequest(spec, "cpu", tmp_path / "golden", echo=lines.append)
    path = record(kind, req)
    data = json.loads(path.read_text())
    assert data["cases"] == {"a": {"id": "a"}, "b": {"id": "b"}, "c": {"id": "c"}}
    assert kind.log == ["record a", "record b", "record c", "close cpu"]
    with pytest.raises(GoldenError, match="--update"):
        record(kind, req)
    again = RecordRequest(spec, "cpu", tmp_path / "golden", update=True, echo=lines.append)
    record(kind, again)
    assert "  (changed)" in lines
    amend = RecordRequest(spec, "cpu", tmp_path / "golden", echo=lines.append,
                          options={"amend": True})
    kind.log.clear()
    assert record(kind, amend) == path and kind.log == []      # nothing recorded
