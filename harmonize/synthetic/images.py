"""Small synthetic radiograph-like images, deterministic for a seed.

Each picture draws its own anatomy (body and lung size and position), a few opacities and a
brightness ramp, so two pictures differ at the coarse scale a perceptual hash looks at, as two
patients' radiographs do.
"""

from __future__ import annotations

import io
import random

import numpy as np
from PIL import Image


def _blob(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    result: np.ndarray = np.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))
    return result


def synthetic_array(rng: random.Random, width: int, height: int, max_value: int = 255) -> np.ndarray:
    """A chest-like picture in [0, max_value]: body, two darker lung fields, opacities, ramp, noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.42, 0.58)
    picture = 0.15 + 0.7 * _blob(x, y, cx, cy, width * rng.uniform(0.35, 0.55), height * rng.uniform(0.4, 0.6))
    for side in (-1, 1):
        lung_x = cx + side * width * rng.uniform(0.13, 0.27)
        lung_y = cy + height * rng.uniform(-0.12, 0.12)
        picture -= rng.uniform(0.3, 0.6) * _blob(
            x, y, lung_x, lung_y, width * rng.uniform(0.08, 0.17), height * rng.uniform(0.2, 0.36)
        )
    for _ in range(rng.randint(1, 4)):  # opacities
        picture += rng.uniform(0.15, 0.45) * _blob(
            x,
            y,
            width * rng.random(),
            height * rng.random(),
            width * rng.uniform(0.05, 0.2),
            height * rng.uniform(0.05, 0.2),
        )
    angle = rng.uniform(0, 2 * np.pi)
    picture += rng.uniform(0.1, 0.35) * ((x / width - 0.5) * np.cos(angle) + (y / height - 0.5) * np.sin(angle))
    picture += np.random.default_rng(rng.randrange(2**32)).normal(0, 0.02, size=(height, width))
    result: np.ndarray = (np.clip(picture, 0, 1) * max_value).round()
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
