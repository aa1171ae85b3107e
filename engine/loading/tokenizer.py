"""Tokenizers behind one small interface: the model's own (Hugging Face) or the built-in
UTF-8 byte tokenizer used by synthetic models."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from specengine.errors import ModelSourceError, brief
from specengine.files import offline
from specengine.token_display import show_bytes


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
        """Each id's own text, for display (the divergence view, top-k tables): bytes that
        form no character on their own are shown as hex, `⟨e4 b8⟩`, never as `�`."""

        return [self.decode([i]) if b is None else show_bytes(b)
                for i, b in zip(ids, self.token_bytes(ids))]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes | None]:
        """Each id's raw bytes (None for a special token), so a report can merge the
        tokens of one multi-byte character into the character they form."""
        return [self.decode([i]).encode("utf-8") for i in ids]


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

        return [show_bytes(b) if b is not None else
                {0: "<pad>", 1: "<bos>", 2: "<eos>"}.get(i, f"<{i}>")
                for i, b in zip(ids, self.token_bytes(ids))]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes | None]:
        return [bytes([i - self.OFFSET]) if self.OFFSET <= i < self.OFFSET + 256 else None
                for i in ids]


class HFTokenizer(Tokenizer):
    def __init__(self, folder: Path, trust_remote_code: bool = False):

        offline()
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                     trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelSourceError(f"cannot load the tokenizer from {folder}: "
                                   f"{brief(exc)}") from None
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

        return [self.tok.decode([i], skip_special_tokens=False) if b is None else show_bytes(b)
                for i, b in zip(ids, self.token_bytes(ids))]

    def token_bytes(self, ids: Sequence[int]) -> list[bytes | None]:
        ids = [int(i) for i in ids]
        special = set(getattr(self.tok, "all_special_ids", []) or [])
        out: list[bytes | None] = []
        for i, piece in zip(ids, self.tok.convert_ids_to_tokens(ids)):
            if i in special or piece is None:
                out.append(None)
                continue
            text = self.tok.decode([i], skip_special_tokens=False)
            raw = _piece_bytes(piece)
            # the byte map only where it explains the decoded text (or the text is a
            # lone `�`); a SentencePiece piece such as `é` decodes as itself
            if raw is not None and ("\ufffd" in text
                                    or raw.decode("utf-8", errors="replace") == text):
                out.append(raw)
            else:
                out.append(text.encode("utf-8"))
        return out


def _byte_decoder() -> dict[str, int]:
    """The inverse of the GPT-2 byte-to-unicode map byte-level BPE vocabularies use:
    printable bytes stand for themselves, the others for code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + \
        list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_DECODER = _byte_decoder()


def _piece_bytes(piece: str) -> bytes | None:
    """A vocabulary piece's bytes: `<0xE4>` (SentencePiece byte fallback) or a byte-level
    BPE piece; None when the piece is neither."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    try:
        return bytes(_BYTE_DECODER[c] for c in piece)
    except KeyError:
        return None


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
