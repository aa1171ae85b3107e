"""The HTML report in a real browser: headless Chromium loads the report of a real,
failing check of a tiny spec (the `failing_check` of test_ci_outputs: a divergence,
charts, top-k tables) and the test checks the rendered page.

- `--dump-dom`: the DOM after rendering has the summary, every case, the divergence
  marked, the SVG charts, the top-k table and both environments; no <script>, no
  external resource.
- `--enable-logging=stderr --v=0`: no uncaught error, no console message, no
  Content-Security-Policy refusal.
- `--screenshot --window-size=1280,6000` (tall enough for the first case's charts, below its
  limits table): saved as a test artifact (SPECENGINE_ARTIFACTS,
  else tests/artifacts/, which ignores itself in git), and decoded to check that the
  chart lines are drawn in it.

Chromium is Debian's `chromium` package (`apt-get install -y chromium`). Without it the
test is skipped with that reason, unless SPECENGINE_REQUIRE_BROWSER=1 (CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO
from test_ci_outputs import failing_check, gate_repo  # noqa: F401  (fixtures)

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--force-device-scale-factor=1")
WIDTH, HEIGHT = 1280, 6000
SERIES_COLORS = {"KL": (0x25, 0x63, 0xEB), "|Δ logprob|": (0xEA, 0x58, 0x0C)}


def find_browser() -> str | None:
    explicit = os.environ.get("SPECENGINE_CHROMIUM")
    if explicit:
        return explicit
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        reason = ("headless Chromium is not installed (Debian: apt-get install -y chromium; "
                  "or set SPECENGINE_CHROMIUM=/path/to/chrome)")
        if os.environ.get("SPECENGINE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SPECENGINE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = os.environ.get("SPECENGINE_ARTIFACTS")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = REPO / "tests" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test artifacts (screenshots, reports): never committed\n*\n")
    return path


def chromium(browser: str, tmp_path: Path, *args: str, page: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args, page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def page_problems(stderr: str) -> list[str]:
    """Lines of Chromium's log that report a problem with the page itself."""
    needles = ("Uncaught", "CONSOLE", "Refused to", "ERR_FILE_NOT_FOUND", "ERR_BLOCKED",
               "Content Security Policy", "net::ERR_")
    return [line for line in stderr.splitlines() if any(n in line for n in needles)]


class Dom(HTMLParser):
    """Elements of the dumped DOM: (tag, attributes) in order, and the text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None, **attrs) -> list[dict]:
        out = []
        for name, a in self.elements:
            if name != tag:
                continue
            if cls is not None and cls not in a.get("class", "").split():
                continue
            if all(a.get(k) == v for k, v in attrs.items()):
                out.append(a)
        return out


def test_report_renders_in_chromium(failing_check, browser, artifacts, tmp_path):
    report = failing_check.reports["html"]
    shutil.copy2(report, artifacts / "report.html")
    source = report.read_text("utf-8")
    assert "<script" not in source.lower()

    proc = chromium(browser, tmp_path, "--dump-dom", page=report)
    (artifacts / "report.dom.html").write_text(proc.stdout, "utf-8")
    (artifacts / "chromium-dump-dom.log").write_text(proc.stderr, "utf-8")
    assert page_problems(proc.stderr) == []
    dom = Dom(proc.stdout)
    assert dom.find("script") == []
    text = "".join(dom.text)

    # verdict, summary, the run and every case
    assert dom.find("header", id="verdict") and "FAIL" in text
    assert dom.find("section", id="summary") and dom.find("table", cls="runs")
    cases = dom.find("details", cls="case")
    assert [c["id"] for c in cases] == ["run0-case0", "run0-case1", "run0-case2"]
    by_status = {c["id"]: c["class"] for c in cases}
    assert "case-fail" in by_status["run0-case0"] and "case-pass" in by_status["run0-case2"]
    assert all("open" in c for c in cases if "case-fail" in c["class"])
    # the divergence marked in both continuations, then the later candidate tokens
    assert len(dom.find("span", cls="diverged")) >= 2
    assert dom.find("span", cls="after")
    assert "First divergence at step" in text and "outside the near-tie rule" in text
    # charts: inline SVG with both series and the tolerance lines
    svgs = dom.find("svg")
    assert len(svgs) >= 3, len(svgs)
    assert len(dom.find("polyline", cls="series")) >= 6
    assert dom.find("line", cls="limit") and dom.find("line", cls="divergence")
    # top-k at the worst position, environment of both sides
    assert len(dom.find("table", cls="topk")) == 3
    assert len(dom.find("table", cls="env")) == 1
    assert "reference" in text and "candidate" in text and "model fingerprint" in text
    # untrusted text stays text
    assert "<script>alert(1)</script> & friends, 100%" in text
    # self-contained: nothing to fetch
    for _, attrs in dom.elements:
        for key in ("src", "href"):
            value = attrs.get(key, "")
            assert not value or value.startswith(("#", "data:")), (key, value)


def test_report_screenshot_shows_the_charts(failing_check, browser, artifacts, tmp_path):
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    proc = chromium(browser, tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}",
                    page=failing_check.reports["html"])
    (artifacts / "chromium-screenshot.log").write_text(proc.stderr, "utf-8")
    assert page_problems(proc.stderr) == []
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = read_png(shot)
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    rgb = pixels[:, :, :3]
    colors = np.unique(rgb.reshape(-1, 3)[:: 7], axis=0)
    assert len(colors) > 50, "the page rendered (almost) blank"
    # each chart series is a line across the plot: its exact colour spans >= 300 px
    # horizontally within one chart-high band of rows (links and bars are far narrower)
    for name, color in SERIES_COLORS.items():
        mask = np.all(rgb == np.array(color, dtype=np.uint8), axis=2)
        assert widest_band(mask, rows=160) >= 300, f"the {name} chart line is not visible"


def widest_band(mask: np.ndarray, rows: int) -> int:
    """The widest horizontal extent of True pixels within any `rows`-high band."""
    has = mask.any(axis=1)
    lo = np.where(has, mask.argmax(axis=1), mask.shape[1])
    hi = np.where(has, mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1), -1)
    best = 0
    for top in range(0, mask.shape[0], rows // 4):
        a, b = lo[top:top + rows].min(initial=mask.shape[1]), hi[top:top + rows].max(initial=-1)
        best = max(best, int(b - a))
    return best


def read_png(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium writes) to an array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, ctype, _, _, interlace = header
    assert depth == 8 and interlace == 0 and ctype in (2, 6), header
    bpp = 3 if ctype == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    raw = raw.reshape(height, width * bpp + 1)
    out = np.zeros((height, width * bpp), dtype=np.uint8)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if kind == 1:        # Sub: a running sum per channel
            line = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 255
        elif kind == 2:      # Up
            line = (line + prev) & 255
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            line = _unfilter_sequential(kind, line, prev, bpp)
        out[y] = line
        prev = line.astype(np.int32)
    return out.reshape(height, width, bpp)


def _unfilter_sequential(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    cur = line.tolist()
    up = prev.tolist()
    for x in range(len(cur)):
        a = cur[x - bpp] if x >= bpp else 0
        b = up[x]
        if kind == 3:
            cur[x] = (cur[x] + ((a + b) >> 1)) & 255
        else:
            c = up[x - bpp] if x >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            cur[x] = (cur[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    return np.array(cur, dtype=np.int32)


def _zh_report(tmp_path: Path, continuation: list[bytes], name: str) -> Path:
    from test_token_display import zh_case, zh_run

    from specengine.report import render_html
    from specengine.token_display import show_bytes

    ids = list(range(len(continuation)))
    case = zh_case(ids, continuation, ids, continuation, None,
                   lambda _ids, raw: [show_bytes(b) for b in raw])
    case.status = "fail"                           # open, so its text is on screen
    page = tmp_path / f"{name}.html"
    page.write_text(render_html([zh_run(case)]), "utf-8")
    return page


def test_chinese_case_renders_its_characters(browser, artifacts, tmp_path):
    """A Chinese continuation in the HTML report: the DOM holds the characters (merged
    from byte tokens, no U+FFFD) and the screenshot draws glyphs — two pages that differ
    only in their Chinese characters give different pixels, which missing-glyph boxes
    (no CJK font) would not."""
    one = [b"\xe4\xb8\x80", b"\xe4\xbd", b"\x8d", b"\xe4\xba\xba"]            # 一位人
    two = [b"\xe8\xa2\xab", b"\xe7\xa6", b"\x8f", b"\xe6\xb2\xb3"]            # 被福河
    shots = []
    for name, cont in (("zh-one", one), ("zh-two", two)):
        page = _zh_report(tmp_path, cont, name)
        dom = chromium(browser, tmp_path, "--dump-dom", page=page)
        text = "".join(Dom(dom.stdout).text)
        assert "\ufffd" not in text
        assert ("一位人" if name == "zh-one" else "被福河") in text
        shot = artifacts / f"report-{name}.png"
        shot.unlink(missing_ok=True)
        chromium(browser, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", page=page)
        shots.append(read_png(shot)[:, :, :3])
    assert shots[0].shape == shots[1].shape
    differing = np.any(shots[0] != shots[1], axis=2).sum()
    assert differing > 200, "the Chinese characters render as identical boxes (no CJK font?)"
