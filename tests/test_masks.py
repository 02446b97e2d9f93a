"""Geometry -> COCO RLE: validation before pycocotools, even-odd holes, the swapped-size RLE repair."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pycocotools import mask as coco_mask

from covid_cxr_unified.adapters.masks import GeometryError, decode, polygon_rle, uncompressed_rle, validate_ring

SQUARE = [2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]
HOLE = [5.0, 5.0, 9.0, 5.0, 9.0, 9.0, 5.0, 9.0]


@pytest.mark.parametrize(
    ("ring", "reason"),
    [
        ([1.0, 1.0, 5.0, 5.0], "polygon has fewer than 3 points"),  # pycocotools would read it as a box
        ([1.0, 1.0], "polygon has fewer than 3 points"),
        ([1.0, 1.0, 5.0, 1.0, 5.0], "polygon has an odd number of coordinates"),
        ([1.0, 1.0, math.nan, 1.0, 5.0, 5.0], "polygon has non-finite coordinates"),
        ([1.0, 1.0, math.inf, 1.0, 5.0, 5.0], "polygon has non-finite coordinates"),
        ([1.0, 1.0, None, 1.0, 5.0, 5.0], "polygon has non-numeric coordinates"),
        ([1.0, 1.0, "3", 1.0, 5.0, 5.0], "polygon has non-numeric coordinates"),
        ([30.0, 30.0, 40.0, 30.0, 40.0, 40.0], "polygon lies outside the image"),
        ([-9.0, -9.0, -1.0, -9.0, -1.0, -1.0], "polygon lies outside the image"),
    ],
)
def test_invalid_rings_are_refused_with_a_reason(ring: list[object], reason: str) -> None:
    with pytest.raises(GeometryError) as caught:
        validate_ring(ring, 20, 20)
    assert caught.value.reason == reason


def test_collinear_polygon_is_refused_as_empty() -> None:
    with pytest.raises(GeometryError, match="zero area"):
        polygon_rle([[1.0, 1.0, 5.0, 5.0, 9.0, 9.0]], 20, 20)


def test_polygon_rle_is_compressed_text_with_height_width_size() -> None:
    rle = polygon_rle([SQUARE], 16, 30)
    assert rle.size == (16, 30) and isinstance(rle.counts, str)
    assert rle.area == 100 and rle.bbox == (2.0, 2.0, 10.0, 10.0)
    assert rle.repairs == ()
    assert decode(rle).shape == (16, 30)


def test_complex_polygon_is_filled_even_odd_not_by_union() -> None:
    rle = polygon_rle([SQUARE, HOLE], 20, 20)
    pixels = decode(rle)
    assert rle.area == 100 - 16
    assert pixels[7, 7] == 0 and pixels[3, 3] == 1  # the hole stays empty
    union = coco_mask.merge(coco_mask.frPyObjects([SQUARE, HOLE], 20, 20))
    assert int(coco_mask.area(union)) == 100  # what a union would have given


def test_polygon_reaching_outside_is_clipped_and_the_repair_described() -> None:
    rle = polygon_rle([[-10.0, -10.0, 10.0, -10.0, 10.0, 10.0, -10.0, 10.0]], 20, 20)
    assert rle.area == 100 and rle.bbox == (0.0, 0.0, 10.0, 10.0)
    assert rle.repairs == ("polygon reaches outside the image; clipped to it",)


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F").tolist()
    runs, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    return [*runs, length]


@pytest.fixture
def ring_mask() -> np.ndarray:
    """A ring (outer + hole) on a non-square 30 (h) x 50 (w) image, like the real "Ignore" RLEs."""
    mask = np.zeros((30, 50), dtype=np.uint8)
    mask[5:20, 10:40] = 1
    mask[9:15, 18:30] = 0
    return mask


def test_uncompressed_rle_with_correct_size_needs_no_repair(ring_mask: np.ndarray) -> None:
    rle = uncompressed_rle({"counts": _uncompressed(ring_mask), "size": [30, 50]}, 30, 50, [10, 5, 30, 15])
    assert rle.repairs == () and rle.area == int(ring_mask.sum())
    assert np.array_equal(decode(rle), ring_mask)


def test_swapped_size_is_repaired_only_when_the_box_confirms_it(ring_mask: np.ndarray) -> None:
    segmentation = {"counts": _uncompressed(ring_mask), "size": [50, 30]}  # [width, height], as V7 wrote it
    rle = uncompressed_rle(segmentation, 30, 50, [10.0, 5.0, 30.0, 15.0])
    assert np.array_equal(decode(rle), ring_mask)
    assert rle.size == (30, 50) and rle.area == int(ring_mask.sum()) and rle.bbox == (10.0, 5.0, 30.0, 15.0)
    assert rle.repairs == ("uncompressed RLE size [50, 30] was [width, height]; read as [height, width] = [30, 50]",)
    blind = coco_mask.frPyObjects(segmentation, 50, 30)  # what decoding the dict as given yields
    assert list(coco_mask.toBbox(blind)) != [10.0, 5.0, 30.0, 15.0]
    with pytest.raises(GeometryError, match="repaired box disagrees"):
        uncompressed_rle(segmentation, 30, 50, [0.0, 0.0, 50.0, 30.0])
    with pytest.raises(GeometryError, match="no bbox"):
        uncompressed_rle(segmentation, 30, 50, None)


@pytest.mark.parametrize(
    ("segmentation", "reason"),
    [
        ({"counts": [10, 5], "size": [30, 50]}, "RLE runs do not cover the image"),
        ({"counts": [1500], "size": [25, 60]}, "RLE size matches neither image orientation"),
        ({"counts": "abc", "size": [30, 50]}, "RLE counts are not a list of run lengths"),
        ({"counts": [1500], "size": "30x50"}, "RLE size is not [height, width]"),
        ({"counts": [1500], "size": [30, 50]}, "RLE mask is empty"),
    ],
)
def test_untrustworthy_rles_are_refused(segmentation: dict[str, object], reason: str) -> None:
    with pytest.raises(GeometryError) as caught:
        uncompressed_rle(segmentation, 30, 50, [0, 0, 1, 1])
    assert caught.value.reason == reason


@given(
    x=st.integers(0, 30),
    y=st.integers(0, 30),
    w=st.integers(1, 30),
    h=st.integers(1, 30),
)
def test_axis_aligned_rectangles_rasterize_to_their_clipped_area(x: int, y: int, w: int, h: int) -> None:
    rle = polygon_rle([[x, y, x + w, y, x + w, y + h, x, y + h]], 40, 40)
    assert rle.area == (min(x + w, 40) - x) * (min(y + h, 40) - y)
    assert (rle.repairs != ()) == (x + w > 40 or y + h > 40)
