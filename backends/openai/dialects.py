"""What one talks to behind an OpenAI-compatible URL, and how to ask it for greedy output.

A *dialect* is the family of request fields a server understands beyond the OpenAI
standard: `vllm` (vLLM, vLLM-Ascend: token-id prompts, `prompt_logprobs`, `top_k`,
`repetition_penalty`), `llamacpp` (llama.cpp's server and llama-cpp-python: `top_k`,
`min_p`, `repeat_penalty`, `mirostat`) and `openai` (standard fields only).

*Neutral sampling* is the set of settings under which temperature 0 really is greedy on
that dialect: no top-p / top-k / min-p cut, every repetition, frequency and presence
penalty off. Servers apply their own defaults to whatever a request leaves out (vLLM
takes the model's `generation_config.json`, llama-cpp-python a repeat penalty of 1.1), so
every request spells all of them out. The *server identity* is what the server says
about itself (engine, version, model file, quantization, parallelism) for reports.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from specengine.errors import UsageError

from specengine.backends.base import BackendConfig
from specengine.backends.openai.http import HttpClient, ServerDown, ServerRejected
from specengine.interp import MissingVariable, expand

DEFAULTS: dict[str, Any] = {
    "base_url": None, "model": None, "api_key_env": None, "timeout_s": 60.0, "retries": 2,
    "backoff_s": 0.5, "stream": True, "chat": True, "logprobs": True, "max_logprobs": 20,
    "dialect": "auto", "overshoot_tokens": 8, "concurrency": 8, "extra_body": {},
    "neutral_sampling": True,
}
DIALECTS = ("auto", "vllm", "llamacpp", "openai")

_STANDARD = {"temperature": 0, "top_p": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
NEUTRAL: dict[str, dict[str, Any]] = {
    "openai": dict(_STANDARD),
    # top_k -1 is "off" on every vLLM version (0 only on newer ones)
    "vllm": {**_STANDARD, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    # llama.cpp's server and llama-cpp-python: top_k <= 0 is off; the DRY / XTC /
    # top-n-sigma samplers exist on llama.cpp's own server only (others ignore them)
    "llamacpp": {**_STANDARD, "top_k": 0, "min_p": 0.0, "typical_p": 1.0,
                 "repeat_penalty": 1.0, "mirostat_mode": 0, "mirostat": 0,
                 "dry_multiplier": 0.0, "xtc_probability": 0.0, "top_n_sigma": -1.0},
}
# every field that changes which token a server picks (a neutral value is sent for each
# one the dialect knows); extra_body setting one of them is named when a check fails
SAMPLING_KEYS = set().union(*NEUTRAL.values()) | {"logit_bias", "repetition_penalty",
                                                  "repeat_last_n", "grammar", "seed"}

# what usually makes temperature 0 not greedy, per dialect (shown with a failing check)
NOT_GREEDY_CAUSES = {
    "vllm": ("a repetition / frequency / presence penalty or a top-k cut taken from the "
             "model's generation_config.json (vllm serve --generation-config auto, the "
             "default; start it with --generation-config vllm), a logits processor, or "
             "extra_body overriding the neutral settings"),
    "llamacpp": ("the server's default repeat penalty (llama-cpp-python: repeat_penalty "
                 "1.1; llama.cpp's server: --repeat-penalty), DRY / XTC samplers, a "
                 "grammar, or extra_body overriding the neutral settings"),
    "openai": ("server-side defaults for penalties (e.g. a model's generation_config.json "
               "repetition_penalty) that the standard fields cannot switch off, or "
               "extra_body overriding the neutral settings"),
}

# GGUF tensor types and other quantized formats as they appear in a model file's name
_QUANT_IN_NAME = re.compile(r"(?i)(?<![a-z0-9])(i?q[1-8]_(?:k_[sml]|k|[01]|xxs|xs|s|m|nl)|"
                            r"tq[12]_0|mxfp4|fp8|int8|int4|awq|gptq|w8a8|w4a16|bf16|f16|f32)"
                            r"(?![a-z0-9])")


def neutral_sampling(dialect: str) -> dict[str, Any]:
    """The request fields that make temperature 0 greedy on `dialect`."""
    return dict(NEUTRAL.get(dialect, NEUTRAL["openai"]))


def quantization_in_name(name: str | None) -> str | None:
    """The quantized format a model file or served name spells (e.g. 'Q4_1'), if any."""
    found = _QUANT_IN_NAME.findall(str(name or ""))
    return found[-1].upper() if found else None


def describe_sampling(sent: dict[str, Any], extra: dict[str, Any], neutral: bool) -> str:
    """One line for reports: the sampling fields every request carries."""
    fields = {**sent, **{k: v for k, v in extra.items() if k in SAMPLING_KEYS}}
    text = ", ".join(f"{k}={v}" for k, v in fields.items())
    if not neutral:
        return f"{text} only (options.neutral_sampling: false: server defaults apply)"
    changed = sorted(k for k in extra if k in SAMPLING_KEYS)
    return f"neutral: {text}" + (f" (extra_body sets {', '.join(changed)})" if changed else "")


def describe_quantization(declared: dict[str, Any] | None, dtype: str,
                          reported: str | None) -> dict[str, str]:
    """Report settings for a quantized deployment: what the spec declares, what the
    server's model name says, and a mismatch between the two (a wrong file served)."""
    out: dict[str, str] = {}
    if declared:
        out["quantization"] = ", ".join(f"{k}={v}" for k, v in declared.items())
    if reported:
        out["quantization_reported"] = f"{reported} (from the served model's name)"
        said = {str(v).lower() for v in (declared or {}).values()} | {str(dtype).lower()}
        formats = {v for v in said if quantization_in_name(v)}
        if formats and reported.lower() not in formats:
            out["quantization_mismatch"] = (f"the spec declares {', '.join(sorted(formats))} "
                                            f"but the server serves {reported}")
    return out


def _llama_cpp_facts(props: dict, facts: dict[str, str]) -> None:
    """What llama.cpp's server says of itself in /props: its build, the model file, its
    parallel slots and the sampling defaults a request would otherwise inherit."""
    if props.get("build_info"):
        facts["version"] = str(props["build_info"])
    if props.get("model_path"):
        facts["model_file"] = str(props["model_path"]).replace("\\", "/").rsplit("/", 1)[-1]
    if props.get("total_slots"):
        facts["parallel_slots"] = str(props["total_slots"])
    defaults = props.get("default_generation_settings") or {}
    params = defaults.get("params", defaults) if isinstance(defaults, dict) else {}
    shown = {k: params[k] for k in ("temperature", "top_k", "top_p", "min_p",
                                    "repeat_penalty", "dry_multiplier") if k in params}
    if shown:
        facts["sampling_defaults"] = ", ".join(f"{k}={v}" for k, v in shown.items())


def _served_by(get: Callable[[str], Any], models: list[dict], facts: dict[str, str]
               ) -> str | None:
    """The engine behind the API, from vLLM's model list, llama.cpp's /props or the
    OpenAPI title of llama-cpp-python (None when none says); `facts` gets what it tells."""
    if "vllm" in {str(m.get("owned_by", "")).lower() for m in models}:
        version = get("version")
        if isinstance(version, dict) and version.get("version"):
            facts["version"] = str(version["version"])
        for m in models:
            if m.get("max_model_len"):
                facts["max_model_len"] = str(m["max_model_len"])
        return "vllm"
    props = get("props")
    if isinstance(props, dict) and ("build_info" in props or "default_generation_settings" in props):
        _llama_cpp_facts(props, facts)
        return "llama.cpp server"
    api = get("openapi.json")
    title = str(((api or {}).get("info") or {}).get("title", "")) if isinstance(api, dict) else ""
    if "llama" in title.lower() and "python" in title.lower():
        version = (api.get("info") or {}).get("version")
        if version:
            facts["version"] = str(version)   # the package's own version
        return "llama-cpp-python"
    if title and title != "FastAPI":
        facts["api_title"] = title[:80]
    return None


def identify(client: HttpClient, models: list[dict], dialect: str) -> tuple[str, dict[str, str]]:
    """(dialect, server facts): `dialect` resolved when 'auto', and what the server says
    about itself. Each probe is one bounded GET whose failure only means 'not said'."""
    root = client.base_url.rsplit("/v1", 1)[0]
    probe = HttpClient(root, client.api_key, min(client.timeout_s, 10), 0)
    facts: dict[str, str] = {}
    names = [str(m.get("id", "")) for m in models]

    def get(path: str) -> Any:
        try:
            return probe.get_json(path)
        except (ServerDown, ServerRejected, ValueError):
            return None

    engine = _served_by(get, models, facts)
    info = get("get_server_info")   # SGLang: parallelism and quantization
    if isinstance(info, dict):
        engine = engine or "sglang"
        for key in ("tp_size", "dp_size", "pp_size", "quantization", "kv_cache_dtype", "dtype",
                    "version"):
            if info.get(key) not in (None, ""):
                facts["version" if key == "version" else key] = str(info[key])
    if engine:
        facts["engine"] = engine
    quant = quantization_in_name(facts.get("model_file")) or next(
        (q for q in map(quantization_in_name, names) if q), None)
    if quant:
        facts["quantization"] = quant
    if dialect == "auto":
        dialect = ("vllm" if engine == "vllm" else
                   "llamacpp" if engine in ("llama.cpp server", "llama-cpp-python") else "openai")
    return dialect, facts


def parse_options(config: BackendConfig) -> dict[str, Any]:
    """The backend's options with defaults; unknown or bad ones are a UsageError (exit 2)."""

    opts = dict(DEFAULTS)
    for key, value in (config.options or {}).items():
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, list(DEFAULTS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"backend '{config.name}': unknown openai option '{key}'{hint}")
        opts[key] = value
    if not opts["base_url"]:
        raise UsageError(f"backend '{config.name}': the openai runtime needs options.base_url "
                         "(e.g. http://127.0.0.1:8000/v1)")
    for key in ("base_url", "model"):
        if isinstance(opts[key], str):
            try:
                opts[key] = expand(opts[key])
            except MissingVariable as exc:
                raise UsageError(f"backend '{config.name}': options.{key} reads ${{{exc.name}}}, "
                                 "which is not set") from None
    url = opts["base_url"].rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise UsageError(f"backend '{config.name}': options.base_url {url!r} is not an "
                         "http(s) URL")
    if re.match(r"^https?://[^/]+$", url):
        url += "/v1"        # the API root is /v1 on every server we know
    opts["base_url"] = url
    if opts["dialect"] not in DIALECTS:
        raise UsageError(f"backend '{config.name}': options.dialect must be one of "
                         f"{', '.join(DIALECTS)}")
    if not isinstance(opts["extra_body"], dict):
        raise UsageError(f"backend '{config.name}': options.extra_body must be a mapping")
    return opts
