"""The benchmark's default model: logistic regression on small, intensity-normalized pixels.

A model is plugged in as a `ModelFactory`: a callable that takes a training `Dataset` (the build's
columns plus an integer `label` column, 1 = positive) and returns a `Predictor`, a callable that takes
a `Dataset` of the same columns and returns one score per row (higher = more likely positive).

The baseline, per image: decode the stored bytes; RGB(A) to grey; 16-bit values clipped to
`bits_stored`; intensities mapped to 0..1 by the image's 1st..99th percentiles; `MONOCHROME1`
inverted (air dark); optionally every pixel outside the union of the record's `lung` masks set to 0;
resized to `size` x `size` (box filter, aspect ratio not kept). The flattened pixels feed a
standardized, L2-regularized, class-balanced logistic regression (liblinear, seeded: deterministic).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from datasets import Dataset
from PIL import Image
from pycocotools import mask as coco_mask
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

Predictor = Callable[[Dataset], np.ndarray]
ModelFactory = Callable[[Dataset], Predictor]

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I", "F"})


def model_pixels(
    image_bytes: bytes,
    *,
    size: int,
    photometric_interpretation: str | None = None,
    bits_stored: int | None = None,
    lung_mask: np.ndarray | None = None,
) -> np.ndarray:
    """`size * size` float32 values in 0..1 of one stored image (see the module docstring)."""
    with Image.open(io.BytesIO(image_bytes)) as img:
        img.draft(img.mode, (8 * size, 8 * size))  # JPEG only: decode at a reduced scale, much faster
        wide = img.mode in _SIXTEEN_BIT_MODES
        values = np.asarray(img if wide else img.convert("L"), dtype=np.float64)
    if wide and bits_stored:
        values = np.clip(values, 0, 2**bits_stored - 1)
    low, high = np.percentile(values, (1, 99))
    scaled = np.clip((values - low) / max(float(high - low), 1e-9), 0.0, 1.0)
    if photometric_interpretation == "MONOCHROME1":
        scaled = 1.0 - scaled
    if lung_mask is not None:
        scaled = np.where(_fit(lung_mask, scaled.shape), scaled, 0.0)
    small = Image.fromarray(scaled.astype(np.float32), mode="F").resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel()


def lung_mask(masks: list[dict[str, Any]] | None) -> np.ndarray | None:
    """The union of a record's `lung` masks (COCO RLE), or None when it has none."""
    lungs = [m for m in masks or [] if m.get("label") == "lung" and m.get("counts")]
    if not lungs:
        return None
    union: np.ndarray | None = None
    for m in lungs:
        decoded = coco_mask.decode({"size": [int(v) for v in m["size"]], "counts": m["counts"].encode()})
        union = decoded.astype(bool) if union is None else union | _fit(decoded.astype(bool), union.shape)
    return union


def _fit(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) > 0


@dataclass
class PixelLogisticBaseline:
    """Default `ModelFactory`. Pixel vectors are cached per `record_id` across fits of one instance."""

    size: int = 32
    lung_masked: bool = False
    regularization: float = 0.1  # sklearn's C: smaller = stronger L2 penalty
    seed: int = 0
    _cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        masked = "lung-masked" if self.lung_masked else "unmasked"
        return (
            f"logistic regression (C={self.regularization}, class-balanced, standardized) on {self.size}x{self.size} "
            f"{masked} intensity-normalized pixels, MONOCHROME1 inverted"
        )

    def __call__(self, train: Dataset) -> Predictor:
        model = make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=self.regularization,
                solver="liblinear",
                class_weight="balanced",
                max_iter=2000,
                random_state=self.seed,
            ),
        )
        model.fit(self.features(train), np.asarray(train["label"], dtype=np.int64))

        def predict(dataset: Dataset) -> np.ndarray:
            scores: np.ndarray = model.predict_proba(self.features(dataset))[:, 1]
            return scores

        return predict

    def features(self, dataset: Dataset) -> np.ndarray:
        """One row of `size * size` pixels per record."""
        table = dataset.with_format("arrow")[:]
        ids = table.column("record_id").to_pylist()
        images = table.column("image").to_pylist()
        photometric = _column(table, "photometric_interpretation")
        bits = _column(table, "bits_stored")
        masks = _column(table, "masks")
        rows = []
        for i, record_id in enumerate(ids):
            key = (record_id, "lung" if self.lung_masked else "full")
            if key not in self._cache:
                self._cache[key] = model_pixels(
                    images[i]["bytes"],
                    size=self.size,
                    photometric_interpretation=photometric[i],
                    bits_stored=bits[i],
                    lung_mask=lung_mask(masks[i]) if self.lung_masked else None,
                )
            rows.append(self._cache[key])
        return np.stack(rows) if rows else np.zeros((0, self.size * self.size), dtype=np.float32)


def _column(table: Any, name: str) -> list[Any]:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
