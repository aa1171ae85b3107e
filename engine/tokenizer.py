"""Tokenizers behind one small interface: the model's own (Hugging Face) or the built-in
UTF-8 byte tokenizer used by synthetic models."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .errors import ModelSourceError


class Tokenizer:
    """encode / chat / decode / per-token display strings / stop ids."""

    stop_ids: list[int] = []

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def render_chat(self, messages: list[dict], kwargs: dict) -> str:
        raise NotImplementedError

    def encode_chat(self, messages: list[dict], kwargs: dict) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each id's own text, for display (the divergence view, top-k tables)."""
        return [self.decode([i]) for i in ids]


class BytesTokenizer(Tokenizer):
    """ids 3..258 are the bytes 0..255; 0 pad, 1 bos, 2 eos. Chats are rendered as
    '<|role|>\\ncontent\\n' lines plus '<|assistant|>\\n'."""

    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3

    def __init__(self):
        self.stop_ids = [self.EOS]

    def encode(self, text: str) -> list[int]:
        return [self.BOS] + [b + self.OFFSET for b in text.encode("utf-8")]

    def render_chat(self, messages: list[dict], kwargs: dict) -> str:
        body = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return body + "<|assistant|>\n"

    def encode_chat(self, messages: list[dict], kwargs: dict) -> list[int]:
        return self.encode(self.render_chat(messages, kwargs))

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < self.OFFSET + 256)
        return data.decode("utf-8", errors="replace")

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        out = []
        for i in ids:
            if self.OFFSET <= i < self.OFFSET + 256:
                b = i - self.OFFSET
                out.append(chr(b) if 32 <= b < 127 else f"<0x{b:02X}>")
            else:
                out.append({0: "<pad>", 1: "<bos>", 2: "<eos>"}.get(i, f"<{i}>"))
        return out


class HFTokenizer(Tokenizer):
    def __init__(self, folder: Path, trust_remote_code: bool = False):
        from .sources import offline

        offline()
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                     trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelSourceError(f"cannot load the tokenizer from {folder}: "
                                   f"{' '.join(str(exc).split())[:300]}") from None
        self.stop_ids = _stop_ids(self.tok, folder)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=True)["input_ids"])

    def render_chat(self, messages: list[dict], kwargs: dict) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise ModelSourceError("this tokenizer has no chat template; use prompt instead "
                                   "of messages")
        return self.tok.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=False, **kwargs)

    def encode_chat(self, messages: list[dict], kwargs: dict) -> list[int]:
        text = self.render_chat(messages, kwargs)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        return [self.tok.decode([i], skip_special_tokens=False) for i in ids]


def _stop_ids(tok, folder: Path) -> list[int]:
    import json

    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen = Path(folder) / "generation_config.json"
    if gen.is_file():
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except ValueError:
            eos = None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(x) for x in eos)
    return sorted(ids)


def load_tokenizer(resolved) -> Tokenizer:
    """The tokenizer of a ResolvedSource."""
    ref = resolved.tokenizer_ref
    if ref == "bytes":
        return BytesTokenizer()
    return HFTokenizer(Path(ref), trust_remote_code=resolved.spec.trust_remote_code)
