"""A synthetic V7 Darwin COVID-19 export over the synthetic ieee8023 source, in every shape V7 ships.

Written from the synthetic ieee8023 folder (`write_ieee8023`): its COVID-19 rows in `images/` become
V7 images with the same file names and sizes, tagged the way V7 tagged the June-2020 metadata
(`PatientID:`, `Age:`, `Sex/`, `View/AP_Supine`, `Survival/Y`, `location:` stripped, …), with two lung
polygons per frontal X-ray. The same annotations are written as

* `coco/output.json` and `covid-only-coco.zip` (the 2020 server COCO export),
* `darwin-1.0/<id>.json` and `covid-only.zip` (per-image Darwin JSON 1.0),
* `darwin-2.0/<name>.json` (Darwin JSON 2.0 as darwin-py's exporter and `darwin dataset pull` write it).

Traps, each as in the real export unless marked: an "Ignore" complex polygon (outer ring + hole)
exported to COCO as uncompressed RLE with `size` [width, height] and `area` 0, and one with the
correct [height, width] (newer exporters); CT slices (one with lung polygons); laterals without masks,
one without a modality tag; the bare noise tag `19`; a mojibake `location:`; a V7 view and a
finding (COVID-19 -> `No Finding`) that ieee8023 relabelled later; a polygon reaching outside the
image; two file names ieee8023's metadata dropped, of a patient it still lists (one image file gone,
one still in `images/`: this generator writes that file into the ieee8023 folder).
Synthetic only: a 2-point polygon, an odd-length (COCO) / y-less (Darwin) polygon, a NaN coordinate,
a polygon wholly outside the image, an unknown class, an unknown tag, an implausible temperature, an
image without `PatientID`, an image whose stated size differs from the image file, and an image
without any tag (not annotated for COVID-19).
"""

from __future__ import annotations

import csv
import json
import math
import random
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from covid_cxr_unified.harmonize.synthetic.images import encode, synthetic_array

COVID_FINDING = "Pneumonia/Viral/COVID-19"
RELABELLED_FINDING = "No Finding"
TAG_VIEWS = {"PA": "PA", "AP": "AP", "AP Supine": "AP_Supine", "L": "Lateral", "Axial": "Axial", "Coronal": "Coronal"}
YES_NO_TAGS = {
    "survival": "Survival",
    "intubated": "Intubation",
    "intubation_present": "Intubation_present",
    "went_icu": "ICU_admission",
    "in_icu": "In_ICU_scan",
    "needed_supplemental_O2": "Needed_supplemental_O2",
    "extubated": "Extubated",
}
NUMBER_TAGS = {"temperature": "Temperature", "pO2_saturation": "pO2_saturation"}
V7_ONLY_NAME = "syn-v7-only.jpg"  # absent from ieee8023's metadata and from its images/
V7_REMOVED_NAME = "syn-v7-removed.jpg"  # absent from ieee8023's metadata, its file still in images/
MOJIBAKE_LOCATION = "location:Centro Hospitalar Universit\ufffdrio, Synthetic"
FIRST_SEQ = 6434

SHAPES = ("coco", "darwin-1.0", "darwin-2.0")
NON_NUMERIC = "polygon has non-numeric coordinates"
# Rejection reasons that depend on the shape: COCO can hold an odd-length list, a Darwin point can only
# lack `y`; Darwin 2.0 is strict JSON (darwin-py reads it with orjson), where NaN is written as null.
SHAPE_REASONS = {
    "odd": {"coco": "polygon has an odd number of coordinates", "darwin-1.0": NON_NUMERIC, "darwin-2.0": NON_NUMERIC},
    "nan": {
        "coco": "polygon has non-finite coordinates",
        "darwin-1.0": "polygon has non-finite coordinates",
        "darwin-2.0": NON_NUMERIC,
    },
}


@dataclass
class Ann:
    category: str
    rings: list[list[float]]
    coco_rle: str | None = None  # "swapped" or "correct": how a complex polygon goes into COCO
    expect: str = "mask"  # "mask", or the rejection reason (or a key of SHAPE_REASONS)


@dataclass
class Img:
    file_name: str
    width: int
    height: int
    tags: list[str]
    anns: list[Ann] = field(default_factory=list)
    ieee8023_row: dict[str, str] | None = None
    outcome: str = "record"  # "record", "excluded: <reason>", "quarantined: <reason>"
    outcome_with_images: str | None = None  # when the images folder changes the outcome


@dataclass(frozen=True)
class V7Fixture:
    root: Path
    ieee8023: Path  # the synthetic ieee8023 folder the export is built on
    images_dir: Path
    coco_json: Path
    coco_zip: Path
    darwin1_dir: Path
    darwin1_zip: Path
    darwin2_dir: Path
    images: int
    annotations: int
    annotations_by_class: dict[str, int]
    file_names: tuple[str, ...]
    expected_excluded: dict[str, int]
    expected_quarantined: dict[str, int]  # metadata-only
    expected_quarantined_with_images: dict[str, int]
    expected_records: int
    expected_records_with_images: int
    expected_masks: dict[str, int]  # by label, over every annotation of every image
    expected_rejected: dict[str, dict[str, int]]  # shape (SHAPES) -> reason -> count
    expected_repairs: dict[str, int]  # shape -> repairs (swapped RLE size in COCO, clipped polygons)
    expected_linked: int
    expected_unmatched: tuple[str, ...]
    view_disagreements: tuple[str, ...]  # file names whose V7 view ieee8023 relabelled
    finding_disagreements: tuple[str, ...]  # file names V7 tags COVID-19 and ieee8023 no longer does
    specs: tuple[Img, ...]


def write_v7_darwin(root: Path, ieee8023: Path, *, seed: int = 0) -> V7Fixture:
    """Write every shape of the export under `root`; `ieee8023` is a `write_ieee8023` folder."""
    rng = random.Random(seed)
    specs = _specs(rng, ieee8023)
    root.mkdir(parents=True, exist_ok=True)
    coco = _coco(specs)
    coco_json = root / "coco" / "output.json"
    coco_json.parent.mkdir(exist_ok=True)
    coco_json.write_text(json.dumps(coco, ensure_ascii=False), encoding="utf-8")
    coco_zip = root / "covid-only-coco.zip"
    with zipfile.ZipFile(coco_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(coco_json, "output.json")
    darwin1_dir, darwin1_zip, darwin2_dir = root / "darwin-1.0", root / "covid-only.zip", root / "darwin-2.0"
    darwin1_dir.mkdir(exist_ok=True)
    darwin2_dir.mkdir(exist_ok=True)
    with zipfile.ZipFile(darwin1_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, spec in enumerate(specs):
            text = json.dumps(_darwin1(spec, FIRST_SEQ + number), ensure_ascii=False, indent=2)
            name = f"{1676192 + number}.json"
            (darwin1_dir / name).write_text(text, encoding="utf-8")
            archive.writestr(name, text)
            v2 = json.dumps(_darwin2(spec, FIRST_SEQ + number), ensure_ascii=False)
            (darwin2_dir / f"{Path(spec.file_name).stem}.json").write_text(v2, encoding="utf-8")
    return _fixture(root, ieee8023, specs, coco_json, coco_zip, darwin1_dir, darwin1_zip, darwin2_dir)


# --- which images, which tags, which annotations ------------------------------------------------------


def _specs(rng: random.Random, ieee8023: Path) -> list[Img]:
    with (ieee8023 / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = ieee8023 / "images"
    on_disk = [r for r in rows if r["folder"] == "images" and (images / r["filename"]).is_file()]
    specs = [_image_from_row(rng, row, images / row["filename"]) for row in on_disk if row["finding"] == COVID_FINDING]
    untagged_row, relabelled_row = [r for r in on_disk if r["finding"] == RELABELLED_FINDING][:2]
    untagged = _image_from_row(rng, untagged_row, images / untagged_row["filename"])
    untagged.tags = [t for t in untagged.tags if t.startswith("PatientID:")]  # no label tags at all
    # A prior relabelled `No Finding` upstream after June 2020 (the real 2c35005f.jpg): V7 still tags COVID-19.
    specs += [untagged, _image_from_row(rng, relabelled_row, images / relabelled_row["filename"])]
    specs += _not_in_ieee8023(rng, images, patient=specs[0].tags)
    _add_traps(rng, specs)
    return specs


def _image_from_row(rng: random.Random, row: dict[str, str], path: Path) -> Img:
    with Image.open(path) as picture:
        width, height = picture.size
    tags = [f"PatientID:{row['patientid']}", "COVID-19", "Viral Pneumonia"]
    tags += [f"Age:{row['age']}"] if row["age"] else []
    tags += [f"Sex/{row['sex']}"] if row["sex"] else []
    tags += [f"View/{TAG_VIEWS[row['view']]}"]
    tags += ["CT"] if row["modality"] == "CT" else ["X-ray"]
    tags += [f"location:{row['location'].strip()}"] if row["location"].strip() else []
    tags += [f"{tag}/{row[col]}" for col, tag in YES_NO_TAGS.items() if row[col]]
    tags += [f"{tag}:{row[col]}" for col, tag in NUMBER_TAGS.items() if row[col]]
    rng.shuffle(tags)
    spec = Img(row["filename"], width, height, tags, ieee8023_row=row)
    if row["modality"] == "CT":
        spec.outcome = "excluded: CT slice: not a chest X-ray"
    elif row["view"] != "L":
        spec.anns = _lungs(rng, width, height)
    return spec


def _lungs(rng: random.Random, width: int, height: int) -> list[Ann]:
    return [
        Ann("Lung", [_ellipse(rng, width * (0.5 + side * 0.2), height * 0.5, width * 0.16, height * 0.34)])
        for side in (-1, 1)
    ]


def _ellipse(rng: random.Random, cx: float, cy: float, rx: float, ry: float, points: int = 14) -> list[float]:
    ring: list[float] = []
    for k in range(points):
        angle = 2 * math.pi * k / points
        jitter = 1 + rng.uniform(-0.05, 0.05)
        ring += [round(cx + rx * jitter * math.cos(angle), 1), round(cy + ry * jitter * math.sin(angle), 1)]
    return ring


def _not_in_ieee8023(rng: random.Random, images: Path, patient: list[str]) -> list[Img]:
    """Two images of a still-listed patient that ieee8023's metadata dropped after June 2020 (as the
    real Hannover patient 253): one whose file is gone too, one whose file an older checkout still has."""
    pid = next(t for t in patient if t.startswith("PatientID:"))
    tags = [pid, "COVID-19", "Viral Pneumonia", "X-ray", "View/PA"]
    gone = Img(V7_ONLY_NAME, 56, 48, list(tags), anns=_lungs(rng, 56, 48))
    gone.outcome_with_images = "quarantined: image missing"
    kept = Img(V7_REMOVED_NAME, 56, 48, list(tags), anns=_lungs(rng, 56, 48))
    (images / V7_REMOVED_NAME).write_bytes(encode(synthetic_array(rng, 56, 48), fmt="JPEG", mode="L"))
    return [gone, kept]


def _add_traps(rng: random.Random, specs: list[Img]) -> None:
    frontal = [s for s in specs if s.anns and s.ieee8023_row is not None]
    lateral = next(s for s in specs if s.ieee8023_row is not None and s.ieee8023_row["view"] == "L")
    ct = next(s for s in specs if s.outcome.startswith("excluded"))
    ct.anns = _lungs(rng, ct.width, ct.height)  # like the real coronal CT slice with two lung polygons
    lateral.tags = [t for t in lateral.tags if t not in ("X-ray", "CT")]  # no modality tag
    a, b, c, d, e, f, g, h = frontal[:8]
    a.anns.append(Ann("Ignore", [_ring(a, 0.35, 0.3, 0.3), _ring(a, 0.42, 0.37, 0.14)], coco_rle="swapped"))
    b.anns.append(Ann("Ignore", [_ring(b, 0.3, 0.25, 0.35), _ring(b, 0.38, 0.33, 0.16)], coco_rle="correct"))
    b.tags.append("19")
    c.tags = [t for t in c.tags if not t.startswith("location:")] + [MOJIBAKE_LOCATION]
    c.anns.append(Ann("Ignore", [[-4.0, 2.0, 10.0, 2.0, 10.0, 9.0, -4.0, 9.0]]))  # reaches outside: clipped
    d.anns.append(Ann("Ignore", [[3.0, 3.0, 9.0, 9.0]], expect="polygon has fewer than 3 points"))
    d.anns.append(Ann("Ignore", [[3.0, 3.0, 9.0, 3.0, 9.0, 9.0, 3.0]], expect="odd"))
    e.anns.append(Ann("Ignore", [[3.0, 3.0, math.nan, 3.0, 9.0, 9.0]], expect="nan"))
    e.anns.append(Ann("Ignore", [[500.0, 500.0, 520.0, 500.0, 520.0, 520.0]], expect="polygon lies outside the image"))
    f.anns.append(Ann("Pacemaker", [[3.0, 3.0, 9.0, 3.0, 9.0, 9.0]], expect="unknown annotation class"))
    f.tags = [t for t in f.tags if not t.startswith("Temperature:")] + ["Smoker/Y", "Temperature:95"]
    g.tags = [t for t in g.tags if not t.startswith("PatientID:")]
    g.outcome = "quarantined: PatientID tag missing"
    h.width += 8  # the export states a size the image file does not have
    h.anns = _lungs(rng, h.width, h.height)
    h.outcome_with_images = "quarantined: image size differs from the annotated image"
    relabelled = frontal[8]
    old_view = "PA" if relabelled.ieee8023_row is None or relabelled.ieee8023_row["view"] != "PA" else "AP"
    relabelled.tags = [t for t in relabelled.tags if not t.startswith("View/")] + [f"View/{old_view}"]


def _ring(spec: Img, left: float, top: float, size: float) -> list[float]:
    x0, y0 = spec.width * left, spec.height * top
    w, h = spec.width * size, spec.height * size
    return [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]


# --- COCO -------------------------------------------------------------------------------------------------


def _coco(specs: list[Img]) -> dict[str, Any]:
    tag_ids: dict[str, int] = {}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    next_id = 1
    for number, spec in enumerate(specs):
        seq = FIRST_SEQ + number
        ids = [tag_ids.setdefault(tag, len(tag_ids)) for tag in spec.tags]
        images.append(
            {
                "license": 0,
                "file_name": spec.file_name,
                "coco_url": "n/a",
                "height": spec.height,
                "width": spec.width,
                "date_captured": "",
                "flickr_url": "n/a",
                "darwin_url": f"https://darwin.example/api/images/{1676192 + number}/original",
                "darwin_workview_url": f"https://darwin.example/workview?dataset=901&image={seq}",
                "id": seq,
                "tag_ids": ids,
            }
        )
        next_id += len(spec.tags)  # the 2020 exporter counted tag annotations too: ids have gaps
        for ann in spec.anns:
            annotations.append({"id": next_id, "image_id": seq, **_coco_geometry(spec, ann)})
            next_id += 1
    return {
        "info": {"description": "Exported from Darwin", "year": 2020, "date_created": "2020/06/17"},
        "licenses": [{"url": "n/a", "id": 0, "name": "placeholder license"}],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": 0, "name": "Lung", "supercategory": "root"},
            {"id": 1, "name": "Ignore", "supercategory": "root"},
            {"id": 2, "name": "Pacemaker", "supercategory": "root"},
        ],
        "tag_categories": [{"id": i, "name": name} for name, i in tag_ids.items()],
    }


CATEGORY_IDS = {"Lung": 0, "Ignore": 1, "Pacemaker": 2}


def _coco_geometry(spec: Img, ann: Ann) -> dict[str, Any]:
    common = {"category_id": CATEGORY_IDS[ann.category], "extra": {}}
    if ann.coco_rle is None:
        ring = ann.rings[0]
        return {**common, "segmentation": [ring], "area": _shoelace(ring), "bbox": _ring_box(ring), "iscrowd": 0}
    filled = np.zeros((spec.height, spec.width), dtype=np.uint8)
    for part in coco_mask.frPyObjects(ann.rings, spec.height, spec.width):
        filled ^= coco_mask.decode(part)
    size = [spec.width, spec.height] if ann.coco_rle == "swapped" else [spec.height, spec.width]
    ys, xs = np.nonzero(filled)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    segmentation = {"counts": _runs(filled.ravel(order="F")), "size": size}
    return {**common, "segmentation": segmentation, "area": 0, "bbox": bbox, "iscrowd": 1}


def _runs(flat: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: alternating runs, starting with a (possibly empty) run of zeros."""
    runs: list[int] = []
    current, length = 0, 0
    for value in flat.tolist():
        if value == current:
            length += 1
        else:
            runs.append(length)
            current, length = value, 1
    runs.append(length)
    return runs


def _shoelace(ring: list[float]) -> float:
    xs, ys = ring[0::2], ring[1::2]
    if len(xs) < 3 or any(not math.isfinite(v) for v in ring) or len(ring) % 2:
        return 0.0
    total = sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs)))
    return round(abs(total) / 2, 2)


def _ring_box(ring: list[float]) -> list[float]:
    xs, ys = ring[0::2], ring[1::2]
    finite_x = [v for v in xs if math.isfinite(v)] or [0.0]
    finite_y = [v for v in ys if math.isfinite(v)] or [0.0]
    return [min(finite_x), min(finite_y), max(finite_x) - min(finite_x), max(finite_y) - min(finite_y)]


# --- Darwin JSON --------------------------------------------------------------------------------------------


def _points(ring: list[float | None]) -> list[dict[str, float | None]]:
    """[{x, y}, …]; an odd trailing value becomes a point without `y` (all Darwin JSON can say)."""
    points: list[dict[str, float | None]] = [{"x": ring[i], "y": ring[i + 1]} for i in range(0, len(ring) - 1, 2)]
    if len(ring) % 2:
        points.append({"x": ring[-1]})
    return points


def _nan_as_null(ring: list[float]) -> list[float | None]:
    """What orjson (darwin-py's serializer) writes for NaN."""
    return [v if math.isfinite(v) else None for v in ring]


def _darwin1(spec: Img, seq: int) -> dict[str, Any]:
    annotations: list[dict[str, Any]] = []
    for ann in spec.anns:
        if len(ann.rings) == 1:
            annotations.append({"name": ann.category, "polygon": {"path": _points(list(ann.rings[0]))}})
        else:
            paths = [_points(list(r)) for r in ann.rings]
            annotations.append({"name": ann.category, "complex_polygon": {"path": paths}})
    annotations += [{"name": tag, "tag": {}} for tag in spec.tags]
    return {
        "image": {
            "seq": seq,
            "width": spec.width,
            "height": spec.height,
            "filename": f"{seq:08d}{Path(spec.file_name).suffix}",
            "original_filename": spec.file_name,
            "url": f"https://darwin.example/api/images/{seq}/original",
            "thumbnail_url": f"https://darwin.example/api/images/{seq}/thumbnail",
            "workview_url": f"https://darwin.example/workview?dataset=901&image={seq}",
        },
        "dataset": "COVID-19 Chest X-Ray Dataset",
        "annotated": True,
        "annotations": annotations,
    }


def _darwin2(spec: Img, seq: int) -> dict[str, Any]:
    """The shape darwin-py's `build_image_annotation` writes (version, schema_ref, item, slots)."""
    annotations: list[dict[str, Any]] = []
    for number, ann in enumerate(spec.anns):
        paths = [_points(_nan_as_null(ring)) for ring in ann.rings]
        box = _ring_box([v for ring in ann.rings for v in ring])
        annotations.append(
            {
                "id": f"{seq:08d}-{number:04d}",
                "name": ann.category,
                "polygon": {"paths": paths},
                "bounding_box": {"x": box[0], "y": box[1], "w": box[2], "h": box[3]},
            }
        )
    annotations += [{"id": f"{seq:08d}-t{n:03d}", "name": tag, "tag": {}} for n, tag in enumerate(spec.tags)]
    return {
        "version": "2.0",
        "schema_ref": "https://darwin-public.s3.eu-west-1.amazonaws.com/darwin_json/2.0/schema.json",
        "item": {
            "name": spec.file_name,
            "path": "/",
            "source_info": {
                "dataset": {"name": "COVID-19 Chest X-Ray Dataset", "slug": "covid-19-chest-x-ray-dataset"},
                "item_id": f"synthetic-{seq}",
                "team": {"name": "v7-labs", "slug": "v7-labs"},
                "workview_url": f"https://darwin.example/workview?dataset=901&image={seq}",
            },
            "slots": [
                {
                    "type": "image",
                    "slot_name": "0",
                    "width": spec.width,
                    "height": spec.height,
                    "thumbnail_url": None,
                    "source_files": [{"file_name": spec.file_name, "url": None}],
                }
            ],
        },
        "annotations": annotations,
    }


# --- what a correct adapter must find -----------------------------------------------------------------------


def _fixture(
    root: Path,
    ieee8023: Path,
    specs: list[Img],
    coco_json: Path,
    coco_zip: Path,
    darwin1_dir: Path,
    darwin1_zip: Path,
    darwin2_dir: Path,
) -> V7Fixture:
    plain = Counter(s.outcome for s in specs)
    with_images = Counter(s.outcome_with_images or s.outcome for s in specs)
    masks: Counter[str] = Counter()
    rejected: dict[str, Counter[str]] = {shape: Counter() for shape in SHAPES}
    repairs: Counter[str] = Counter()
    for spec in specs:
        for ann in spec.anns:
            if ann.expect == "mask":
                masks[ann.category.lower()] += 1
                clipped = any(min(r[0::2]) < 0 or min(r[1::2]) < 0 for r in ann.rings)
                repairs.update({shape: int(clipped) for shape in SHAPES})
                repairs["coco"] += ann.coco_rle == "swapped"
                continue
            for shape in SHAPES:
                rejected[shape][SHAPE_REASONS.get(ann.expect, {}).get(shape, ann.expect)] += 1
    linked = [s for s in specs if s.ieee8023_row is not None]
    relabelled = tuple(
        s.file_name
        for s in linked
        if s.ieee8023_row is not None
        and any(t.startswith("View/") for t in s.tags)
        and f"View/{TAG_VIEWS[s.ieee8023_row['view']]}" not in s.tags
    )
    return V7Fixture(
        root=root,
        ieee8023=ieee8023,
        images_dir=ieee8023 / "images",
        coco_json=coco_json,
        coco_zip=coco_zip,
        darwin1_dir=darwin1_dir,
        darwin1_zip=darwin1_zip,
        darwin2_dir=darwin2_dir,
        images=len(specs),
        annotations=sum(len(s.anns) for s in specs),
        annotations_by_class=dict(Counter(a.category for s in specs for a in s.anns)),
        file_names=tuple(s.file_name for s in specs),
        expected_excluded=_split(plain, "excluded: "),
        expected_quarantined=_split(plain, "quarantined: "),
        expected_quarantined_with_images=_split(with_images, "quarantined: "),
        expected_records=plain["record"],
        expected_records_with_images=with_images["record"],
        expected_masks=dict(masks),
        expected_rejected={shape: dict(c) for shape, c in rejected.items()},
        expected_repairs=dict(repairs),
        expected_linked=len(linked),
        expected_unmatched=tuple(s.file_name for s in specs if s.ieee8023_row is None),
        view_disagreements=relabelled,
        finding_disagreements=tuple(
            s.file_name
            for s in linked
            if s.ieee8023_row is not None and s.ieee8023_row["finding"] == RELABELLED_FINDING and "COVID-19" in s.tags
        ),
        specs=tuple(specs),
    )


def _split(counts: Counter[str], prefix: str) -> dict[str, int]:
    return {outcome.removeprefix(prefix): n for outcome, n in counts.items() if outcome.startswith(prefix)}
