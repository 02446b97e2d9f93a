"""The three shapes a V7 Darwin export comes in, read into one neutral form.

* COCO: one `output.json` (images with `tag_ids`, annotations, `tag_categories`), alone or in a zip.
* Darwin JSON 1.0: one file per image (`image{original_filename,width,height,seq}`, `annotations`
  of `polygon{path}`, `complex_polygon{path[[…]]}` and `tag{}`), in a folder or a zip. Parsed
  natively: darwin-py 3.x dropped 1.0 and silently skips complex polygons.
* Darwin JSON 2.0 (`version` "2.0", `item{name,slots}`): what `darwin dataset pull` gives; parsed
  with darwin-py's own `parse_darwin_json`.

The shape is detected from each file's content, never from its name. Zip members are only read.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from covid_cxr_unified.adapters.limits import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_JSON_BYTES
from covid_cxr_unified.adapters.urls import load_json, scrubbed
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError

COCO = "coco"
DARWIN_1 = "darwin-1.0"
DARWIN_2 = "darwin-2.0"
TOO_LARGE = "JSON file too large"


@dataclass(frozen=True)
class V7Annotation:
    """One region annotation. Exactly one of `rings` (flat x,y lists, filled even-odd) and `rle`
    (a COCO RLE dict as exported) is set, unless `unsupported` names a geometry we do not read."""

    annotation_id: str
    category: str
    rings: tuple[tuple[Any, ...], ...] | None = None
    rle: dict[str, Any] | None = None
    stated_area: float | None = None
    stated_bbox: tuple[float, ...] | None = None
    unsupported: str | None = None


@dataclass(frozen=True)
class V7Image:
    """One annotated image, whichever shape it came from. `error` is set for a file we could not read."""

    file_name: str
    source_file: str
    width: int | None = None
    height: int | None = None
    tags: tuple[str, ...] = ()
    annotations: tuple[V7Annotation, ...] = ()
    raw: dict[str, JsonValue] = field(default_factory=dict)
    error: str | None = None
    repairs: tuple[str, ...] = ()  # e.g. access tokens removed from URLs in `raw`


@dataclass
class Export:
    shape: str
    release: str
    images: list[V7Image]
    notes: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class JsonFile:
    name: str  # relative path, or the member name in a zip
    data: bytes
    path: Path | None  # on disk, when not in an archive
    too_large: str | None = None  # why `data` was not read: the file exceeds max_json_bytes


def detect_shape(document: object) -> str | None:
    """COCO, Darwin 1.0, Darwin 2.0, or None, from a parsed JSON document's keys."""
    if not isinstance(document, dict):
        return None
    if {"images", "annotations", "categories"} <= document.keys():
        return COCO
    if str(document.get("version", "")).startswith("2.") and isinstance(document.get("item"), dict):
        return DARWIN_2
    image = document.get("image")
    if isinstance(image, dict) and "annotations" in document and ("original_filename" in image or "filename" in image):
        return DARWIN_1
    return None


def read_export(
    root: Path,
    access: str,
    *,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS,
) -> Export:
    """Read a COCO json/zip or a folder/zip of Darwin JSON files."""
    if not root.exists():
        raise SourceNotFoundError(f"v7_darwin: nothing at {root}; {access}")
    files = list(_json_files(root, max_json_bytes, max_members))
    if not files:
        raise SourceFormatError(f"v7_darwin: no .json file in {root}; {access}")
    if len(files) == 1 and files[0].too_large:  # the whole export (e.g. a COCO file) is over the limit
        raise SourceFormatError(f"v7_darwin: {files[0].name} {files[0].too_large}")
    parsed = [(f, _load(f)) for f in files]
    shapes = {detect_shape(doc) for _, doc in parsed}
    if COCO in shapes:
        file, document = parsed[0]
        if len(parsed) != 1 or not isinstance(document, dict):
            names = ", ".join(f.name for f, _ in parsed[:5])
            raise SourceFormatError(f"v7_darwin: {root} mixes a COCO export with other JSON files ({names})")
        _check_coco(document, file)
        try:
            return read_coco(document, file)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise SourceFormatError(
                f"v7_darwin: {file.name} is not a well-formed COCO export ({type(exc).__name__}: {exc})"
            ) from exc
    return _read_darwin(root, parsed)


def _check_coco(document: dict[str, Any], file: JsonFile) -> None:
    """The COCO lists are lists of objects; anything else makes the whole export unreadable."""
    for key in ("images", "annotations", "categories", "tag_categories"):
        value = document.get(key, [])
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            raise SourceFormatError(f"v7_darwin: {file.name}: COCO '{key}' is not a list of objects")
    if not isinstance(document.get("info") or {}, dict):
        raise SourceFormatError(f"v7_darwin: {file.name}: COCO 'info' is not an object")


def _too_large(size: int, limit: int) -> str | None:
    return f"is {size} bytes, over the JSON size limit of {limit} (max_json_bytes)" if size > limit else None


def _json_files(root: Path, max_json_bytes: int, max_members: int) -> Iterator[JsonFile]:
    if root.is_dir():
        for path in sorted(root.rglob("*.json")):
            name = path.relative_to(root).as_posix()
            if not path.is_file():
                continue
            too_large = _too_large(path.stat().st_size, max_json_bytes)
            yield JsonFile(name, b"" if too_large else path.read_bytes(), path, too_large)
    elif zipfile.is_zipfile(root):
        yield from _zip_json_files(root, max_json_bytes, max_members)
    else:
        too_large = _too_large(root.stat().st_size, max_json_bytes)
        yield JsonFile(root.name, b"" if too_large else root.read_bytes(), root, too_large)


# What reading a damaged, encrypted or exotic zip can raise.
_ZIP_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError
)


def _zip_json_files(root: Path, max_json_bytes: int, max_members: int) -> list[JsonFile]:
    """The JSON members of a zip; a zip that cannot be read, or holds too many members, is refused."""
    files = []
    try:
        with zipfile.ZipFile(root) as archive:
            infos = archive.infolist()
            if len(infos) > max_members:
                raise SourceFormatError(
                    f"v7_darwin: {root.name} holds {len(infos)} members, over the limit of {max_members} "
                    "(max_archive_members)"
                )
            for info in sorted(infos, key=lambda i: i.filename):
                if info.is_dir() or not info.filename.endswith(".json") or info.filename.startswith("__MACOSX/"):
                    continue
                too_large = _too_large(info.file_size, max_json_bytes)
                data = b"" if too_large else archive.read(info)
                files.append(JsonFile(info.filename, data, None, too_large))
    except _ZIP_ERRORS as exc:
        raise SourceFormatError(f"v7_darwin: {root.name} is not a readable zip archive ({exc})") from exc
    return files


def _load(file: JsonFile) -> object:
    if file.too_large:
        return {"_too_large": file.too_large}
    try:
        return load_json(file.data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {"_unreadable": str(exc)}
    except RecursionError:
        return {"_unreadable": "JSON nested too deeply"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# --- COCO -------------------------------------------------------------------------------------------------


def read_coco(document: dict[str, Any], file: JsonFile) -> Export:
    categories = {c.get("id"): str(c.get("name")) for c in document.get("categories", [])}
    tag_names = {t.get("id"): str(t.get("name")) for t in document.get("tag_categories", [])}
    by_image: dict[object, list[V7Annotation]] = {}
    for ann in document.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(_coco_annotation(ann, categories))
    images: list[V7Image] = []
    seen_ids: set[object] = set()
    unknown_tag_ids = 0
    for entry in document.get("images", []):
        seen_ids.add(entry.get("id"))
        tag_ids = entry.get("tag_ids") or []
        unknown_tag_ids += sum(1 for t in tag_ids if t not in tag_names)
        raw, repairs = scrubbed(_coco_raw(entry, by_image.get(entry.get("id"), [])))
        images.append(
            V7Image(
                file_name=str(entry.get("file_name") or ""),
                source_file=file.name,
                width=_int(entry.get("width")),
                height=_int(entry.get("height")),
                tags=tuple(tag_names[t] for t in tag_ids if t in tag_names),
                annotations=tuple(by_image.get(entry.get("id"), ())),
                raw=raw,
                repairs=repairs,
            )
        )
    orphans = sum(len(anns) for image_id, anns in by_image.items() if image_id not in seen_ids)
    info = document.get("info") or {}
    return Export(
        shape=COCO,
        release=f"COCO export {info.get('date_created', 'undated')}; {file.name} sha256:{_sha(file.data)}",
        images=images,
        notes={
            "annotations_input": len(document.get("annotations", [])),
            "annotations_without_image": orphans,
            "unknown_tag_ids": unknown_tag_ids,
        },
    )


def _coco_annotation(ann: dict[str, Any], categories: dict[object, str]) -> V7Annotation:
    segmentation = ann.get("segmentation")
    common: dict[str, Any] = {
        "annotation_id": str(ann.get("id")),
        "category": categories.get(ann.get("category_id"), f"category_id {ann.get('category_id')}"),
        "stated_area": ann.get("area") if _is_number(ann.get("area")) else None,
        "stated_bbox": tuple(ann["bbox"]) if _is_box(ann.get("bbox")) else None,
    }
    if isinstance(segmentation, dict):
        return V7Annotation(rle=segmentation, **common)
    if isinstance(segmentation, list) and all(isinstance(ring, list) for ring in segmentation):
        return V7Annotation(rings=tuple(tuple(ring) for ring in segmentation), **common)
    return V7Annotation(unsupported=f"segmentation of type {type(segmentation).__name__}", **common)


def _coco_raw(entry: dict[str, Any], anns: list[V7Annotation]) -> dict[str, JsonValue]:
    """The image entry (without its expiring URLs) and a summary of its annotations (no geometry)."""
    kept = {k: v for k, v in entry.items() if k not in ("darwin_url", "coco_url", "flickr_url")}
    summary: list[JsonValue] = [
        {
            "id": a.annotation_id,
            "category": a.category,
            "area": a.stated_area,
            "bbox": list(a.stated_bbox) if a.stated_bbox else None,
            "kind": "rle" if a.rle is not None else "polygon" if a.rings is not None else a.unsupported,
        }
        for a in anns
    ]
    return {**kept, "annotations": summary}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_box(value: object) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# --- Darwin JSON ------------------------------------------------------------------------------------------


def _read_darwin(root: Path, parsed: list[tuple[JsonFile, object]]) -> Export:
    images: list[V7Image] = []
    shapes: dict[str, int] = {}
    digest = hashlib.sha256()
    for file, document in parsed:
        digest.update(file.name.encode() + b"\0" + file.data)
        shape = detect_shape(document)
        shapes[shape or "unrecognised"] = shapes.get(shape or "unrecognised", 0) + 1
        if shape == DARWIN_1:
            images.append(_guarded(read_darwin_v1, document, file))
        elif shape == DARWIN_2:
            images.append(_guarded(read_darwin_v2, document, file))
        else:
            reason = "unreadable JSON" if isinstance(document, dict) and "_unreadable" in document else None
            if file.too_large:
                reason = f"{TOO_LARGE}: {file.too_large}"
            images.append(V7Image(file.name, file.name, error=reason or "not a Darwin JSON or COCO file"))
    if not (shapes.get(DARWIN_1) or shapes.get(DARWIN_2)):
        raise SourceFormatError(
            f"v7_darwin: {root} holds neither a COCO export nor Darwin JSON files "
            f"({sum(shapes.values())} JSON file(s) of unknown shape)"
        )
    described = ", ".join(f"{n} {s}" for s, n in sorted(shapes.items()))
    return Export(
        shape=DARWIN_2 if shapes.get(DARWIN_2, 0) > shapes.get(DARWIN_1, 0) else DARWIN_1,
        release=f"Darwin JSON ({described}); {root.name} sha256:{digest.hexdigest()[:16]}",
        images=images,
        notes={"files_by_shape": dict(sorted(shapes.items()))},
    )


def _guarded(reader: Any, document: object, file: JsonFile) -> V7Image:
    try:
        image: V7Image = reader(document, file)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = str(exc) if file.path is None else str(exc).replace(str(file.path), file.name)  # no local path
        return V7Image(file.name, file.name, error=f"malformed Darwin JSON: {type(exc).__name__}: {detail}")
    return image


def read_darwin_v1(document: dict[str, Any], file: JsonFile) -> V7Image:
    image = document["image"]
    annotations: list[V7Annotation] = []
    tags: list[str] = []
    for index, ann in enumerate(document["annotations"]):
        name = str(ann.get("name", ""))
        ann_id = f"{file.name}#{index}"
        if "tag" in ann:
            tags.append(name)
        elif "polygon" in ann:
            annotations.append(V7Annotation(ann_id, name, rings=(_flat(ann["polygon"]["path"]),)))
        elif "complex_polygon" in ann:
            rings = tuple(_flat(path) for path in ann["complex_polygon"]["path"])
            annotations.append(V7Annotation(ann_id, name, rings=rings))
        else:
            kinds = sorted(set(ann) - {"name"})
            annotations.append(V7Annotation(ann_id, name, unsupported=f"Darwin annotation {kinds}"))
    kept = {k: v for k, v in image.items() if k not in ("url", "thumbnail_url")}
    raw, repairs = scrubbed({"image": kept, "dataset": document.get("dataset"), "tags": list(tags)})
    return V7Image(
        file_name=str(image.get("original_filename") or image.get("filename") or ""),
        source_file=file.name,
        width=_int(image.get("width")),
        height=_int(image.get("height")),
        tags=tuple(tags),
        annotations=tuple(annotations),
        raw=raw,
        repairs=repairs,
    )


def _flat(path: list[dict[str, Any]]) -> tuple[Any, ...]:
    """[{x, y}, …] -> (x0, y0, x1, y1, …); a point lacking x or y is kept as None (then refused)."""
    return tuple(value for point in path for value in (point.get("x"), point.get("y")))


def read_darwin_v2(document: dict[str, Any], file: JsonFile) -> V7Image:
    """Parse with darwin-py (`parse_darwin_json`), which reads a path: archive members go via a temp file."""
    annotation_file = _darwin_py_parse(file)
    annotations: list[V7Annotation] = []
    tags: list[str] = []
    for index, ann in enumerate(annotation_file.annotations):
        name = str(ann.annotation_class.name)
        kind = ann.annotation_class.annotation_type
        ann_id = f"{file.name}#{ann.id if ann.id else index}"
        if kind == "tag":
            tags.append(name)
        elif kind == "polygon":
            rings = tuple(_flat(path) for path in ann.data["paths"])
            annotations.append(V7Annotation(ann_id, name, rings=rings))
        else:
            annotations.append(V7Annotation(ann_id, name, unsupported=f"Darwin annotation type {kind}"))
    item = document["item"]
    slots = item.get("slots") or [{}]
    source_files = slots[0].get("source_files") or [{}]
    raw, repairs = scrubbed(
        {
            "item": {"name": item.get("name"), "path": item.get("path")},
            "slot_file_name": source_files[0].get("file_name"),
            "version": document.get("version"),
            "tags": list(tags),
        }
    )
    return V7Image(
        file_name=str(annotation_file.filename),
        source_file=file.name,
        width=_int(annotation_file.image_width),
        height=_int(annotation_file.image_height),
        tags=tuple(tags),
        annotations=tuple(annotations),
        raw=raw,
        repairs=repairs,
    )


def _darwin_py_parse(file: JsonFile) -> Any:
    try:
        from darwin.exceptions import UnrecognizableFileEncoding
        from darwin.utils import parse_darwin_json
    except ImportError as exc:
        raise SourceFormatError(
            "v7_darwin: Darwin JSON 2.0 is read with darwin-py; install it with pip install 'covid-cxr-unified[darwin]'"
        ) from exc
    try:
        if file.path is not None:
            return parse_darwin_json(file.path)
        with tempfile.TemporaryDirectory(prefix="v7-darwin-") as tmp:
            path = Path(tmp) / "item.json"
            path.write_bytes(file.data)
            return parse_darwin_json(path)
    except UnrecognizableFileEncoding as exc:  # its message holds the file's local path: not repeated
        raise ValueError("darwin-py cannot decode the file (not strict JSON?)") from exc
