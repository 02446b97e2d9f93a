"""Radiologist ROIs of BIMCV iteration 1: AIM 4 XML (as exported from XNAT/OHIF) -> polygons -> RLE.

One `ImageAnnotation` per finding: its `name` element's `value` is the label (PadChest vocabulary,
e.g. `ground glass pattern`), each `MarkupEntity` holds `TwoDimensionSpatialCoordinate`s with
`coordinateIndex`, `x`, `y` in pixel units. The file name ties the ROI to its image:
`<sub>_<ses>_…_mod-cr_roi.xml` belongs to `<sub>_<ses>_…_cr.png`; the release stores it under a path
that contains literal back-slashes (`derivatives\\roi\\sub-…\\…_roi.xml`).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers import expat

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as coco_mask

_ROI_NAME = re.compile(r"^(?P<prefix>sub-S\d+_ses-E\d+.*)_mod-(?P<mod>cr|dx)_roi\.xml$")


class RoiError(ValueError):
    """An ROI file that cannot be read as AIM XML with polygons."""


@dataclass(frozen=True)
class RoiPolygon:
    label: str
    points: tuple[tuple[float, float], ...]
    annotation_id: str | None


def image_stem_of_roi(path: str) -> str | None:
    """The image stem an ROI file belongs to; the last path part after `/` or `\\`."""
    name = re.split(r"[\\/]", path)[-1]
    match = _ROI_NAME.match(name)
    return None if match is None else f"{match['prefix']}_{match['mod']}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def parse_aim(data: bytes) -> list[RoiPolygon]:
    """Every polygon of an AIM document, in document order."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise RoiError("XML with a DTD or entities is refused")
    _refuse_dtd(data)  # also in encodings the byte check cannot see (UTF-16, UTF-32)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise RoiError(f"not well-formed XML: {exc}") from exc
    polygons = []
    annotations = [e for e in root.iter() if _local(e.tag) == "ImageAnnotation"]
    if not annotations:
        raise RoiError("no ImageAnnotation element")
    for annotation in annotations:
        name = _child(annotation, "name")
        label = (name.get("value") or "").strip() if name is not None else ""
        uid = _child(annotation, "uniqueIdentifier")
        annotation_id = uid.get("root") if uid is not None else None
        for markup in (e for e in annotation.iter() if _local(e.tag) == "MarkupEntity"):
            points = []
            for coord in (e for e in markup.iter() if _local(e.tag) == "TwoDimensionSpatialCoordinate"):
                values = {_local(c.tag): c.get("value") for c in coord}
                try:
                    points.append((int(values["coordinateIndex"] or ""), float(values["x"] or ""),
                                   float(values["y"] or "")))
                except (KeyError, ValueError) as exc:
                    raise RoiError(f"bad TwoDimensionSpatialCoordinate: {values}") from exc
            points.sort()
            polygons.append(RoiPolygon(label, tuple((x, y) for _, x, y in points), annotation_id))
    return polygons


def _refuse_dtd(data: bytes) -> None:
    def refuse(*_: object) -> None:
        raise RoiError("XML with a DTD or entities is refused")

    scanner = expat.ParserCreate()
    scanner.StartDoctypeDeclHandler = refuse
    scanner.EntityDeclHandler = refuse
    try:
        scanner.Parse(data, True)
    except expat.ExpatError as exc:
        raise RoiError(f"not well-formed XML: {exc}") from exc


@dataclass(frozen=True)
class Rle:
    counts: str
    size: tuple[int, int]  # (height, width)
    area: int
    bbox: tuple[float, float, float, float]


def polygon_rle(points: tuple[tuple[float, float], ...], width: int, height: int) -> Rle:
    """Fill a polygon (even-odd, pixel units) on a height x width canvas and encode it as COCO RLE."""
    if len(points) < 3:
        raise RoiError(f"a polygon needs 3 points, got {len(points)}")
    if not all(math.isfinite(v) for point in points for v in point):
        raise RoiError("polygon has non-finite coordinates")  # PIL would silently draw something else
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(list(points), fill=1, outline=1)
    binary = np.asfortranarray(np.array(canvas, dtype=np.uint8))
    encoded = coco_mask.encode(binary)
    counts = encoded["counts"]
    if int(coco_mask.area(encoded)) == 0:
        raise RoiError("polygon lies outside the image")
    return Rle(
        counts=counts.decode("ascii") if isinstance(counts, bytes) else str(counts),
        size=(height, width),
        area=int(coco_mask.area(encoded)),
        bbox=tuple(float(v) for v in coco_mask.toBbox(encoded)),  # type: ignore[arg-type]
    )
