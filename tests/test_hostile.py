"""Hostile content: specs, model folders and text that come from a pull request.

Nothing a file smuggles in is executed (YAML object tags, pickled weights, model code
without trust_remote_code, shell syntax in paths); names cannot leave the golden folder;
a run writes only the golden, the cache and the reports it was asked for; every report
format escapes prompt and model text (script tags, control characters, long lines).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fault_backend import publish_figures, run_cli
from helpers import REPO, assert_clean_error, cli, load_json, write_spec
from specengine.spec import parse_spec

FIGURES: dict = {}

MODEL = """\
model:
  synthetic:
    model_type: llama
    seed: 3
    init_std: 0.4
    config: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
             num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 300,
             max_position_embeddings: 4096}
"""

LONG = "x" * 3000 + "<script>alert(5)</script>" + "y" * 1000   # one 4 KB line


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    yield
    publish_figures(request.config, "hostile", FIGURES)


# -- YAML tags, shell syntax, names ---------------------------------------------------

TAGGED = {
    "apply": "model: !!python/object/apply:os.system ['touch {marker}']",
    "new": "model: !!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "name": "model: !!python/name:os.system",
    "module": "model: !!python/module:os",
    "local-tag": "model: !evil {{path: '{marker}'}}",
    "deep": "model: {{path: [!!python/object/apply:os.system ['touch {marker}']]}}",
    "key": "model: {{!!python/object/apply:os.system ['touch {marker}']: 1}}",
    "binary": "model: !!binary aGVsbG8=",
    "set": "model: !!set {{a, b}}",
    "anchor": "model: &m !!python/object/apply:os.system ['touch {marker}']\nalias: *m",
}


@pytest.mark.parametrize("kind", sorted(TAGGED))
def test_yaml_object_tags_are_refused(tmp_path, kind):
    marker = tmp_path / "PWNED"
    text = ("specengine: 1\nname: x\n" + TAGGED[kind].format(marker=marker) +
            "\ncases: [{id: a, prompt: p}]\n")
    spec = write_spec(tmp_path / "s.yaml", text)
    for command in (["validate", spec], ["record-golden", spec, "--golden-dir", tmp_path / "g"],
                    ["check", spec, "--backend", "cpu", "--golden-dir", tmp_path / "g"]):
        line = assert_clean_error(run_cli(*command), 2)
        assert re.search(rf"{re.escape(str(spec))}:3:\d+: (YAML tag .* is not allowed|"
                         "mapping keys must be plain scalars)", line), line
    assert not marker.exists() and not (tmp_path / "g").exists()


def test_tagged_specs_refused_by_the_console_script(tmp_path):
    marker = tmp_path / "PWNED"
    for kind, body in TAGGED.items():
        write_spec(tmp_path / "specs" / f"{kind}.yaml", "specengine: 1\nname: x\n" +
                   body.format(marker=marker) + "\ncases: [{id: a, prompt: p}]\n")
    result = cli("validate", tmp_path / "specs")
    assert result.rc == 2 and "Traceback" not in result.text
    lines = result.err.splitlines()
    assert len(lines) == len(TAGGED)
    assert all("is not allowed" in line or "plain scalars" in line for line in lines), lines
    assert not marker.exists()


def test_environment_interpolation_expands_only_braced_variables(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    monkeypatch.setenv("SPECENGINE_T_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("SPECENGINE_T_UNSET", raising=False)
    cases = {
        "${SPECENGINE_T_DIR}/m": str(tmp_path / "models" / "m"),
        "${SPECENGINE_T_UNSET:-fallback}/m": "fallback/m",
        f"$(touch {marker})/m": f"$(touch {marker})/m",
        f"`touch {marker}`/m": f"`touch {marker}`/m",
        "$SPECENGINE_T_DIR/m": "$SPECENGINE_T_DIR/m",
        f"${{SPECENGINE_T_UNSET:-$(touch {marker})}}/m": f"$(touch {marker})/m",
        "${SPECENGINE_T_UNSET:=x}/m": "${SPECENGINE_T_UNSET:=x}/m",
        "${SPECENGINE_T_DIR/models/etc}": "${SPECENGINE_T_DIR/models/etc}",
        "$((1+1))/m": "$((1+1))/m",
    }
    for written, expected in cases.items():
        text = f"specengine: 1\nname: x\nmodel:\n  path: '{written}'\ncases:\n  - id: a\n" \
               f"    prompt: '${{SPECENGINE_T_DIR}} $(touch {marker})'\n"
        spec = parse_spec(text, str(tmp_path / "s.yaml"))
        got = spec.model.path
        want = expected if os.path.isabs(expected) else str(tmp_path / expected)
        assert got == want, (written, got)
        assert spec.cases[0].prompt == f"${{SPECENGINE_T_DIR}} $(touch {marker})"  # prompts: never
    assert not marker.exists()


@pytest.mark.parametrize("text,fragment", [
    ("name: ../../etc", "not a valid name"),
    ("name: .hidden", "not a valid name"),
    ("name: 'a/b'", "not a valid name"),
    ("name: '..'", "not a valid name"),
    ("name: ok\nbackends: {'../../evil': {runtime: torch}}", "does not match"),
    ("name: ok\nbackends: {'.x': {runtime: torch}}", "does not match"),
    ("name: ok\nreference: '../cpu'", "unknown backend"),
    ("name: ok\ncases_extra: 1", "unknown key"),
])
def test_names_cannot_escape_the_golden_folder(tmp_path, text, fragment):
    body = f"specengine: 1\n{text}\nmodel: {{path: m}}\ncases: [{{id: a, prompt: p}}]\n"
    spec = write_spec(tmp_path / "s.yaml", body)
    for command in (["validate", spec], ["record-golden", spec, "--golden-dir", tmp_path / "g"]):
        line = assert_clean_error(run_cli(*command), 2)
        assert fragment in line, line
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("case_id", ["../x", "a/b", "..", ".", "a\\b", "<script>", "a b"])
def test_case_ids_are_plain_names(tmp_path, case_id):
    body = f"specengine: 1\nname: ok\nmodel: {{path: m}}\ncases: [{{id: {json.dumps(case_id)}, prompt: p}}]\n"
    line = assert_clean_error(run_cli("validate", write_spec(tmp_path / "s.yaml", body)), 2)
    assert "cases/0/id" in line


def _tiny_spec(tmp_path, name="tiny-hostile"):
    return write_spec(tmp_path / "tiny.yaml", f"specengine: 1\nname: {name}\n{MODEL}"
                      "defaults: {max_new_tokens: 3}\ncases: [{id: a, prompt: hello}]\n")


def test_symlinked_golden_folder_or_file_cannot_redirect_writes(tmp_path):
    spec = _tiny_spec(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    gdir = tmp_path / "golden"
    gdir.mkdir()
    (gdir / "tiny-hostile").symlink_to(outside, target_is_directory=True)
    line = assert_clean_error(run_cli("record-golden", spec, "--golden-dir", gdir), 2)
    assert "would leave the golden folder" in line
    assert not list(outside.iterdir())
    (gdir / "tiny-hostile").unlink()
    (gdir / "tiny-hostile").mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    (gdir / "tiny-hostile" / "cpu.json").symlink_to(victim)
    for command in (["record-golden", spec, "--update"], ["check", spec, "--backend", "cpu"]):
        line = assert_clean_error(run_cli(*command, "--golden-dir", gdir), 2)
        assert "would leave the golden folder" in line
    assert victim.read_text() == "precious"


# -- nothing executed from a model folder ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """The tiny synthetic llama as a plain Hugging Face folder (config + safetensors)."""
    from specengine.loading.sources import resolve

    root = tmp_path_factory.mktemp("hostile-model")
    spec = parse_spec(f"specengine: 1\nname: t\n{MODEL}cases: [{{id: a, prompt: p}}]\n",
                      str(root / "t.yaml"))
    src = resolve(spec.model).hf_dir
    out = root / "base"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    return out


def _path_spec(tmp_path, folder: Path, trust: bool) -> Path:
    return write_spec(tmp_path / "p.yaml", f"""\
specengine: 1
name: from-folder
model:
  path: {folder}
  tokenizer: bytes
  trust_remote_code: {str(trust).lower()}
defaults: {{max_new_tokens: 3}}
cases: [{{id: a, prompt: hello}}]
""")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_weights_are_never_unpickled(tmp_path, tiny_model_dir):
    import torch

    marker = tmp_path / "PWNED"
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy2(tiny_model_dir / "config.json", folder / "config.json")
    torch.save({"model.embed_tokens.weight": _Evil(marker)}, folder / "pytorch_model.bin")
    spec = _path_spec(tmp_path, folder, trust=False)
    result = run_cli("record-golden", spec, "--golden-dir", tmp_path / "g")
    line = assert_clean_error(result, 2)
    assert "refusing to load pytorch_model.bin" in line and "weights_only=True" in line, line
    assert not marker.exists()
    assert not (tmp_path / "g").exists()


EVIL_CODE = """\
from pathlib import Path
Path({marker!r}).write_text("model code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    model_type = "evil_llama"


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _remote_code_folder(tmp_path, tiny_model_dir, marker: Path) -> Path:
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil_llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "evil.EvilConfig",
                            "AutoModelForCausalLM": "evil.EvilForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    return folder


def test_model_code_runs_only_when_the_spec_opts_in_and_reports_say_so(tmp_path, tiny_model_dir):
    marker = tmp_path / "CODE-RAN"
    folder = _remote_code_folder(tmp_path, tiny_model_dir, marker)
    home = tmp_path / "home"
    env = {"HOME": str(home), "HF_HOME": str(home / "hf"),
           "SPECENGINE_CACHE": str(tmp_path / "cache")}

    refused = run_cli("record-golden", _path_spec(tmp_path, folder, trust=False),
                      "--golden-dir", tmp_path / "g")
    line = assert_clean_error(refused, 2)
    assert "needs its own code" in line and "trust_remote_code: true" in line, line
    assert not marker.exists() and not (tmp_path / "g").exists()

    spec = _path_spec(tmp_path, folder, trust=True)
    out = tmp_path / "reports"
    result = cli("check", spec, "--backend", "cpu", "--against", "cpu", "--json",
                 out / "r.json", "--html", out / "r.html", "--markdown", out / "r.md", env=env)
    assert result.rc == 0, result.text
    assert marker.read_text() == "model code ran"
    run = load_json(out / "r.json")["runs"][0]
    assert run["candidate"]["trust_remote_code"] and run["reference"]["trust_remote_code"]
    assert "trust_remote_code" in result.out
    assert "trust_remote_code" in (out / "r.html").read_text()
    assert "trust_remote_code" in (out / "r.md").read_text().replace("\\_", "_")


# -- a full run on hostile text: escaping and write confinement ------------------------

HOSTILE = f"""\
specengine: 1
name: tiny-hostile
description: "<script>alert('d')</script> \\e[2J"
{MODEL}defaults:
  max_new_tokens: 8
cases:
  - id: script
    prompt: "<script>alert(1)</script></textarea>\\"><img src=x onerror=alert(2)>"
    expect: {{contains: "<script>alert(3)</script>"}}
  - id: controls
    prompt: "bell\\a esc\\e[31mred\\e[0m nul\\0 cr\\r del\\x7f c1\\x9b ]]> <![CDATA[ & ]]> |pipe|"
  - id: long-line
    prompt: "{LONG}"
  - id: chat
    messages: [{{role: user, content: "</script><script>alert(4)</script>"}}]
    expect: {{regex: "<b>(bold)</b>"}}
"""

RAW = ["<script>alert", "<img src=x", "</textarea>", "<b>(bold)"]
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _snapshot(root: Path, skip: tuple[str, ...]) -> dict:
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        st = path.lstat()
        out[str(rel)] = (st.st_size, st.st_mtime_ns, path.is_dir())
    return out


def test_hostile_text_is_escaped_in_every_report_and_nothing_is_written_elsewhere(tmp_path):
    work = tmp_path / "work"
    spec = write_spec(work / "specs" / "hostile.yaml", HOSTILE)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / "hf"),
           "SPECENGINE_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    # the golden is recorded before the hostile expectations are added (a reference that
    # fails its own expectations is refused as a golden); expectations are not part of a
    # case's golden hash, so the golden stays valid and the candidate fails them
    plain = "\n".join(line for line in HOSTILE.splitlines() if "expect:" not in line) + "\n"
    write_spec(work / "specs" / "hostile.yaml", plain)
    assert cli("record-golden", spec, "--golden-dir", tmp_path / "golden", cwd=work,
               env=dict(env, TMPDIR=str(tmp_path / "cache"))).rc == 0
    write_spec(work / "specs" / "hostile.yaml", HOSTILE)
    before = _snapshot(tmp_path, skip=("golden", "cache", "reports", "tmp"))
    out = tmp_path / "reports"
    # the main job in one process: the golden is there, check, write every report
    result = cli("run", spec, "--backend", "cpu", "--golden-dir", tmp_path / "golden",
                 "--report-dir", out, cwd=work, env=env)
    assert result.rc == 1, result.text            # the two expectations fail, nothing else
    assert "Traceback" not in result.text

    # written: the golden, the cache and the four reports; nothing else, nothing in HOME
    after = _snapshot(tmp_path, skip=("golden", "cache", "reports", "tmp"))
    assert after == before
    assert [p.name for p in (tmp_path / "golden").rglob("*") if p.is_file()] == ["cpu.json"]
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md",
                                                     "report.xml"]
    assert not list((tmp_path / "tmp").iterdir())

    # the JSON keeps the text exactly (as JSON escapes)
    runs = load_json(out / "report.json")["runs"]
    cases = {c["id"]: c for c in runs[0]["cases"]}
    assert cases["long-line"]["prompt"] == LONG
    assert "\x1b[31m" in cases["controls"]["prompt"] and "\x00" in cases["controls"]["prompt"]
    failed = {c["id"] for c in cases.values() if c["status"] == "fail"}
    assert failed == {"script", "chat"}, {c["id"]: c["status"] for c in cases.values()}

    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    xml_text = (out / "report.xml").read_text()
    for name, text in (("html", html), ("markdown", md), ("junit", xml_text),
                       ("terminal", result.out)):
        if name != "terminal":                      # plain text there: only controls matter
            for raw in RAW:
                assert raw not in text, (name, raw)
        assert not CONTROL.search(text), (name, CONTROL.search(text))
    assert "&lt;script&gt;alert(1)" in html and "&lt;script&gt;alert(3)" in html
    suite = ET.fromstring(xml_text)                 # well-formed XML despite ]]> and controls
    messages = " ".join(f.get("message", "") + (f.text or "") for f in suite.iter("failure"))
    assert "<script>alert(3)</script>" in messages  # escaped in the file, intact when parsed
    longest = {name: max(len(line) for line in text.splitlines())
               for name, text in (("markdown", md), ("junit", xml_text), ("terminal", result.out))}
    FIGURES["longest line with a 4 KB one-line prompt"] = ", ".join(
        f"{k} {v} chars" for k, v in longest.items())
    assert longest["terminal"] < 400


# -- tampered goldens through the command line -----------------------------------------

@pytest.fixture(scope="module")
def recorded_tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered-cli")
    spec = _tiny_spec(root)
    other = write_spec(root / "other.yaml", spec.read_text().replace("name: tiny-hostile",
                                                                     "name: other-spec"))
    gdir = root / "golden"
    for s in (spec, other):
        assert run_cli("record-golden", s, "--golden-dir", gdir).rc == 0
    return spec, gdir, (gdir / "tiny-hostile" / "cpu.json").read_text()


def _edit_number(text: str) -> str:
    return re.sub(r'"logprobs": \[-(\d)', lambda m: f'"logprobs": [-{(int(m.group(1)) + 1) % 10}',
                  text, count=1)


TAMPER = {
    "truncated": (lambda t, g: t[: len(t) // 3], "corrupted or truncated"),
    "empty": (lambda t, g: "", "corrupted or truncated"),
    "binary": (lambda t, g: "\x00\x01\xff garbage", "corrupted"),
    "hand-edited": (lambda t, g: _edit_number(t), "edited by hand"),
    "format": (lambda t, g: t.replace('"format": 1', '"format": 2'), "has format 2"),
    "no-format": (lambda t, g: t.replace('"format": 1,', ''), "has format None"),
    "list": (lambda t, g: "[]", "not a JSON object"),
    "deep": (lambda t, g: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "other-spec": (lambda t, g: (g / "other-spec" / "cpu.json").read_text(),
                   "belongs to spec 'other-spec', not 'tiny-hostile'"),
}


@pytest.mark.parametrize("kind", sorted(TAMPER))
def test_tampered_golden_is_exit_2_naming_the_problem(recorded_tiny, tmp_path, kind):
    spec, gdir, original = recorded_tiny
    mutate, fragment = TAMPER[kind]
    target = tmp_path / "golden" / "tiny-hostile" / "cpu.json"
    target.parent.mkdir(parents=True)
    text = mutate(original, gdir)
    target.write_bytes(text.encode("utf-8", "surrogateescape") if kind != "binary"
                       else b"\x00\x01\xff garbage")
    before = target.read_bytes()
    for command in (["check", spec, "--backend", "cpu"], ["run", spec, "--backend", "cpu",
                                                          "--report-dir", tmp_path / "r"]):
        line = assert_clean_error(run_cli(*command, "--golden-dir", tmp_path / "golden"), 2)
        assert str(target) in line and fragment in line, line
    assert target.read_bytes() == before             # never rewritten by check or run
    # `run` still writes its reports: the spec is an error row naming the problem
    runs = json.loads((tmp_path / "r" / "report.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["error"] and not runs[0]["cases"]
    assert fragment in runs[0]["error"]


def test_golden_of_another_model_is_exit_2(recorded_tiny, tmp_path):
    spec, gdir, original = recorded_tiny
    changed = write_spec(tmp_path / "tiny.yaml", spec.read_text().replace("seed: 3", "seed: 4"))
    line = assert_clean_error(run_cli("check", changed, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "recorded from another model" in line and "--update" in line


def test_unreadable_golden_is_exit_2(recorded_tiny, monkeypatch):
    spec, gdir, _ = recorded_tiny
    real = os.open

    def deny(path, *args, **kwargs):
        if Path(path).name == "cpu.json":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    line = assert_clean_error(run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir), 2)
    assert "cannot read golden" in line and "Permission denied" in line


def test_source_has_no_pickle_and_no_code_execution_paths():
    """Grep the engine and backends: no pickle-family module, torch.load only with
    weights_only=True, numpy loads without pickles, YAML only through the safe/round-trip
    loaders, no eval/exec/shell, remote code never forced on."""
    problems = []
    forbidden = [
        (r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|shelve|marshal)\b", "pickle-family import"),
        (r"allow_pickle\s*=\s*True", "numpy pickle"),
        (r"yaml\.(unsafe_load|full_load)|\b(UnsafeLoader|FullLoader)\b|Loader\s*=\s*yaml\.Loader",
         "unsafe YAML loader"),
        (r"YAML\(\s*typ\s*=\s*['\"](unsafe|full|base)['\"]", "unsafe ruamel loader"),
        (r"(?<![.\w])(eval|exec)\(", "eval/exec"),
        (r"shell\s*=\s*True|os\.system\(|os\.popen\(", "shell"),
        (r"trust_remote_code\s*=\s*True", "remote code forced on"),
    ]
    for folder in ("engine", "backends"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text("utf-8")
            for pattern, what in forbidden:
                for m in re.finditer(pattern, text, re.M):
                    problems.append(f"{path.relative_to(REPO)}: {what}: {m.group(0)!r}")
            for m in re.finditer(r"(torch|np|numpy)\.load\(", text):
                call = text[m.start(): text.find(")", m.end()) + 1]
                need = "weights_only=True" if m.group(1) == "torch" else "allow_pickle=False"
                if need not in call:
                    problems.append(f"{path.relative_to(REPO)}: {m.group(0)} without {need}")
    assert not problems, problems
    models = (REPO / "backends" / "torch" / "models.py").read_text()
    assert "weights_only=True" in models      # from_pretrained never unpickles objects
