"""Picture identity: a hash of the decoded pixels and a perceptual hash for near-duplicates."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}


def grey_array(img: Image.Image) -> np.ndarray:
    """The picture as a 2-D integer array: 16-bit kept as is, everything else converted to 8-bit grey
    (no wider copy: a full-size radiograph is ~7 Mpx)."""
    if img.mode in SIXTEEN_BIT_MODES:
        return np.asarray(img)
    return np.asarray(img.convert("L"))


def picture_hashes(img: Image.Image) -> tuple[str, str]:
    """(`pixel_sha256`, `dhash`) of a decoded picture, from one grey copy of it."""
    grey = grey_array(img)
    return _pixel_sha256(grey), _dhash(grey, HASH_SIZE)


def pixel_sha256(img: Image.Image) -> str:
    """Equal for two files that decode to the same grey picture (e.g. PNG and its RGB copy)."""
    return _pixel_sha256(grey_array(img))


def _pixel_sha256(pixels: np.ndarray) -> str:
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}\n".encode())
    digest.update(np.ascontiguousarray(pixels, dtype="<u2" if pixels.max(initial=0) > 255 else "u1").data)
    return digest.hexdigest()


HASH_SIZE = 16  # a 16x16 difference hash: 256 bits


def dhash(img: Image.Image, size: int = HASH_SIZE) -> str:
    """Difference hash of size*size bits as hex: robust to re-encoding, resizing and mild intensity
    changes. 256 bits separate distinct chest radiographs far better than the common 64."""
    return _dhash(grey_array(img), size)


def _dhash(pixels: np.ndarray, size: int) -> str:
    small = Image.fromarray(_stretched(pixels)).resize((size + 1, size), Image.Resampling.LANCZOS)
    grid = np.asarray(small, dtype=np.int16)
    bits = (grid[:, 1:] > grid[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{size * size // 4}x}"


def _stretched(pixels: np.ndarray) -> np.ndarray:
    """The picture stretched from min(0, darkest)..brightest to 0..255 as uint8 (truncated)."""
    low, high = min(int(pixels.min(initial=0)), 0), max(int(pixels.max(initial=0)), 0)
    if high == low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scale = 255.0 / (high - low)
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:  # a table per value: the same floats, no copy
        table = ((np.arange(high + 1, dtype=np.float64) - low) * scale).astype(np.uint8)
        stretched: np.ndarray = table[pixels]
        return stretched
    return ((pixels.astype(np.float64) - low) * scale).astype(np.uint8)


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
