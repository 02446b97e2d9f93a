"""Display-ready pixels from stored ones.

Builds embed image bytes unchanged: a BIMCV PNG holds the raw DICOM stored values (12-16 bit, often
MONOCHROME1, i.e. air is bright). `display_array` turns such pixels into an 8-bit picture a person
would expect: bright bone, dark air.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def display_array(
    image: bytes | Image.Image | np.ndarray,
    *,
    photometric_interpretation: str | None = None,
    bits_stored: int | None = None,
    window_center: float | None = None,
    window_width: float | None = None,
) -> np.ndarray:
    """An 8-bit (uint8, H x W) display array of stored pixels.

    - values are first clipped to `2**bits_stored - 1` (the DICOM Bits Stored, e.g. 12);
    - a window (`window_center`, `window_width`, e.g. DICOM 0028,1050/0028,1051) maps linearly to
      0..255; without one, the 0.5th..99.5th percentiles of the image do;
    - `MONOCHROME1` is inverted last, so the result is always MONOCHROME2 (air dark).

    Example, with a row of a build::

        arr = display_array(row["image"], photometric_interpretation=row["photometric_interpretation"],
                            bits_stored=row["bits_stored"])
    """
    if isinstance(image, bytes):
        with Image.open(io.BytesIO(image)) as img:
            pixels = np.array(img)
    elif isinstance(image, Image.Image):
        pixels = np.array(image)
    else:
        pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise ValueError(f"expected a single-channel image, got shape {pixels.shape}")
    values = pixels.astype(np.float64)
    if bits_stored is not None:
        values = np.clip(values, 0, 2**bits_stored - 1)
    if window_center is not None and window_width is not None and window_width > 0:
        low, high = window_center - window_width / 2, window_center + window_width / 2
    else:
        low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    result: np.ndarray = (scaled * 255).round().astype(np.uint8)
    if photometric_interpretation == "MONOCHROME1":
        result = 255 - result
    return result
