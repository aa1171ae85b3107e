"""`specengine init MODEL_DIR`: a starter spec for a local model folder.

The spec is written as commented YAML text (not dumped from data) so that it teaches the
format: the editor-schema line at the top, the model source, the default tolerances
spelled out, a few cases in English, Chinese and code, and a chat case when the
tokenizer has a chat template. Expectations are left as comments: a starter spec must
pass `record-golden` + `check` on any model, and what a model should answer is the
user's call once they have seen the reference output.

What is read from MODEL_DIR (nothing is imported or loaded): `config.json`
(architectures, model_type, vocab_size, auto_map), the tokenizer files, the chat
template (`chat_template.jinja`, `chat_template.json`, or `chat_template` in
`tokenizer_config.json`), or a `.gguf` file when the folder holds one and no config.
The generated text is validated with the same loader as `specengine validate` before
it is written; an existing file is only replaced with `--force`.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from specengine.compare.tolerances import DEFAULTS, EMBEDDING_DEFAULTS
from specengine.errors import ModelSourceError, UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "tokenizer_config.json", "spiece.model")
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
BYTES_VOCAB_MIN = 259            # the byte tokenizer uses ids 0..258

PROMPTS = [  # id, prompt, tags
    ("capital-fr", "The capital of France is", ["english", "facts"]),
    ("counting", "1, 2, 3, 4, 5,", ["english"]),
    ("capital-zh", "法国的首都是", ["chinese"]),
    ("python-fn", 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n', ["code"]),
]
CHAT = ("add-chat", "What is 2 + 3? Answer with just the number.", '"5"')
TEXTS = ["The capital of France is Paris.", "法国的首都是巴黎。",
         "def add(a, b):\n    return a + b"]


def spec_name(folder: Path | str) -> str:
    """A valid spec name from a name: lower case, [a-z0-9._-] only."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(str(folder)).name.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-._")
    return name[:100] or "model"


# folder names that say nothing about the model inside
GENERIC_NAMES = {"model", "models", "weights", "checkpoint", "checkpoints", "hf", "snapshot",
                 "snapshots", "main", "latest", "final", "export", "output", "base"}


def model_name(info: "ModelInfo") -> str:
    """The spec's default name, after the model: a GGUF file's name; else the folder's,
    unless the folder is named generically (`model`, `weights`, ...), in which case the
    name the config was saved from (`_name_or_path`), else the folder above."""
    if info.gguf:
        return spec_name(Path(info.gguf).stem)
    folder = info.folder.resolve()
    if folder.name.lower() not in GENERIC_NAMES:
        return spec_name(folder)
    saved = str(info.config.get("_name_or_path") or "").rstrip("/")
    if saved and "/" not in saved.split("/")[-1]:
        name = spec_name(saved.split("/")[-1])
        if name != "model" and name not in GENERIC_NAMES:
            return name
    return spec_name(folder.parent)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelSourceError(f"{path}: cannot read it as JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


def has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    return bool(_read_json(folder / "tokenizer_config.json").get("chat_template"))


GGUF_CHAT_KEY = b"tokenizer.chat_template"
GGUF_SCAN_BYTES = 256 << 20     # the key/value metadata sits before the tensor data


def gguf_has_chat_template(path: Path) -> bool:
    """Whether a GGUF file's metadata holds a chat template (the `tokenizer.chat_template`
    key), found by scanning the metadata bytes; no GGUF library is imported."""
    if not path.is_file():
        return False
    tail = b""
    read = 0
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            return False
        while read < GGUF_SCAN_BYTES:
            chunk = fh.read(1 << 20)
            if not chunk:
                return False
            if GGUF_CHAT_KEY in tail + chunk:
                return True
            tail = chunk[-len(GGUF_CHAT_KEY):]
            read += len(chunk)
    return False


class ModelInfo:
    """What init needs to know about MODEL_DIR."""

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise ModelSourceError(f"model folder not found: {folder}")
        self.folder = folder
        self.config = _read_json(folder / "config.json")
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        self.gguf = ggufs[0] if ggufs and not self.config else None
        self.other_ggufs = ggufs[1:] if self.gguf else []
        if not self.config and not self.gguf:
            raise ModelSourceError(f"{folder} is not a Hugging Face model folder (no "
                                   "config.json) and holds no .gguf file")
        self.architectures = [str(a) for a in self.config.get("architectures") or []]
        self.model_type = str(self.config.get("model_type", ""))
        self.remote_code = "auto_map" in self.config
        self.has_tokenizer = self.gguf is not None or any(
            (folder / f).is_file() for f in TOKENIZER_FILES)
        self.chat = self.has_tokenizer and (gguf_has_chat_template(folder / self.gguf)
                                            if self.gguf else has_chat_template(folder))
        vocab = self.config.get("vocab_size") or (self.config.get("text_config") or {}).get(
            "vocab_size")
        self.vocab_size = vocab if isinstance(vocab, int) else None

    @property
    def kind(self) -> str:
        if self.gguf or not self.architectures:
            return "causal-lm"
        if any(a.endswith(CAUSAL_SUFFIXES) for a in self.architectures):
            return "causal-lm"
        return "embedding"

    def describe(self) -> str:
        what = ", ".join(self.architectures) or self.model_type or "a GGUF model"
        return f"{what} in {self.folder.name}"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def _path_for(folder: Path, spec_dir: Path) -> str:
    """The model path as written in the spec: `pkg://PACKAGE/sub` for a folder inside an
    installed package (it holds on every machine that installs the package), relative to
    the spec's folder when the model is inside the current project, else absolute."""
    from specengine.loading.sources import package_url

    url = package_url(folder)
    if url:
        return url
    folder = folder.resolve()
    try:
        folder.relative_to(Path.cwd().resolve())
    except ValueError:
        return folder.as_posix()
    return Path(os.path.relpath(folder, spec_dir.resolve())).as_posix()


def _schema_ref(spec_dir: Path) -> str:
    """The editor-schema path: a schemas/spec.schema.json in a parent folder (a
    specengine checkout, or one vendored with `specengine schema`), else the installed
    package's copy."""
    here = spec_dir.resolve()
    for parent in (here, *here.parents):
        candidate = parent / "schemas" / "spec.schema.json"
        if candidate.is_file():
            return Path(os.path.relpath(candidate, here)).as_posix()
    # the installed package's copy, relative to the spec (a virtualenv in the project
    # gives a short, portable path such as ../.venv/lib/.../spec.schema.json)
    installed = Path(str(resources.files("specengine.schemas").joinpath("spec.schema.json")))
    return Path(os.path.relpath(installed.resolve(), here)).as_posix()


def render(info: ModelInfo, name: str, spec_path: Path) -> str:
    spec_dir = spec_path.parent
    path = _path_for(info.folder, spec_dir)
    shown = spec_path.as_posix()
    out = [f"# yaml-language-server: $schema={_schema_ref(spec_dir)}",
           f"# Starter spec written by `specengine init` for {info.describe()}.",
           f"# Next: specengine record-golden {shown}   (the golden, on the reference)",
           f"#       specengine check {shown} --backend cpu-bf16   (or npu, cuda, ...)",
           "# Every key is documented in the schema (`specengine schema`).",
           "specengine: 1",
           f"name: {name}",
           f"description: {_q('Starter spec for ' + info.describe())}",
           "model:"]
    if info.gguf:
        out += ["  gguf:",
                f"    path: {_q(path)}   # ${{VAR}} / ${{VAR:-default}} are expanded",
                f"    file: {_q(info.gguf)}"]
        if info.other_ggufs:
            out.append(f"    # other .gguf files here: {', '.join(info.other_ggufs)}")
    else:
        out.append(f"  path: {_q(path)}   # ${{VAR}} / ${{VAR:-default}} are expanded")
    if info.kind == "embedding":
        out.append("  kind: embedding")
    if not info.has_tokenizer:
        out.append("  tokenizer: bytes      # no tokenizer files in the folder: the built-in "
                   "byte tokenizer")
    if info.remote_code:
        out.append("  # this model ships its own code (config.json auto_map): set true only "
                   "if you trust it")
    out += ["  trust_remote_code: false",
            "reference: cpu          # the backend whose outputs become the golden"]
    out += _causal_body(info) if info.kind == "causal-lm" else _embedding_body()
    return "\n".join(out) + "\n"


def _causal_body(info: ModelInfo) -> list[str]:
    out = ["defaults:",
           "  max_new_tokens: 16",
           "  top_k: 10",
           *class_defaults_comment(DEFAULTS),
           "  determinism: {runs: 2}",
           "cases:"]
    for cid, prompt, tags in PROMPTS:
        out += [f"  - id: {cid}",
                f"    prompt: {_q(prompt)}",
                f"    tags: [{', '.join(tags)}]"]
        if cid == "capital-fr":
            out.append('    # expect: {contains: "Paris"}   # once the reference answers it')
    if info.chat:
        cid, content, answer = CHAT
        out += [f"  - id: {cid}",
                f"    messages: [{{role: user, content: {_q(content)}}}]",
                "    tags: [chat]",
                f"    # expect: {{contains: {answer}}}"]
    return out


def class_defaults_comment(by_class: dict) -> list[str]:
    """The limits a new spec is judged by, per numeric class, as comments: nothing is
    pinned, so every comparison gets its own class's defaults until the user calibrates
    (calibrate --write writes the block of the class it measured)."""
    out = ["  # No tolerance is pinned: each comparison is judged by the defaults of its numeric",
           "  # class (the coarser side's: float32, half = bf16/fp16, quantized) until you run",
           "  # `specengine calibrate SPEC --backend B --write`, which writes the block of the",
           "  # class it measured. The class defaults, for reference:",
           "  # tolerance:"]
    for klass, tol in by_class.items():
        values = ", ".join(f"{k}: {v:g}" for k, v in tol.as_dict().items()
                           if v is not None and k not in ("within_top_k", "max_margin"))
        if hasattr(tol, "within_top_k"):
            values += (f", divergence: {{within_top_k: {tol.within_top_k}, "
                       f"max_margin: {tol.max_margin:g}}}")
        out.append(f"  #   {klass}: {{{values}}}")
    return out


def _embedding_body() -> list[str]:
    out = ["defaults:",
           *class_defaults_comment(EMBEDDING_DEFAULTS),
           "  determinism: {runs: 2}",
           "cases:",
           "  - id: mixed",
           "    texts:"]
    out += [f"      - {_q(t)}" for t in TEXTS]
    out.append("    tags: [text]")
    return out


def init_spec(model_dir: str | os.PathLike, output: str | os.PathLike | None = None,
              name: str | None = None, force: bool = False):
    """Write the starter spec; returns (path, the loaded Spec)."""
    from specengine.files import atomic_write_text
    from specengine.spec import parse_spec

    info = ModelInfo(Path(model_dir))
    if info.has_tokenizer is False and info.kind == "causal-lm" and (
            info.vocab_size is not None and info.vocab_size < BYTES_VOCAB_MIN):
        raise ModelSourceError(f"{info.folder} has no tokenizer files and a vocabulary of "
                               f"{info.vocab_size} ids, too small for the byte tokenizer "
                               f"(needs {BYTES_VOCAB_MIN}); add the model's tokenizer files")
    name = name or model_name(info)
    path = Path(output) if output else Path("specs") / f"{name}.yaml"
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; pass --force to overwrite it")
    if path.suffix not in (".yaml", ".yml"):
        raise UsageError(f"{path}: a spec file ends in .yaml or .yml")
    text = render(info, name, path)
    spec = parse_spec(text, str(path), base_dir=path.parent)   # SpecError (exit 2) if not
    atomic_write_text(path, text)
    return path, spec
