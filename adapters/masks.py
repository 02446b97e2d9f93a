"""Annotation geometry -> COCO RLE, validated first.

pycocotools is strict and silent in equal measure: a 2-point polygon part makes `frPyObjects` read
the whole list as boxes, a 1-point part raises, a collinear polygon gives area 0, and an uncompressed
RLE is read with its own `size` whatever the image is. So every geometry is checked here before
pycocotools sees it, and every repair is described in words for the record's provenance.

Rings of one annotation are filled even-odd (a Darwin complex polygon is an outer ring plus holes),
never merged by union.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as coco_mask

# How far (px) a repaired RLE's box may be from the box the export states.
BBOX_TOLERANCE = 2.0


class GeometryError(ValueError):
    """An annotation geometry that cannot be turned into a mask; `reason` is a short, countable text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Rle:
    """A compressed COCO RLE with its area and box, plus the repairs made to get it."""

    size: tuple[int, int]  # (height, width)
    counts: str
    area: int
    bbox: tuple[float, float, float, float]
    repairs: tuple[str, ...] = ()


def validate_ring(ring: Sequence[object], height: int, width: int) -> tuple[list[float], bool]:
    """The ring as floats, and whether it reaches outside the image (pycocotools clips it).

    Raises GeometryError for fewer than 3 points, an odd number of coordinates, non-numeric or
    non-finite coordinates, or a ring lying wholly outside the image.
    """
    if len(ring) % 2:
        raise GeometryError("polygon has an odd number of coordinates", f"{len(ring)} values")
    if len(ring) < 6:
        raise GeometryError("polygon has fewer than 3 points", f"{len(ring) // 2} point(s)")
    coords: list[float] = []
    for value in ring:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise GeometryError("polygon has non-numeric coordinates", repr(value))
        if not math.isfinite(value):
            raise GeometryError("polygon has non-finite coordinates", repr(value))
        coords.append(float(value))
    xs, ys = coords[0::2], coords[1::2]
    if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
        raise GeometryError("polygon lies outside the image", f"image {width}x{height}")
    outside = min(xs) < 0 or min(ys) < 0 or max(xs) > width or max(ys) > height
    return coords, outside


def polygon_rle(rings: Sequence[Sequence[object]], height: int, width: int) -> Rle:
    """Rasterize one annotation's rings (even-odd fill) into a compressed RLE."""
    if not rings:
        raise GeometryError("polygon has no rings")
    checked = [validate_ring(ring, height, width) for ring in rings]
    repairs = ("polygon reaches outside the image; clipped to it",) if any(o for _, o in checked) else ()
    parts = coco_mask.frPyObjects([coords for coords, _ in checked], height, width)
    if len(parts) == 1:
        rle = parts[0]
    else:
        filled = np.zeros((height, width), dtype=np.uint8)
        for part in parts:
            filled ^= coco_mask.decode(part)
        rle = coco_mask.encode(np.asfortranarray(filled))
    return _finish(rle, repairs, empty_reason="polygon has zero area")


def uncompressed_rle(
    segmentation: dict[str, object],
    height: int,
    width: int,
    stated_bbox: Sequence[float] | None,
) -> Rle:
    """Convert an uncompressed COCO RLE (`counts` a list of run lengths) after checking its `size`.

    COCO's `size` is [height, width]. The 2020 V7 exporter wrote [width, height]: when the size is the
    image's dimensions swapped, it is read as [height, width] only if the result's box then matches
    the box the export states; the repair is described. A size matching neither orientation, or runs
    that do not cover the image exactly, are refused: such a mask is never decoded on trust.
    """
    counts, size = segmentation.get("counts"), segmentation.get("size")
    if not isinstance(counts, list) or not all(isinstance(c, int) and c >= 0 for c in counts):
        raise GeometryError("RLE counts are not a list of run lengths")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise GeometryError("RLE size is not [height, width]", repr(size))
    if sum(counts) != height * width:
        raise GeometryError("RLE runs do not cover the image", f"{sum(counts)} pixels, image {height}x{width}")
    repairs: tuple[str, ...] = ()
    if size != [height, width]:
        if size != [width, height]:
            raise GeometryError("RLE size matches neither image orientation", f"{size} vs image {height}x{width}")
        repairs = (f"uncompressed RLE size {size} was [width, height]; read as [height, width] = {[height, width]}",)
    rle = coco_mask.frPyObjects({"counts": counts, "size": [height, width]}, height, width)
    result = _finish(rle, repairs, empty_reason="RLE mask is empty")
    if repairs:
        _check_bbox(result, stated_bbox)
    return result


def _check_bbox(rle: Rle, stated: Sequence[float] | None) -> None:
    if stated is None or len(stated) != 4:
        raise GeometryError("RLE size swapped and no bbox to confirm the repair")
    if max(abs(a - b) for a, b in zip(rle.bbox, stated, strict=True)) > BBOX_TOLERANCE:
        raise GeometryError("RLE size swapped and the repaired box disagrees with the stated bbox")


def _finish(rle: dict[str, object], repairs: tuple[str, ...], *, empty_reason: str) -> Rle:
    area = int(coco_mask.area(rle))
    if area == 0:
        raise GeometryError(empty_reason)
    counts, size = rle["counts"], rle["size"]
    text = counts.decode("ascii") if isinstance(counts, bytes) else str(counts)
    height, width = size if isinstance(size, list | tuple) else (0, 0)
    x, y, w, h = (float(v) for v in coco_mask.toBbox(rle))
    return Rle(
        size=(int(height), int(width)),
        counts=text,
        area=area,
        bbox=(x, y, w, h),
        repairs=repairs,
    )


def decode(rle: Rle) -> np.ndarray:
    """The (height, width) uint8 mask of a compressed RLE."""
    result: np.ndarray = coco_mask.decode({"size": list(rle.size), "counts": rle.counts})
    return result


def iou(a: Rle, b: Rle) -> float:
    """Intersection over union of two masks of the same image."""
    value = coco_mask.iou(
        [{"size": list(a.size), "counts": a.counts}], [{"size": list(b.size), "counts": b.counts}], [0]
    )
    return float(value[0][0])
