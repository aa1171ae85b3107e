"""pytest plugin (entry point `pytest11: specengine`): spec YAML files are test files,
their cases are test items.

    pytest specs/ --specengine-backend npu [--junitxml=report.xml]

- A YAML file is collected only when it is a specengine spec: a top-level `specengine:`
  key (other YAML in the repository is left alone). A spec that does not validate is a
  collection error with `file:line:col`.
- One item per case, named by the case id (`specs/x.yaml::capital-fr`); all the check
  kinds of a case (expectations, free-running divergence, teacher-forced metrics,
  determinism, batch invariance) are judged inside that item, as `specengine check`
  judges them, and a failure shows the terminal report's block for the case, the
  continuations with the divergence marked and the top-k table at the worst position.
- The model is loaded once per spec file: the first selected item of a file checks every
  selected case of it (in `setup`, so the load time is that item's setup time); the
  other items report their share of that run. The checks are `specengine.run.check_spec`
  itself, so the plugin and the command line can never judge differently.
- Every item carries the marker `specengine` and one marker per case tag, so
  `-m chinese` / `-k capital` / `-m "not slow"` select cases; `--junitxml` works as
  for any test (file and line point at the case in the spec).
- The candidate backend: `--specengine-backend`, else the ini option
  `specengine_backend`, else `$SPECENGINE_BACKEND`, else each spec's reference (a
  self-check, labelled as such). A backend that is not available (its runtime or device
  is missing) is an error, or a skip with the reason under
  `--specengine-skip-unavailable`.

Disable the plugin with `-p no:specengine`. Nothing heavy is imported until a spec item
runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

SPEC_SUFFIXES = (".yaml", ".yml")
_SPEC_KEY = re.compile(rb"^[\"']?specengine[\"']?[ \t]*:", re.MULTILINE)
_SNIFF_BYTES = 1 << 16

_RUNS = pytest.StashKey[list]()
# pytest markers that act on an item: case tags with these names select (-k) but do not mark
_RESERVED_MARKERS = frozenset({"skip", "skipif", "xfail", "parametrize", "usefixtures",
                               "filterwarnings", "tryfirst", "trylast"})


# --- options ------------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("specengine", "specengine: spec YAML files as tests")
    group.addoption("--specengine-backend", metavar="NAME", default=None,
                    help="candidate backend the spec cases are checked on (default: ini "
                         "specengine_backend, else $SPECENGINE_BACKEND, else each spec's "
                         "reference, i.e. a self-check)")
    group.addoption("--specengine-against", metavar="BACKEND", default=None,
                    help="compare with this backend live instead of the golden")
    group.addoption("--specengine-golden-dir", metavar="DIR", default=None,
                    help="golden folder (default: ini specengine_golden_dir, else "
                         "$SPECENGINE_GOLDEN_DIR, else the golden/ folder nearest the spec: in its "
                         "folder or above, else in its project root)")
    group.addoption("--specengine-skip-unavailable", action="store_true", default=None,
                    help="skip (with the reason) instead of erroring when the backend's "
                         "runtime or device is not available here")
    group.addoption("--specengine-json", metavar="PATH", default=None,
                    help="also write the specengine results JSON of the session")
    group.addoption("--specengine-html", metavar="PATH", default=None,
                    help="also write the specengine HTML report of the session")
    group.addoption("--specengine-markdown", metavar="PATH", default=None,
                    help="also write the specengine Markdown report (to append to "
                         "$GITHUB_STEP_SUMMARY)")
    group.addoption("--specengine-annotations", choices=("github",), default=None,
                    help="print GitHub Actions ::error annotations at each failing case's "
                         "line in its spec")
    parser.addini("specengine_backend", "candidate backend for spec items", default="")
    parser.addini("specengine_golden_dir", "golden folder for spec items (relative to the "
                  "ini file)", default="")
    parser.addini("specengine_skip_unavailable", "skip spec items whose backend is not "
                  "available", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "specengine: a case of a specengine spec file")
    config.stash[_RUNS] = []


def pytest_report_header(config: pytest.Config) -> str | None:
    settings = Settings.of(config)
    against = f", against {settings.against} (live)" if settings.against else ""
    return (f"specengine: backend {settings.backend or 'each spec reference (self-check)'}"
            f"{against}, goldens {settings.golden_dir or 'the golden/ folder nearest each spec'}")


class Settings:
    """The plugin's options, resolved: command line, then ini, then environment."""

    def __init__(self, config: pytest.Config):
        opt = config.getoption
        self.backend = (opt("specengine_backend") or config.getini("specengine_backend")
                        or os.environ.get("SPECENGINE_BACKEND") or None)
        self.against = opt("specengine_against")
        golden = opt("specengine_golden_dir")
        ini_golden = config.getini("specengine_golden_dir")
        if golden:
            self.golden_dir = Path(golden)
        elif ini_golden:
            base = config.inipath.parent if config.inipath else config.rootpath
            self.golden_dir = base / ini_golden
        else:
            self.golden_dir = None      # per spec: specengine.golden.default_golden_dir
        skip = opt("specengine_skip_unavailable")
        self.skip_unavailable = bool(skip if skip is not None
                                     else config.getini("specengine_skip_unavailable"))
        self.fail_fast = opt("maxfail", 0) == 1

    @staticmethod
    def of(config: pytest.Config) -> "Settings":
        return Settings(config)


# --- collection ------------------------------------------------------------------------

def looks_like_spec(path: Path) -> bool:
    """A YAML file with a top-level `specengine:` key (read from its first 64 KiB)."""
    if path.suffix not in SPEC_SUFFIXES:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return False
    return bool(_SPEC_KEY.search(head))


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if looks_like_spec(file_path):
        return SpecFile.from_parent(parent, path=file_path)
    return None


class CaseFailed(Exception):
    """A case whose checks failed (a mismatch, shown as the report's text)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class SpecFile(pytest.File):
    """One spec file: collects its cases, and runs the selected ones in one session."""

    spec = None
    run = None

    def collect(self):
        from specengine.errors import SpecEngineError
        from specengine.spec import load_spec

        try:
            self.spec = load_spec(self.path)
        except SpecEngineError as exc:
            raise self.CollectError(f"specengine: {exc.one_line()}") from None
        cases = list(getattr(self.spec, "cases", []) or [])
        for case in cases:
            item = CaseItem.from_parent(self, name=case.id, case=case)
            item.add_marker("specengine")
            for tag in case.tags:
                if tag in _RESERVED_MARKERS:    # a tag "skip" must not skip the case
                    item.keywords[tag] = True
                    continue
                _register_marker(self.config, tag)
                item.add_marker(tag)
            yield item
        if not cases:       # a spec with no cases (e.g. ops kinds): one item for the spec
            item = CaseItem.from_parent(self, name=self.spec.name, case=None)
            item.add_marker("specengine")
            yield item

    def selected(self) -> list:
        return [item for item in self.session.items if item.parent is self]

    def setup(self) -> None:
        """Check every selected case of this spec on the candidate, once."""
        from specengine.errors import BackendUnavailable, SpecEngineError
        from specengine.run import check_spec

        if self.run is not None:        # set up again (items reordered): the run is done
            return
        settings = Settings.of(self.config)
        backend = settings.backend or self.spec.reference
        ids = {item.case.id for item in self.selected() if item.case is not None}
        cases = [c for c in self.spec.cases if c.id in ids] if self.spec.cases else None
        try:
            from specengine.golden.store import default_golden_dir

            golden_dir = settings.golden_dir or default_golden_dir(self.spec.path)
            self.run = check_spec(self.spec, backend, golden_dir, settings.against,
                                  cases, settings.fail_fast)
        except BackendUnavailable as exc:
            if settings.skip_unavailable:
                pytest.skip(f"specengine: {exc.one_line()}")
            pytest.fail(f"specengine: {exc.one_line()} (pass --specengine-skip-unavailable "
                        "to skip instead)", pytrace=False)
        except SpecEngineError as exc:
            pytest.fail(f"specengine: {exc.one_line()}", pytrace=False)
        self.config.stash[_RUNS].append(self.run)


def _register_marker(config: pytest.Config, tag: str) -> None:
    """Declare a case tag as a marker (so --strict-markers accepts it)."""
    if tag not in {line.split(":")[0].split("(")[0].strip()
                   for line in config.getini("markers")}:
        config.addinivalue_line("markers", f"{tag}: specengine case tag")


class CaseItem(pytest.Item):
    """One case of a spec, with all its check kinds."""

    def __init__(self, *, case, **kwargs):
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from specengine.report.annotations import case_failure_text
        from specengine.results import ERROR, FAIL

        run = self.parent.run
        if self.case is None:           # the whole-spec item
            results = list(run.cases)
        else:
            results = [c for c in run.cases if c.id == self.case.id]
            if not results:
                pytest.skip("not run: the spec's run stopped at an earlier failing case")
        bad = [c for c in results if c.status in (FAIL, ERROR)]
        if bad:
            raise CaseFailed("\n\n".join(case_failure_text(run, c) for c in bad))
        if self.case is None and run.status in (FAIL, ERROR):
            from specengine.report import render_terminal

            raise CaseFailed(render_terminal([run]))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseFailed):
            return excinfo.value.text
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        line = (self.case.line - 1) if self.case is not None and self.case.line else 0
        spec_name = self.parent.spec.name if self.parent.spec else self.path.stem
        return self.path, line, f"{spec_name}::{self.name}"


# --- session end: reports and annotations --------------------------------------------

def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    runs = config.stash.get(_RUNS, [])
    if not runs:
        return
    from specengine.report.model import SELF_CHECK, SELF_CHECK_TEXT, counts, run_title

    tr = terminalreporter
    tr.section("specengine")
    for run in runs:
        tr.write_line(f"{run.spec_name}: {run_title(run)} [{run.comparison}] — "
                      f"{counts([run]).line()}")
        if run.comparison == SELF_CHECK:
            tr.write_line(f"  {SELF_CHECK_TEXT}")
    opt = config.getoption
    paths = {"json_path": opt("specengine_json"), "html": opt("specengine_html"),
             "markdown": opt("specengine_markdown")}
    if any(paths.values()):
        from specengine.report import write_reports

        write_reports(runs, **{k: v for k, v in paths.items() if v})
        for key, path in paths.items():
            if path:
                tr.write_line(f"specengine {key.replace('_path', '')} report: {path}")
    if opt("specengine_annotations") == "github":
        from specengine.report.annotations import github_annotations

        for line in github_annotations(runs):
            tr.write_line(line)
