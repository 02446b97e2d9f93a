"""Picture identity: a hash of the decoded pixels and a perceptual hash for near-duplicates."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}


def grey_array(img: Image.Image) -> np.ndarray:
    """The picture as a 2-D array: 16-bit kept as is, everything else converted to 8-bit grey."""
    if img.mode in SIXTEEN_BIT_MODES:
        return np.asarray(img, dtype=np.int64)
    return np.asarray(img.convert("L"), dtype=np.int64)


def pixel_sha256(img: Image.Image) -> str:
    """Equal for two files that decode to the same grey picture (e.g. PNG and its RGB copy)."""
    pixels = grey_array(img)
    digest = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}\n".encode())
    digest.update(np.ascontiguousarray(pixels, dtype="<u2" if pixels.max(initial=0) > 255 else "u1").tobytes())
    return digest.hexdigest()


HASH_SIZE = 16  # a 16x16 difference hash: 256 bits


def dhash(img: Image.Image, size: int = HASH_SIZE) -> str:
    """Difference hash of size*size bits as hex: robust to re-encoding, resizing and mild intensity
    changes. 256 bits separate distinct chest radiographs far better than the common 64."""
    pixels = grey_array(img).astype(np.float64)
    low, high = pixels.min(initial=0.0), pixels.max(initial=0.0)
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    small = Image.fromarray(scaled.astype(np.uint8)).resize((size + 1, size), Image.Resampling.LANCZOS)
    grid = np.asarray(small, dtype=np.int16)
    bits = (grid[:, 1:] > grid[:, :-1]).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{size * size // 4}x}"


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
