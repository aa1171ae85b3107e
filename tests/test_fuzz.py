"""Spec fuzzing: mutated valid specs and arbitrary YAML never crash the gate.

Every input ends as exit 0 (`ok ...`) or exit 2 with exactly one line on stderr that
names the file (and, where the problem has a place, its line:col), without control
characters and without a traceback; nothing in an input is executed. The fast YAML path
(libyaml) is checked against the reference path (ruamel) on every generated document.
Inputs are generated deterministically (derandomized hypothesis; set
SPECENGINE_FUZZ_EXAMPLES to try more); the counts are printed in the terminal summary.
"""

from __future__ import annotations

import copy
import io
import math
import os
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_backend import publish_figures, run_cli
from helpers import TINY_MODEL, assert_clean_error, cli
from specengine.errors import SpecError
from specengine.spec.yamlio import _Builder, _compose_fast, _load_ruamel, Located, load_yaml

# hypothesis misreads yaml_trees' extend function as not recursing (it does: depths 0-5)
pytestmark = pytest.mark.filterwarnings("ignore:extend=.*doesn't use it's argument")

EXAMPLES = int(os.environ.get("SPECENGINE_FUZZ_EXAMPLES", "250"))
COUNTS: Counter = Counter()
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MARKER = "/tmp/specengine-fuzz-PWNED"

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much])

BASE = {
    "specengine": 1, "name": "fuzz-spec", "description": "a spec to mutate",
    "model": {"synthetic": {"model_type": "llama", "seed": 3, "init_std": 0.4,
                            "config": {"hidden_size": 32, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "vocab_size": 300}},
              "kind": "causal-lm", "trust_remote_code": False},
    "reference": "cpu",
    "defaults": {"max_new_tokens": 6, "top_k": 10, "timeout_s": 30,
                 "tolerance": {"half": {"kl_mean_max": 0.01, "kl_max": 0.05,
                                        "top1_agreement_min": 0.9, "logprob_atol": 0.5,
                                        "divergence": {"within_top_k": 5, "max_margin": 0.5}},
                               "float32": {"kl_mean_max": {"noise": 3, "floor": 1e-5}}},
                 "determinism": {"runs": 2, "batch_sizes": [1, 2]}},
    "backends": {"mine": {"runtime": "torch", "device": "cpu", "dtype": "bfloat16"}},
    "cases": [{"id": "a", "prompt": "Hello", "expect": {"contains": "x"}, "tags": ["t"]},
              {"id": "b", "messages": [{"role": "user", "content": "hi"}],
               "tolerance": {"half": {"kl_max": 0.3}}, "max_new_tokens": 4}],
    "perf": {"warmup": 1, "runs": 2, "batch_sizes": [1],
             "budgets": {"cpu": {"ttft_ms": {"p50": 200}}}},
}

NASTY = ["../../etc", "..", ".", "${HOME}", "${NOPE_UNSET}", "$(touch " + MARKER + ")",
         "`touch " + MARKER + "`", "<script>alert(1)</script>", "", "\x1b[31mred", "\r\n",
         "cpu", "cpu-bf16", "npu", "torch", "onnx", "test-fault", "llama", "-1", "1e400",
         "a" * 300, "ü€😀", "!!python/object", "*alias", "&anchor", "~", "null", "yes",
         "0x1F", "0o17", "2001-12-14", ".nan", "=", "<<", "[", "{a: 1}", "- x"]

weird = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1, 2),
    st.text(max_size=20), st.sampled_from(NASTY),
    st.lists(st.integers(-2, 9), max_size=3),
    st.dictionaries(st.sampled_from(["id", "prompt", "x", "runtime", "p50", "kl_max"]),
                    st.integers(-1, 3), max_size=2),
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, prefix + (i,))


def _get(doc, path):
    for part in path:
        doc = doc[part]
    return doc


def _mutate(doc, draw):
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return
    path = draw(st.sampled_from(paths))
    parent, last = _get(doc, path[:-1]), path[-1]
    op = draw(st.sampled_from(["delete", "replace", "replace", "rename", "add", "dup",
                               "wrap", "empty", "tweak", "tweak", "tweak"]))
    value = parent[last]
    if op == "tweak":        # a plausible value of the same type: often still a valid spec
        if isinstance(value, bool):
            parent[last] = not value
        elif isinstance(value, int):
            parent[last] = draw(st.integers(0, 12))
        elif isinstance(value, float):
            parent[last] = draw(st.floats(0, 1))
        elif isinstance(value, str):
            parent[last] = draw(st.one_of(st.text(max_size=20),
                                          st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True)))
        elif isinstance(value, list) and value:
            del value[draw(st.integers(0, len(value) - 1))]
    elif op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = draw(weird)
    elif op == "rename" and isinstance(parent, dict):
        parent[draw(st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=12)))] = \
            parent.pop(last)
    elif op == "add" and isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=12))] = draw(weird)
    elif op == "dup" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif op == "wrap":
        parent[last] = [parent[last]]
    else:
        parent[last] = type(parent[last])() if isinstance(parent[last], (dict, list, str)) else None


def _dump(doc, flow: bool) -> str:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = flow
    yaml.allow_unicode = True
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


def _text_mutation(text: str, draw) -> str:
    op = draw(st.sampled_from(["none"] * 6 + ["truncate", "insert", "drop-line", "dup-line",
                                              "indent", "tag"]))
    lines = text.splitlines(keepends=True)
    if op == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    if op == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(list(":-[]{}#&*!|>'\"%@`\t\n?,") +
                                                ["!!python/object/apply:os.system [x] "])) + text[at:]
    if lines and op in ("drop-line", "dup-line", "indent", "tag"):
        i = draw(st.integers(0, len(lines) - 1))
        if op == "drop-line":
            del lines[i]
        elif op == "dup-line":
            lines.insert(i, lines[i])
        elif op == "indent":
            lines[i] = "  " + lines[i]
        else:
            lines[i] = re.sub(r":( |$)", f": !!python/object/apply:os.system ['touch {MARKER}'] ",
                              lines[i], count=1)
        return "".join(lines)
    return text


@pytest.fixture(scope="module", autouse=True)
def _figures(request):
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    yield
    assert not os.path.exists(MARKER), "a fuzzed spec executed a command"
    publish_figures(request.config, "fuzz", {
        "mutated specs validated in-process": _summary("mutated"),
        "arbitrary YAML documents validated in-process": _summary("arbitrary"),
        "documents parsed by both YAML paths (libyaml vs ruamel)": _summary("differential"),
        "specs validated by the console script": _summary("subprocess"),
        "synthetic model configs recorded": _summary("record"),
        "tampered goldens loaded": _summary("golden"),
        "checks against tampered goldens (hash recomputed)": _summary("check"),
        "tampered results files re-rendered": _summary("results"),
    })


def _summary(kind: str) -> str:
    total = COUNTS[kind]
    parts = [f"{COUNTS[k]} {k.split(':', 1)[1]}" for k in sorted(COUNTS)
             if k.startswith(kind + ":")]
    return f"{total} inputs ({', '.join(parts)})"


def _check_validate(path, text: str, kind: str) -> None:
    """validate: exit 0 with `ok`, or exit 2 with one clean line naming the file."""
    path.write_text(text, encoding="utf-8")
    COUNTS[kind] += 1
    result = run_cli("validate", path)
    assert result.rc in (0, 2), (result.rc, result.text, text)
    if result.rc == 0:
        assert result.out.startswith(f"ok {path} (") and not result.err, result.text
        COUNTS[f"{kind}:valid"] += 1
        return
    for line in _error_lines(result):
        assert line.startswith(str(path)), (line, text)
        assert not CONTROL.search(line), line
        where = re.match(re.escape(str(path)) + r":(\d+):(\d+): ", line)
        if where:
            assert 1 <= int(where.group(1)) <= text.count("\n") + 2, (line, text)
    COUNTS[f"{kind}:refused"] += 1


def _error_lines(result) -> list[str]:
    """validate lists every error of a file, one per line on stderr (at least one), and
    a summary line on stdout; no traceback."""
    assert result.rc == 2 and "Traceback" not in result.text, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines, result.text
    return lines


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "spec.yaml"


def test_base_spec_is_valid(spec_file):
    _check_validate(spec_file, _dump(BASE, flow=False), "mutated")
    assert COUNTS["mutated:valid"] == 1


@FUZZ
@given(data=st.data())
def test_mutated_specs_validate_or_fail_cleanly(spec_file, data):
    doc = copy.deepcopy(BASE)
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 3, 4]))):
        _mutate(doc, data.draw)
    text = _text_mutation(_dump(doc, flow=data.draw(st.booleans())), data.draw)
    _check_validate(spec_file, text, "mutated")


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                         st.text(max_size=15), st.sampled_from(NASTY))
yaml_trees = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(NASTY)), inner, max_size=4)),
    max_leaves=20)
yaml_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(list("ab:- \n[]{},#&*!|>'\"%?\t@`~.0x\\") + [
        "!!str ", "!!python/name:os.system ", "&a ", "*a ", "<<: ", "\n  ", "\n- ", "key: "]),
        max_size=80).map("".join),
)


@FUZZ
@given(data=st.data())
def test_arbitrary_yaml_validates_or_fails_cleanly(spec_file, data):
    if data.draw(st.booleans()):
        text = data.draw(yaml_texts)
    else:
        text = _text_mutation(_dump(data.draw(yaml_trees), data.draw(st.booleans())), data.draw)
    _check_validate(spec_file, text, "arbitrary")


def _canon(value):
    """Comparable form (NaN equals NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return (type(value).__name__, value)


@FUZZ
@given(data=st.data())
def test_fast_yaml_path_agrees_with_the_reference_path(data):
    """Whenever libyaml's composition is accepted, ruamel accepts the document too and
    gives the same values, types and positions."""
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        text = data.draw(yaml_texts)
    else:
        tree = data.draw(yaml_trees) if choice == 1 else copy.deepcopy(BASE)
        text = _text_mutation(_dump(tree, data.draw(st.booleans())), data.draw)
    COUNTS["differential"] += 1
    root = _compose_fast(text)
    fast = None
    if root is not None:
        fast = Located(None, "f")
        try:
            fast.data = _Builder(fast).build(root, ())
        except SpecError:
            fast = None
    try:
        ref = _load_ruamel(text, "f")
    except SpecError:
        ref = None
    if fast is None:
        COUNTS["differential:left to ruamel"] += 1
        return
    assert ref is not None, ("libyaml accepted what ruamel refuses", text)
    assert _canon(fast.data) == _canon(ref.data), text
    assert fast.keys == ref.keys, text
    # an empty value (`key:` then nothing) has no token: libyaml places it after its key,
    # ruamel at the next token; every other position is identical
    moved = {path for path in set(fast.values) | set(ref.values)
             if fast.values.get(path) != ref.values.get(path)}
    assert all(path in ref.values and _get(ref.data, path) is None for path in moved), text
    COUNTS["differential:identical" if not moved else "differential:identical but an empty value's position"] += 1


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_console_script_on_broken_specs(tmp_path_factory, data):
    doc = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(doc, data.draw)
    text = _text_mutation(_dump(doc, data.draw(st.booleans())), data.draw)
    path = tmp_path_factory.mktemp("cli") / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    COUNTS["subprocess"] += 1
    result = cli("validate", path)
    assert "Traceback" not in result.text
    if result.rc == 0:
        COUNTS["subprocess:valid"] += 1
        return
    for line in _error_lines(result):
        assert line.startswith(str(path)) and not CONTROL.search(line), line
    COUNTS["subprocess:refused"] += 1


CONFIG_VALUES = st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 5, 7, 33, 1.5, "x", None, True,
                                           [], {}, -0.5]), st.integers(-2, 40))


@settings(max_examples=int(os.environ.get("SPECENGINE_FUZZ_RECORDS", "8")), deadline=None,
          derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_synthetic_models_record_or_fail_cleanly(tmp_path_factory, data):
    """A spec that validates but whose synthetic config cannot be built or run: exit 2
    (bad config) or 3 (the backend fails on it), one line; never a traceback."""
    root = tmp_path_factory.mktemp("rec")
    config = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 300,
              "max_position_embeddings": 64}
    key = data.draw(st.sampled_from(sorted(config) + ["rope_theta", "head_dim", "bogus"]))
    config[key] = data.draw(CONFIG_VALUES)
    doc = {"specengine": 1, "name": "fuzz-record",
           "model": {"synthetic": {"model_type": data.draw(st.sampled_from(
               ["llama", "llama", "qwen2", "nosuchtype"])), "seed": 1, "config": config}},
           "defaults": {"max_new_tokens": 2, "determinism": {"runs": 1}},
           "cases": [{"id": "a", "prompt": "hi"}]}
    spec = root / "spec.yaml"
    spec.write_text(_dump(doc, flow=False))
    COUNTS["record"] += 1
    saved = os.environ.get("SPECENGINE_CACHE")
    os.environ["SPECENGINE_CACHE"] = str(root / "cache")     # keep the user's cache clean
    try:
        result = run_cli("record-golden", spec, "--golden-dir", root / "g")
    finally:
        if saved is None:
            del os.environ["SPECENGINE_CACHE"]
        else:
            os.environ["SPECENGINE_CACHE"] = saved
    assert result.rc in (0, 2, 3), result.text
    if result.rc:
        line = assert_clean_error(result, result.rc)
        assert not CONTROL.search(line)
        assert not (root / "g").exists()
    COUNTS[f"record:exit {result.rc}"] += 1


# -- tampered goldens ----------------------------------------------------------------

GOLDEN_SPEC = """\
specengine: 1
name: fuzz-golden
""" + TINY_MODEL + """defaults:
  max_new_tokens: 4
  determinism: {runs: 1}
cases:
  - id: a
    prompt: "Hello there"
  - id: b
    messages: [{role: user, content: "hi"}]
"""


@pytest.fixture(scope="module")
def golden_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden-fuzz")
    spec = root / "spec.yaml"
    spec.write_text(GOLDEN_SPEC)
    assert run_cli("record-golden", spec, "--golden-dir", root / "g").rc == 0
    path = root / "g" / "fuzz-golden" / "cpu.json"
    return spec, root / "g", path, path.read_text()


@FUZZ
@given(data=st.data())
def test_tampered_goldens_are_refused_cleanly(golden_setup, data):
    """Mutated goldens (with the content hash recomputed, as a tamperer would, or not;
    or cut and flipped as bytes): loading gives the golden or a GoldenError naming the
    file, never another exception."""
    import json

    from specengine.errors import GoldenError
    from specengine.golden.store import content_hash, dumps
    from specengine.kinds.causal_lm.golden import load_golden

    spec, gdir, path, original = golden_setup
    target = path.parent / "tampered.json"
    doc = json.loads(original)
    mode = data.draw(st.sampled_from(["rehash", "rehash", "plain", "bytes"]))
    if mode == "bytes":
        raw = bytearray(original.encode())
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        text = bytes(raw[:data.draw(st.integers(1, len(raw)))]).decode("utf-8", "surrogateescape")
        target.write_bytes(text.encode("utf-8", "surrogateescape"))
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            _mutate(doc, data.draw)
        if mode == "rehash" and isinstance(doc, dict):
            doc["content_sha256"] = content_hash(doc)
        try:
            target.write_text(dumps(doc) if isinstance(doc, dict) else json.dumps(doc))
        except (TypeError, ValueError):
            return
    COUNTS["golden"] += 1
    try:
        load_golden(target, "fuzz-golden")
        COUNTS["golden:loaded"] += 1
    except GoldenError as exc:
        assert str(target) in str(exc) and "\n" not in exc.one_line()
        COUNTS["golden:refused"] += 1


@settings(max_examples=int(os.environ.get("SPECENGINE_FUZZ_CHECKS", "20")), deadline=None,
          derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_check_against_tampered_goldens_exits_cleanly(golden_setup, tmp_path_factory, data):
    """`check` against a golden whose values were changed and whose hash was recomputed:
    exit 0/1 (judged), 2 (refused) or 3, with one line on error; never a traceback."""
    import json

    from specengine.golden.store import content_hash, dumps

    spec, _, path, original = golden_setup
    doc = json.loads(original)
    case = doc["cases"][data.draw(st.sampled_from(["a", "b"]))]
    field = data.draw(st.sampled_from(["output_ids", "prompt_ids", "steps.ids",
                                       "steps.logprobs", "steps.tail", "steps.drop",
                                       "output_text", "prompt"]))
    value = data.draw(st.one_of(st.integers(0, 2**40), st.integers(0, 400),
                                st.floats(-1e9, 0), st.text(max_size=5)))
    if field == "steps.drop" and case["steps"]:
        case["steps"].pop()
        case["output_ids"].pop()
    elif field.startswith("steps.") and case["steps"]:
        step = case["steps"][data.draw(st.integers(0, len(case["steps"]) - 1))]
        key = field.split(".")[1]
        if key == "tail":
            step["tail"] = value if isinstance(value, (int, float)) else None
        elif step[key]:
            step[key][data.draw(st.integers(0, len(step[key]) - 1))] = value
    elif field in ("output_ids", "prompt_ids") and case[field]:
        case[field][data.draw(st.integers(0, len(case[field]) - 1))] = value
    elif field in ("output_text", "prompt"):
        case[field] = str(value)
    doc["content_sha256"] = content_hash(doc)
    gdir = tmp_path_factory.mktemp("tampered")
    (gdir / "fuzz-golden").mkdir()
    (gdir / "fuzz-golden" / "cpu.json").write_text(dumps(doc))
    COUNTS["check"] += 1
    result = run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir)
    assert result.rc in (0, 1, 2, 3), result.text
    if result.rc in (2, 3):
        line = assert_clean_error(result, result.rc)
        assert not CONTROL.search(line)
    COUNTS[f"check:exit {result.rc}"] += 1


@settings(FUZZ, max_examples=int(os.environ.get("SPECENGINE_FUZZ_REPORTS", "60")))
@given(data=st.data())
def test_tampered_results_files_re_render_or_fail_cleanly(golden_setup, tmp_path_factory, data):
    """`specengine report` on a mutated results JSON: re-rendered (exit 0/1/3 by the
    statuses it holds) or exit 2 with one line naming the file; never a traceback."""
    import json

    spec, gdir, path, original = golden_setup
    results = gdir.parent / "results.json"
    if not results.exists():
        assert run_cli("check", spec, "--backend", "cpu", "--golden-dir", gdir,
                       "--json", results).rc == 0
    doc = json.loads(results.read_text())
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(doc, data.draw)
    target = gdir.parent / "tampered-results.json"
    try:
        target.write_text(json.dumps(doc))
    except (TypeError, ValueError):
        return
    out = gdir.parent / "re-rendered.html"
    COUNTS["results"] += 1
    result = run_cli("report", target, "--html", out)
    assert result.rc in (0, 1, 2, 3), result.text
    if result.rc == 2:
        line = assert_clean_error(result, 2)
        assert str(target) in line and not CONTROL.search(line), line
    COUNTS[f"results:exit {result.rc}"] += 1


# -- classes that once got through: non-finite numbers, control characters, special files

def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, path + (i,))
    else:
        yield path, node


def _set(doc, path, value):
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


NUMBER_PATHS = [path for path, value in _leaves(BASE)
                if isinstance(value, (int, float)) and not isinstance(value, bool)]
BAD_NUMBERS = [".nan", ".inf", "-.inf", "1e400", "-1e400", str(2 ** 64), str(-(2 ** 64))]


@pytest.mark.parametrize("path", NUMBER_PATHS, ids=lambda p: "/".join(map(str, p)))
def test_every_number_refuses_nan_inf_and_overflow(path):
    """Every number of the base spec (tolerances, max_margin, timeout_s, seeds, sizes,
    perf numbers) replaced by NaN, ±inf or an integer past 64 bits: exit 2 at its line."""
    from specengine.spec import parse_spec

    for bad in BAD_NUMBERS:
        doc = copy.deepcopy(BASE)
        _set(doc, path, "__NUMBER__")
        text = _dump(doc, flow=False).replace("__NUMBER__", bad)
        line_no = next(i for i, line in enumerate(text.splitlines(), 1) if bad in line)
        with pytest.raises(SpecError) as info:
            parse_spec(text, "s.yaml")
        assert info.value.line == line_no, (bad, str(info.value))
        COUNTS["numbers:refused"] += 1


NAME_PATHS = [("name",), ("cases", 0, "id"), ("cases", 1, "id"), ("cases", 0, "tags", 0),
              ("backends", "mine", "device"), ("backends", "mine", "runtime"),
              ("backends", "mine", "dtype"), ("model", "synthetic", "model_type"),
              ("reference",), ("model", "kind")]
NAME_KEYS = [("backends", "mine"), ("perf", "budgets", "cpu")]
CONTROLS = ["\n", "\r", "\t", "\x1b", "\x07", "\x00", "\x7f", "\x85", "\u2028", "\x1b]0;t\x07"]


@pytest.mark.parametrize("path", NAME_PATHS + NAME_KEYS, ids=lambda p: "/".join(map(str, p)))
def test_control_characters_in_every_name_are_refused(path):
    """A control character at the end, the start or inside every name (spec name, case
    ids, tags, backend names and fields, model type, budget keys): exit 2, and the error
    line shows it escaped."""
    from specengine.spec import parse_spec

    for control in CONTROLS:
        for where in ("end", "start", "middle"):
            doc = copy.deepcopy(BASE)
            parent = doc
            for key in path[:-1]:
                parent = parent[key]
            old = path[-1] if (path in NAME_KEYS) else parent[path[-1]]
            new = {"end": old + control, "start": control + old,
                   "middle": old[:1] + control + old[1:]}[where]
            if path in NAME_KEYS:
                parent[new] = parent.pop(old)
                if path == ("backends", "mine"):
                    pass
            else:
                parent[path[-1]] = new
            text = _dump(doc, flow=False)
            with pytest.raises(SpecError) as info:
                parse_spec(text, "s.yaml")
            assert info.value.line, str(info.value)
            assert not CONTROL.search(info.value.one_line()), info.value.one_line()
            COUNTS["names:refused"] += 1


@pytest.fixture(scope="module")
def special_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("special")
    os.mkfifo(root / "fifo")
    (root / "zero").symlink_to("/dev/zero")
    (root / "random").symlink_to("/dev/urandom")
    (root / "null").symlink_to("/dev/null")
    (root / "loop").symlink_to(root / "loop")
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "dir").mkdir()
    with open(root / "sparse", "wb") as fh:
        fh.truncate(1 << 31)
    return root


SPECIAL = ["fifo", "zero", "random", "null", "loop", "dangling", "dir", "sparse"]


@pytest.mark.parametrize("name", SPECIAL)
def test_special_files_as_specs_and_goldens_are_one_line(special_files, name):
    """Each special file as a spec (validate) and as each kind of golden: exit 2 / a
    GoldenError at once, never a hang, a MemoryError or a read without bound."""
    import time

    from specengine.kinds.embedding.golden import load_embedding_golden
    from specengine.errors import GoldenError
    from specengine.kinds.causal_lm.golden import load_golden
    from specengine.kinds.ops.golden import load_ops_golden
    from specengine.kinds.causal_lm.perf_golden import load_perf_golden

    path = special_files / name
    start = time.perf_counter()
    result = run_cli("validate", path)
    assert result.rc == 2 and "Traceback" not in result.text, result.text
    COUNTS["special files:refused"] += 1
    for load in (lambda p: load_golden(p, "s"), lambda p: load_embedding_golden(p, "s"),
                 lambda p: load_ops_golden(p, "s"), lambda p: load_perf_golden(p, "s")):
        with pytest.raises(GoldenError):
            load(path)
        COUNTS["special files:refused"] += 1
    assert time.perf_counter() - start < 10
