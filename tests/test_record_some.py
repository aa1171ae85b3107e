"""`record-golden --case ID` / `--tag T`: only those cases are recorded (added, or
re-recorded with --update); every other case of the golden stays byte for byte. Also the
small frictions around it: "1 case", and `report` keeping the run's own time."""

from __future__ import annotations

import json

from helpers import TINY_MODEL, assert_clean_error, cli, write_spec
from specengine.golden.store import _dump

CASES = """\
cases:
  - {id: a, prompt: "alpha"}
  - {id: b, prompt: "bravo", tags: [smoke]}
  - {id: c, prompt: "charlie"}
"""


def spec_text(cases: str = CASES, model: str = TINY_MODEL) -> str:
    return "specengine: 1\nname: some\n" + model + "defaults: {max_new_tokens: 4}\n" + cases


def golden_file(tmp_path):
    return tmp_path / "golden" / "some" / "cpu.json"


def test_record_only_the_named_cases_keeping_the_rest_byte_for_byte(tmp_path):
    spec = write_spec(tmp_path / "specs" / "some.yaml", spec_text())
    (tmp_path / "pyproject.toml").write_text("")
    first = cli("record-golden", spec, "--case", "a", "--case", "c")
    assert first.rc == 0, first.text
    assert "(2 cases recorded, the others kept)" in first.out
    assert sorted(json.loads(golden_file(tmp_path).read_text())["cases"]) == ["a", "c"]

    before = golden_file(tmp_path).read_text()
    added = cli("record-golden", spec, "--tag", "smoke")
    assert added.rc == 0 and "+ case b (new)" in added.out, added.text
    after = golden_file(tmp_path).read_text()
    old, new = json.loads(before), json.loads(after)
    assert sorted(new["cases"]) == ["a", "b", "c"]
    for cid in ("a", "c"):
        block = _dump(old["cases"][cid], 2)
        assert block in before and block in after        # the same bytes in the file
    assert {k: v for k, v in new.items() if k not in ("cases", "content_sha256")} == \
        {k: v for k, v in old.items() if k not in ("cases", "content_sha256")}
    assert cli("check", spec, "--backend", "cpu").rc == 0   # the merged golden verifies

    again = cli("record-golden", spec, "--case", "b")
    line = assert_clean_error(again, 2)
    assert "already holds case(s) b" in line and "--update" in line
    assert golden_file(tmp_path).read_text() == after
    update = cli("record-golden", spec, "--case", "b", "--update")
    assert update.rc == 0 and "~ case b re-recorded (unchanged)" in update.out, update.text
    assert golden_file(tmp_path).read_text() == after     # deterministic: not one byte moved


def test_a_changed_model_is_not_merged_into_the_old_golden(tmp_path):
    spec = write_spec(tmp_path / "specs" / "some.yaml", spec_text())
    (tmp_path / "pyproject.toml").write_text("")
    assert cli("record-golden", spec).rc == 0
    before = golden_file(tmp_path).read_text()
    write_spec(spec, spec_text(model=TINY_MODEL.replace("seed: 3", "seed: 4")))
    result = cli("record-golden", spec, "--case", "a", "--update")
    line = assert_clean_error(result, 2)
    assert "its model differs" in line and "re-record every case with --update" in line
    assert golden_file(tmp_path).read_text() == before


def test_one_case_is_one_case_and_report_keeps_the_runs_time(tmp_path):
    spec = write_spec(tmp_path / "one.yaml", spec_text(cases="cases:\n  - {id: a, prompt: x}\n"))
    assert "(some: 1 case)" in cli("validate", spec).out
    recorded = cli("record-golden", spec, "--golden-dir", tmp_path / "g")
    assert recorded.rc == 0 and "(1 case)" in recorded.out, recorded.text
    assert cli("check", spec, "--backend", "cpu", "--golden-dir", tmp_path / "g", "--json",
               tmp_path / "r.json").rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    data["runs"][0]["duration_s"] = 754.0            # as if the check had taken 12.6 min
    (tmp_path / "r.json").write_text(json.dumps(data))
    shown = cli("report", tmp_path / "r.json")
    assert shown.rc == 0, shown.text
    closing = shown.out.strip().splitlines()[-1]
    assert "12.6 min" in closing, closing
