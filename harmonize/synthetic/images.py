"""Small synthetic radiograph-like images, deterministic for a seed."""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image


def synthetic_array(rng: random.Random, width: int, height: int, max_value: int = 255) -> np.ndarray:
    """A chest-like picture: bright mediastinum, two darker lung fields, seeded noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = width / 2, height / 2
    body = np.exp(-(((x - cx) / (0.45 * width)) ** 2 + ((y - cy) / (0.5 * height)) ** 2))
    lungs = sum(
        np.exp(-(((x - cx + s * 0.2 * width) / (0.13 * width)) ** 2 + ((y - cy) / (0.3 * height)) ** 2))
        for s in (-1, 1)
    )
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 0.03, size=(height, width))
    picture = np.clip(0.15 + 0.7 * body - 0.45 * lungs + noise, 0, 1)
    result: np.ndarray = (picture * max_value).round()
    return result


def encode(array: np.ndarray, *, fmt: str, mode: str) -> bytes:
    """Encode a 2-D array as `fmt` in PIL `mode` (L, RGB, RGBA, I;16)."""
    if mode == "I;16":
        img = Image.fromarray(array.astype(np.uint16))
    else:
        img = Image.fromarray(array.astype(np.uint8), mode="L").convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()
