"""The one backend interface: every capability the engine uses is declared on `Backend`
with a default, runtime exceptions are converted once in the base class, and every
backend (the ONNX encoder included) is reached through the registry."""

from __future__ import annotations

import numpy as np
import pytest

from specengine.backends.base import GUARDED, Backend, BackendConfig, ScoringUnavailable
from specengine.backends.registry import backend_class
from specengine.errors import BackendCrashed, BackendUnavailable, GoldenError


class Broken(Backend):
    """A runtime whose calls raise what they are told to."""

    def __init__(self, config, exc):
        super().__init__(config)
        self.exc = exc

    def load(self, source):
        raise self.exc

    def generate(self, prompts, max_new_tokens, top_k, stop_ids=()):
        raise self.exc

    def score(self, prompt_ids, target_ids, gather_ids, top_k):
        raise self.exc

    def environment(self):
        return {}


def _broken(exc) -> Broken:
    return Broken(BackendConfig("bad", "test"), exc)


def test_a_runtime_error_becomes_backend_crashed_naming_backend_and_method():
    with pytest.raises(BackendCrashed) as info:
        _broken(RuntimeError("CUDA error:\n  an illegal memory access")).generate([[1]], 2, 3)
    message = str(info.value)
    assert message == ("backend 'bad' failed in generate: RuntimeError: CUDA error: an "
                       "illegal memory access")
    assert isinstance(info.value.__cause__, RuntimeError)   # the original stays attached


def test_load_errors_name_what_was_loading():
    class Source:
        origin = "gguf /models/x.gguf"

    with pytest.raises(BackendCrashed, match=r"could not load gguf /models/x.gguf: OSError: "):
        _broken(OSError("truncated")).load(Source())


@pytest.mark.parametrize("exc", [ScoringUnavailable("prompt re-spelled"),
                                 GoldenError("stale"), BackendUnavailable("no device")])
def test_the_engines_own_errors_and_scoring_unavailable_pass_unchanged(exc):
    with pytest.raises(type(exc)) as info:
        _broken(exc).score([1], [2], np.zeros((1, 1), np.int64), 1)
    assert info.value is exc


def test_interrupts_are_not_converted():
    with pytest.raises(KeyboardInterrupt):
        _broken(KeyboardInterrupt()).generate([[1]], 1, 1)


def test_every_capability_has_a_default():
    b = Broken(BackendConfig("plain", "test"), None)
    assert (b.supports_logprobs, b.supports_scoring) == (True, True)
    assert not (b.supports_gather or b.supports_incremental or b.supports_positions
                or b.supports_embedding or b.supports_ops or b.wants_tokenizer)
    assert b.greedy_causes is None and b.load_s is None and b.model is None
    assert b.peak_memory_bytes() is None and b.peak_memory_source() == ""
    assert b.synchronize() is None and b.reset_peak_memory() is None
    assert b.bind_chats({(1, 2): ([{"role": "user", "content": "hi"}], {})}) is None
    with pytest.raises(BackendUnavailable, match="cannot run embedding models"):
        b.embed({})
    with pytest.raises(BackendUnavailable, match="cannot run operator specs"):
        b.run_op(lambda *a: {}, {}, {}, {}, "float32")
    assert set(GUARDED) >= {"load", "generate", "score", "embed", "run_op"}


def test_the_onnx_encoder_is_reached_through_the_registry():
    config = BackendConfig("onnx", "onnx")
    assert backend_class(config).__name__ == "OnnxBackend"
    assert backend_class(config, "embedding").__name__ == "OnnxEncoderBackend"
    assert backend_class(BackendConfig("cpu", "torch"), "embedding").__name__ == "TorchBackend"
