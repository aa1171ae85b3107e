"""Inputs of embedding cases: texts through the model's tokenizer, image files through the
model's image processor (or .npy pixel tensors), seeded synthetic images at the model's
image size. Everything ends as numpy arrays (the backend's feeds) plus a description for
the golden and a digest for the staleness hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specengine.errors import BackendUnavailable, ModelSourceError, SpecError, brief
from specengine.files import offline

SYNTHETIC_GRID = 8          # synthetic images: a random 8x8 grid per channel, interpolated


@dataclass
class PreparedInputs:
    feeds: dict[str, np.ndarray]            # what the backend's embed() receives
    count: int                              # inputs in the batch
    mask: np.ndarray | None                 # (n, tokens) valid tokens, None: all valid
    described: dict[str, Any]               # for the golden (texts + ids, or images)
    digest: dict[str, Any]                  # what the staleness hash covers
    unit: str = "sequences"                 # sequences | images
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


class InputPreparer:
    """Turns an embedding case into model inputs, for one resolved model folder."""

    def __init__(self, hf_dir: Path, settings, where: str = ""):
        self.dir = Path(hf_dir)
        self.settings = settings
        self.where = where
        self.config = _read_json(self.dir / "config.json") or {}
        self._tokenizer = None
        self._processor = None

    # -- texts ---------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            offline()
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.dir), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise ModelSourceError(f"cannot load the tokenizer of {self.dir}: "
                                       f"{brief(exc)}") from None
        return self._tokenizer

    def max_length(self) -> int:
        if self.settings.max_length:
            return int(self.settings.max_length)
        st = _read_json(self.dir / "sentence_bert_config.json") or {}
        if st.get("max_seq_length"):
            return int(st["max_seq_length"])
        limit = getattr(self.tokenizer, "model_max_length", 512) or 512
        return int(min(limit, 512))

    def texts(self, texts: list[str]) -> PreparedInputs:
        tok = self.tokenizer
        enc = tok(list(texts), padding=True, truncation=True, max_length=self.max_length(),
                  return_tensors="np")
        feeds = {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}
        mask = feeds["attention_mask"].astype(bool) if "attention_mask" in feeds else \
            np.ones(feeds["input_ids"].shape, dtype=bool)
        ids = [[int(t) for t, m in zip(row, mrow) if m] for row, mrow in zip(feeds["input_ids"], mask)]
        digest = {"token_ids": ids}
        if "token_type_ids" in feeds:
            digest["token_type_ids"] = [[int(t) for t, m in zip(row, mrow) if m]
                                        for row, mrow in zip(feeds["token_type_ids"], mask)]
        return PreparedInputs(feeds, len(texts), mask, {"texts": list(texts), "token_ids": ids},
                              digest, "sequences")

    # -- images --------------------------------------------------------------------
    def _vision_config(self) -> dict:
        return self.config.get("vision_config") or self.config

    def image_size(self) -> tuple[int, int]:
        if self.settings.image_size:
            return int(self.settings.image_size), int(self.settings.image_size)
        size = self._vision_config().get("image_size")
        if size is None:
            raise SpecError(f"the model config has no image_size; set embedding.image_size in "
                            f"the spec [{self.where}]")
        if isinstance(size, (list, tuple)):
            return int(size[0]), int(size[-1])
        return int(size), int(size)

    def channels(self) -> int:
        return int(self._vision_config().get("num_channels", 3))

    def normalisation(self) -> tuple[np.ndarray, np.ndarray, str]:
        pre = _read_json(self.dir / "preprocessor_config.json")
        c = self.channels()
        if pre and pre.get("image_mean") is not None and pre.get("image_std") is not None:
            mean = np.asarray(pre["image_mean"], dtype=np.float64).reshape(-1, 1, 1)
            std = np.asarray(pre["image_std"], dtype=np.float64).reshape(-1, 1, 1)
            return mean, std, "image_mean/image_std of preprocessor_config.json"
        return np.full((c, 1, 1), 0.5), np.full((c, 1, 1), 0.5), "(x - 0.5) / 0.5 (no preprocessor_config.json)"

    def synthetic(self, count: int, seed: int) -> PreparedInputs:
        h, w = self.image_size()
        c = self.channels()
        rng = np.random.default_rng(int(seed))
        mean, std, how = self.normalisation()
        images = np.stack([_smooth_image(rng, c, h, w) for _ in range(count)])
        pixels = ((images - mean[None]) / std[None]).astype(np.float32)
        described = {"synthetic_images": {"count": count, "seed": int(seed), "size": [h, w],
                                          "channels": c, "normalised_with": how},
                     "pixel_sha256": _sha(pixels)}
        return PreparedInputs({"pixel_values": pixels}, count, None, described,
                              {"pixel_sha256": described["pixel_sha256"], "shape": list(pixels.shape)},
                              "images")

    def files(self, paths: list[str], written: list[str]) -> PreparedInputs:
        arrays = []
        for path, shown in zip(paths, written):
            p = Path(path)
            if not p.is_file():
                raise SpecError(f"image file not found: {p} (from {shown!r}) [{self.where}]")
            if p.suffix.lower() == ".npy":
                try:
                    arr = np.load(p, allow_pickle=False)
                except ValueError as exc:
                    raise SpecError(f"cannot read {p}: {exc}") from None
                if arr.ndim != 3:
                    raise SpecError(f"{p}: a .npy image must be a (channels, height, width) "
                                    f"pixel tensor, not shape {list(arr.shape)}")
                arrays.append(arr.astype(np.float32))
            else:
                arrays.append(self._processed(p))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise SpecError(f"images of one case must give pixel tensors of one shape, got "
                            f"{sorted(shapes)} [{self.where}]")
        pixels = np.stack(arrays).astype(np.float32)
        described = {"images": list(written), "pixel_sha256": _sha(pixels),
                     "shape": list(pixels.shape)}
        return PreparedInputs({"pixel_values": pixels}, len(arrays), None, described,
                              {"pixel_sha256": described["pixel_sha256"], "shape": list(pixels.shape)},
                              "images")

    def _processed(self, path: Path) -> np.ndarray:
        try:
            from PIL import Image
        except ImportError:
            raise BackendUnavailable(f"image file {path.name} needs pillow to be read: "
                                     "pip install pillow (or give a .npy pixel tensor)") from None
        if self._processor is None:
            if not (self.dir / "preprocessor_config.json").is_file():
                raise ModelSourceError(f"{self.dir} has no image processor "
                                       "(preprocessor_config.json); give .npy pixel tensors")
            from transformers import AutoImageProcessor

            self._processor = AutoImageProcessor.from_pretrained(str(self.dir), local_files_only=True)
        with Image.open(path) as img:
            out = self._processor(images=[img.convert("RGB")], return_tensors="np")
        return np.asarray(out["pixel_values"][0], dtype=np.float32)


def _interp_matrix(n: int, grid: int) -> np.ndarray:
    """(n, grid) linear interpolation weights from a coarse grid to n samples."""
    pos = np.linspace(0, grid - 1, n)
    lo = np.floor(pos).astype(int).clip(0, grid - 1)
    hi = (lo + 1).clip(0, grid - 1)
    frac = pos - lo
    m = np.zeros((n, grid))
    m[np.arange(n), lo] += 1 - frac
    m[np.arange(n), hi] += frac
    return m


def _smooth_image(rng, c: int, h: int, w: int) -> np.ndarray:
    """Values in [0, 1]: a coarse random grid interpolated to h x w, plus fine noise —
    natural-image-like structure at every scale, from the seed alone."""
    grid = rng.random((c, SYNTHETIC_GRID, SYNTHETIC_GRID))
    mh, mw = _interp_matrix(h, SYNTHETIC_GRID), _interp_matrix(w, SYNTHETIC_GRID)
    img = np.einsum("hg,cgk,wk->chw", mh, grid, mw)
    img += 0.05 * rng.standard_normal((c, h, w))
    return np.clip(img, 0.0, 1.0)


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()
