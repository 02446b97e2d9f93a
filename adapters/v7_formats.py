"""The three shapes a V7 Darwin export comes in, read into one neutral form kept on disk.

* COCO: one `output.json` (images with `tag_ids`, annotations, `tag_categories`), alone or in a zip.
  Read as a stream (`v7_stream`): its large lists go item by item to a scratch `DiskIndex`, and the
  images are then put together from there, so memory does not grow with the export.
* Darwin JSON 1.0: one file per image (`image{original_filename,width,height,seq}`, `annotations`
  of `polygon{path}`, `complex_polygon{path[[…]]}` and `tag{}`), in a folder or a zip. Parsed
  natively: darwin-py 3.x dropped 1.0 and silently skips complex polygons. Read one file at a time.
* Darwin JSON 2.0 (`version` "2.0", `item{name,slots}`): what `darwin dataset pull` gives; parsed
  with darwin-py's own `parse_darwin_json`.

The shape is detected from each file's content, never from its name. Zip members are only read.
`read_export` returns the images as an `ImageTable` (position -> `V7Image`, on disk).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import tempfile
import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable
from covid_cxr_unified.adapters.limits import DEFAULT_MAX_ARCHIVE_MEMBERS, DEFAULT_MAX_JSON_BYTES
from covid_cxr_unified.adapters.urls import load_json, scrubbed
from covid_cxr_unified.adapters.v7_stream import Member, NotStreamable, members
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError

COCO = "coco"
DARWIN_1 = "darwin-1.0"
DARWIN_2 = "darwin-2.0"
TOO_LARGE = "JSON file too large"
COCO_LISTS = ("images", "annotations", "categories", "tag_categories")
STREAMED_LISTS = frozenset({"images", "annotations", "tag_categories"})  # `categories` is small: read whole


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


@dataclass(frozen=True)
class ImageSummary:
    """What discovery needs of an image: no geometry."""

    file_name: str
    source_file: str
    error: str | None
    tags: tuple[str, ...]
    categories: tuple[str, ...]  # of its annotations, in order


# On disk an image is its fields as JSON; reading it for its summary parses no coordinates. An
# annotation's rings of floats are packed as float64 bytes (base64), which read back several times faster
# than JSON numbers; any other geometry is kept as the JSON text of an object whose `segmentation` is
# COCO's (for a COCO export, the annotation's own text).


def image_json(image: V7Image) -> dict[str, Any]:
    """`image` as stored; `image_from_json` gives an equal V7Image back."""
    return {**vars(image), "annotations": [_annotation_json(a) for a in image.annotations]}


def _annotation_json(annotation: V7Annotation) -> dict[str, Any]:
    fields = {k: v for k, v in vars(annotation).items() if k not in ("rings", "rle")}
    segmentation = annotation.rle if annotation.rings is None else annotation.rings
    geometry = _stored_geometry(annotation.rings, annotation.rle, lambda: json.dumps({"segmentation": segmentation}))
    return {**fields, "geometry": geometry}


def _stored_geometry(
    rings: tuple[tuple[Any, ...], ...] | None, rle: dict[str, Any] | None, source: Callable[[], str]
) -> dict[str, Any] | None:
    if rings is not None and all(type(value) is float for ring in rings for value in ring):
        return {"rings": [base64.b64encode(array("d", ring).tobytes()).decode("ascii") for ring in rings]}
    return None if rings is None and rle is None else {"json": source()}


def _geometry(stored: dict[str, Any] | None) -> dict[str, Any]:
    if stored is None:
        return {}
    if "rings" in stored:
        return {"rings": tuple(tuple(array("d", base64.b64decode(ring)).tolist()) for ring in stored["rings"])}
    source: Any = load_json(stored["json"])
    return coco_geometry(source["segmentation"])


def image_from_json(value: dict[str, Any]) -> V7Image:
    annotations = tuple(_annotation_from_json(a) for a in value["annotations"])
    return V7Image(
        **{**value, "tags": tuple(value["tags"]), "repairs": tuple(value["repairs"]), "annotations": annotations}
    )


def _annotation_from_json(value: dict[str, Any]) -> V7Annotation:
    fields = {k: v for k, v in value.items() if k != "geometry"}
    bbox = None if fields["stated_bbox"] is None else tuple(fields["stated_bbox"])
    return V7Annotation(**{**fields, "stated_bbox": bbox, **_geometry(value["geometry"])})


def coco_geometry(segmentation: object) -> dict[str, Any]:
    """`rings` (a list of rings), `rle` (a dict) or, for anything else, `unsupported`."""
    if isinstance(segmentation, dict):
        return {"rle": segmentation}
    if isinstance(segmentation, list) and all(isinstance(ring, list) for ring in segmentation):
        return {"rings": tuple(tuple(ring) for ring in segmentation)}
    return {"unsupported": f"segmentation of type {type(segmentation).__name__}"}


class BatchWriter:
    """Adds to a DiskTable in batches (one transaction each). `get` and `in` see what is pending (for
    single-value tables); `flush()` before reading the table itself."""

    def __init__(self, table: DiskTable, size: int = 256) -> None:
        self.table = table
        self._size = size
        self._pending: list[tuple[str, Any]] = []
        self._latest: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        self._pending.append((key, value))
        self._latest[key] = value
        if len(self._pending) >= self._size:
            self.flush()

    def get(self, key: str, default: Any = None) -> Any:
        return self._latest[key] if key in self._latest else self.table.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self._latest or key in self.table

    def flush(self) -> None:
        if self._pending:
            self.table.update(self._pending)
        self._pending, self._latest = [], {}


class ChunkedList:
    """A list of JSON values on disk, `size` values to a row: append, then `close()`; `len`, iteration
    and reading by position (the chunk last read is kept, so reading in order costs a look-up a chunk)."""

    def __init__(self, table: DiskTable, size: int = 64) -> None:
        self._table = table
        self._size = size
        self._count = 0
        self._chunk: list[Any] = []  # the chunk being appended to
        self._read: tuple[int, list[Any]] | None = None

    def append(self, value: Any) -> None:
        self._chunk.append(value)
        self._count += 1
        if len(self._chunk) == self._size:
            self.close()

    def close(self) -> None:
        """Write what is appended (call once appending is done)."""
        if self._chunk:
            self._table[str((self._count - 1) // self._size)] = self._chunk
        self._chunk = []

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, position: int) -> Any:
        if not 0 <= position < self._count:
            raise IndexError(position)
        number, offset = divmod(position, self._size)
        read = self._read  # one assignment: copies of this list in threads share it safely
        if read is None or read[0] != number:
            read = self._read = (number, self._table[str(number)])
        return read[1][offset]

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._table.values():
            yield from chunk

    def __getstate__(self) -> dict[str, Any]:
        return {**vars(self), "_read": None}  # a copy reads its own chunks


class ImageTable:
    """An export's images in order, on disk: `len`, iteration and `[position]` give V7Images,
    `summaries()` ImageSummaries (stored apart, so reading them reads no geometry). `close()` once
    every image is appended."""

    def __init__(self, index: DiskIndex) -> None:
        self.index = index
        self._values = ChunkedList(index.table("images"))
        self._summaries = ChunkedList(index.table("image_summaries"), size=256)

    def append(self, image: V7Image) -> None:
        self.append_json(image_json(image))

    def append_json(self, value: dict[str, Any]) -> None:
        """Add an image already in its stored form (`image_json`)."""
        self._values.append(value)
        categories = [a["category"] for a in value["annotations"]]
        self._summaries.append([value["file_name"], value["source_file"], value["error"], value["tags"], categories])

    def close(self) -> None:
        self._values.close()
        self._summaries.close()

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, position: int) -> V7Image:
        return image_from_json(self._values[position])

    def __iter__(self) -> Iterator[V7Image]:
        return (image_from_json(value) for value in self._values)

    def summaries(self) -> Iterator[ImageSummary]:
        for file_name, source_file, error, tags, categories in self._summaries:
            yield ImageSummary(file_name, source_file, error, tuple(tags), tuple(categories))


@dataclass
class Export:
    shape: str
    release: str
    images: ImageTable
    notes: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class JsonFile:
    name: str  # relative path, or the member name in a zip
    data: bytes  # empty until read (`_with_data`)
    path: Path | None  # on disk, when not in an archive
    too_large: str | None = None  # why `data` is not read: the file exceeds max_json_bytes
    member: zipfile.ZipInfo | None = None  # in an archive


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
    workdir: Path | None = None,
) -> Export:
    """Read a COCO json/zip or a folder/zip of Darwin JSON files; indexes go to `workdir` (`DiskIndex`)."""
    if not root.exists():
        raise SourceNotFoundError(f"v7_darwin: nothing at {root}; {access}")
    files = _json_files(root, max_json_bytes, max_members)
    if not files:
        raise SourceFormatError(f"v7_darwin: no .json file in {root}; {access}")
    if len(files) == 1 and files[0].too_large:  # the whole export (e.g. a COCO file) is over the limit
        raise SourceFormatError(f"v7_darwin: {files[0].name} {files[0].too_large}")
    images = ImageTable(DiskIndex(workdir, name="v7"))
    export = _read_coco_file(root, files[0], images, workdir) if len(files) == 1 else None
    return export or _read_darwin(root, files, images)


def _too_large(size: int, limit: int) -> str | None:
    return f"is {size} bytes, over the JSON size limit of {limit} (max_json_bytes)" if size > limit else None


def _json_files(root: Path, max_json_bytes: int, max_members: int) -> list[JsonFile]:
    """The JSON files of the source, listed (their bytes are read later, one file at a time)."""
    if root.is_dir():
        paths = (path for path in sorted(root.rglob("*.json")) if path.is_file())
        return [
            JsonFile(p.relative_to(root).as_posix(), b"", p, _too_large(p.stat().st_size, max_json_bytes))
            for p in paths
        ]
    if zipfile.is_zipfile(root):
        return _zip_json_files(root, max_json_bytes, max_members)
    return [JsonFile(root.name, b"", root, _too_large(root.stat().st_size, max_json_bytes))]


# What reading a damaged, encrypted or exotic zip can raise.
_ZIP_ERRORS = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError
)


def _unreadable_zip(root: Path, exc: BaseException) -> SourceFormatError:
    return SourceFormatError(f"v7_darwin: {root.name} is not a readable zip archive ({exc})")


def _zip_json_files(root: Path, max_json_bytes: int, max_members: int) -> list[JsonFile]:
    """The JSON members of a zip; a zip that cannot be read, or holds too many members, is refused."""
    try:
        with zipfile.ZipFile(root) as archive:
            infos = archive.infolist()
    except _ZIP_ERRORS as exc:
        raise _unreadable_zip(root, exc) from exc
    if len(infos) > max_members:
        raise SourceFormatError(
            f"v7_darwin: {root.name} holds {len(infos)} members, over the limit of {max_members} "
            "(max_archive_members)"
        )
    return [
        JsonFile(info.filename, b"", None, _too_large(info.file_size, max_json_bytes), info)
        for info in sorted(infos, key=lambda i: i.filename)
        if not (info.is_dir() or not info.filename.endswith(".json") or info.filename.startswith("__MACOSX/"))
    ]


def _with_data(root: Path, files: list[JsonFile]) -> Iterator[JsonFile]:
    """Each file with its bytes read (none when too large), one at a time."""
    if all(file.path is not None for file in files):
        for file in files:
            yield replace(file, data=b"" if file.too_large or file.path is None else file.path.read_bytes())
        return
    try:
        with zipfile.ZipFile(root) as archive:
            for file in files:
                data = b"" if file.too_large or file.member is None else archive.read(file.member)
                yield replace(file, data=data)
    except _ZIP_ERRORS as exc:
        raise _unreadable_zip(root, exc) from exc


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


class _HashingReader:
    """Reads a binary stream, hashing what it reads; a damaged archive member makes it `NotStreamable`."""

    def __init__(self, binary: Any) -> None:
        self._binary = binary
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        try:
            data: bytes = self._binary.read(size)
        except _ZIP_ERRORS as exc:
            raise NotStreamable(str(exc)) from exc
        self.sha256.update(data)
        return data


@contextmanager
def _opened(root: Path, file: JsonFile) -> Iterator[_HashingReader]:
    with ExitStack() as stack:
        try:
            if file.path is not None:
                binary: Any = stack.enter_context(file.path.open("rb"))
            else:
                archive = stack.enter_context(zipfile.ZipFile(root))
                binary = stack.enter_context(archive.open(file.member or file.name))
        except _ZIP_ERRORS as exc:
            raise NotStreamable(str(exc)) from exc
        yield _HashingReader(binary)


def _read_coco_file(root: Path, file: JsonFile, images: ImageTable, workdir: Path | None) -> Export | None:
    """The export, when `file` is a COCO export; None for any other JSON file.

    A well-formed file is streamed. Anything else (not JSON, a damaged zip member, a key given twice)
    is read whole as before, so it fails, or is read, exactly as before."""
    try:
        with _opened(root, file) as binary:
            digest = binary.sha256.hexdigest
            return read_coco(members(binary, STREAMED_LISTS), file, lambda: digest()[:16], images, workdir)
    except NotStreamable:
        pass
    (whole,) = _with_data(root, [file])
    document = _load(whole)
    if detect_shape(document) != COCO or not isinstance(document, dict):
        return None
    return read_coco(_document_members(document), whole, lambda: _sha(whole.data), images, workdir)


def _document_members(document: dict[str, Any]) -> Iterator[Member]:
    for key, value in document.items():
        if key in STREAMED_LISTS and isinstance(value, list):
            yield Member(key, items=((item, json.dumps(item)) for item in value))
        else:
            yield Member(key, value=value)


def id_key(value: object) -> str:
    """A text key equal for JSON values a dict takes as one key (1, 1.0 and true; every NaN json.loads
    makes is one object); raises TypeError for a list or object, as a dict would."""
    hash(value)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return f"n:{value!r}"
    if isinstance(value, int | float):
        return f"n:{int(value)}"
    return f"s:{value}" if isinstance(value, str) else repr(value)


class _CocoParts:
    """A COCO export's members: small ones whole, the large lists on a scratch disk index, and for each
    large list, whether it holds a non-object and the first error reading it as COCO raises."""

    def __init__(self, scratch: DiskIndex) -> None:
        self.small: dict[str, Any] = {}
        self.keys: set[str] = set()
        self.sizes: Counter[str] = Counter()
        self.not_objects: set[str] = set()
        self.errors: dict[str, Exception] = {}
        self.images = ChunkedList(scratch.table("images"))  # image entries in order
        self.image_ids = BatchWriter(scratch.table("image_ids"))  # id key -> None
        self.annotations = BatchWriter(scratch.table("annotations", multi=True))  # image id key -> _annotation
        self.tag_names = BatchWriter(scratch.table("tag_names"))  # tag id key -> name

    def take(self, member: Member) -> None:
        self.keys.add(member.key)
        if member.items is None:
            self.small[member.key] = member.value
            return
        add = {"images": self._add_image, "annotations": self._add_annotation, "tag_categories": self._add_tag}
        for item, text in member.items:
            if not isinstance(item, dict):
                self.not_objects.add(member.key)
            elif member.key not in self.errors:
                try:
                    add[member.key](item, text)
                except (TypeError, ValueError, AttributeError, KeyError) as exc:
                    self.errors[member.key] = exc
            self.sizes[member.key] += 1
        self.images.close()
        for writer in (self.image_ids, self.annotations, self.tag_names):
            writer.flush()

    def _add_image(self, entry: dict[str, Any], text: str) -> None:
        key = id_key(entry.get("id"))
        for tag_id in entry.get("tag_ids") or []:
            hash(tag_id)  # an unhashable tag id fails here, as its look-up would
        self.images.append(entry)
        self.image_ids.add(key, None)

    def _add_annotation(self, entry: dict[str, Any], text: str) -> None:
        key = id_key(entry.get("image_id"))
        hash(entry.get("category_id"))
        self.annotations.add(key, _annotation(entry, text))

    def _add_tag(self, entry: dict[str, Any], text: str) -> None:
        self.tag_names.add(id_key(entry.get("id")), str(entry.get("name")))

    def check(self, file: JsonFile) -> None:
        """The COCO lists are lists of objects; anything else makes the whole export unreadable."""
        for key in COCO_LISTS:
            value = self.small.get(key, [])
            if key in self.not_objects or not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
                raise SourceFormatError(f"v7_darwin: {file.name}: COCO '{key}' is not a list of objects")
        if not isinstance(self.small.get("info") or {}, dict):
            raise SourceFormatError(f"v7_darwin: {file.name}: COCO 'info' is not an object")

    def categories(self) -> dict[str, str]:
        """Category names by id key; raises the first error the lists gave (categories first, as read)."""
        categories = {id_key(c.get("id")): str(c.get("name")) for c in self.small.get("categories", [])}
        for key in ("tag_categories", "annotations", "images"):
            if key in self.errors:
                raise self.errors[key]
        return categories


def _annotation(entry: dict[str, Any], text: str) -> dict[str, Any]:
    """A COCO annotation as stored until its category is known (`kind` is for the image's raw summary)."""
    geometry = coco_geometry(entry.get("segmentation"))
    rings, rle, unsupported = geometry.get("rings"), geometry.get("rle"), geometry.get("unsupported")
    return {
        "annotation_id": str(entry.get("id")),
        "category_id": entry.get("category_id"),
        "stated_area": entry.get("area") if _is_number(entry.get("area")) else None,
        "stated_bbox": entry["bbox"] if _is_box(entry.get("bbox")) else None,
        "unsupported": unsupported,
        "kind": "rle" if rle is not None else "polygon" if rings is not None else unsupported,
        "geometry": _stored_geometry(rings, rle, lambda: text),
    }


def read_coco(
    parts: Iterator[Member], file: JsonFile, digest: Callable[[], str], images: ImageTable, workdir: Path | None
) -> Export:
    """Read a COCO export's members (raises NotStreamable when they are not COCO's) into `images`."""
    coco = _CocoParts(DiskIndex(workdir, name="v7-coco"))
    for member in parts:
        coco.take(member)
    if not {"images", "annotations", "categories"} <= coco.keys:
        raise NotStreamable("not a COCO export")
    coco.check(file)
    try:
        categories = coco.categories()
        unknown_tag_ids = _coco_images(coco, categories, file, images)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise SourceFormatError(
            f"v7_darwin: {file.name} is not a well-formed COCO export ({type(exc).__name__}: {exc})"
        ) from exc
    info = coco.small.get("info") or {}
    return Export(
        shape=COCO,
        release=f"COCO export {info.get('date_created', 'undated')}; {file.name} sha256:{digest()}",
        images=images,
        notes={
            "annotations_input": coco.sizes["annotations"],
            "annotations_without_image": _orphans(coco),
            "unknown_tag_ids": unknown_tag_ids,
        },
    )


def _coco_images(coco: _CocoParts, categories: dict[str, str], file: JsonFile, images: ImageTable) -> int:
    """Put each image together with its tags and annotations, in order; returns the unknown tag ids."""
    tag_names = _Cached(coco.tag_names.table)
    unknown_tag_ids = 0
    for entry in coco.images:
        names = [tag_names.get(id_key(tag_id)) for tag_id in entry.get("tag_ids") or []]
        unknown_tag_ids += names.count(None)
        annotations = coco.annotations.table.get(id_key(entry.get("id")), [])
        for annotation in annotations:
            category_id = annotation.pop("category_id")
            annotation["category"] = categories.get(id_key(category_id), f"category_id {category_id}")
        raw, repairs = scrubbed(_coco_raw(entry, annotations))
        image = V7Image(
            file_name=str(entry.get("file_name") or ""),
            source_file=file.name,
            width=_int(entry.get("width")),
            height=_int(entry.get("height")),
            tags=tuple(name for name in names if name is not None),
            raw=raw,
            repairs=repairs,
        )
        stored = [{k: v for k, v in a.items() if k != "kind"} for a in annotations]
        images.append_json({**image_json(image), "annotations": stored})
    images.close()
    return unknown_tag_ids


class _Cached:
    """Look-ups in a DiskTable through a bounded cache: most tags (X-ray, Sex/M, …) recur on every image."""

    def __init__(self, table: DiskTable, limit: int = 256) -> None:
        self._table = table
        self._limit = limit
        self._cache: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key not in self._cache:
            if len(self._cache) >= self._limit:
                self._cache.clear()
            self._cache[key] = self._table.get(key)
        return self._cache[key]


def _orphans(coco: _CocoParts) -> int:
    """Annotations whose image_id no image has."""
    annotations, image_ids = coco.annotations.table, coco.image_ids.table
    return sum(len(annotations.get(key)) for key in annotations if key not in image_ids)


def _coco_raw(entry: dict[str, Any], annotations: list[dict[str, Any]]) -> dict[str, JsonValue]:
    """The image entry (without its expiring URLs) and a summary of its annotations (no geometry)."""
    kept = {k: v for k, v in entry.items() if k not in ("darwin_url", "coco_url", "flickr_url")}
    summary: list[JsonValue] = [
        {"id": a["annotation_id"], "category": a["category"], "area": a["stated_area"], "bbox": a["stated_bbox"],
         "kind": a["kind"]}
        for a in annotations
    ]
    return {**kept, "annotations": summary}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_box(value: object) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# --- Darwin JSON ------------------------------------------------------------------------------------------


def _read_darwin(root: Path, files: list[JsonFile], images: ImageTable) -> Export:
    """Read the files one at a time into `images`; errors that concern the whole source are raised once
    every file is read, in the order reading them all first gave."""
    shapes: Counter[str] = Counter()
    digest = hashlib.sha256()
    darwin_py_missing: SourceFormatError | None = None
    for file in _with_data(root, files):
        digest.update(file.name.encode() + b"\0" + file.data)
        document = _load(file)
        shape = detect_shape(document)
        shapes[shape or "unrecognised"] += 1
        try:
            images.append(_darwin_image(file, document, shape))
        except SourceFormatError as exc:
            darwin_py_missing = darwin_py_missing or exc
    images.close()
    if shapes[COCO]:
        names = ", ".join(f.name for f in files[:5])
        raise SourceFormatError(f"v7_darwin: {root} mixes a COCO export with other JSON files ({names})")
    if darwin_py_missing is not None:
        raise darwin_py_missing
    if not (shapes[DARWIN_1] or shapes[DARWIN_2]):
        raise SourceFormatError(
            f"v7_darwin: {root} holds neither a COCO export nor Darwin JSON files "
            f"({sum(shapes.values())} JSON file(s) of unknown shape)"
        )
    described = ", ".join(f"{n} {s}" for s, n in sorted(shapes.items()))
    return Export(
        shape=DARWIN_2 if shapes[DARWIN_2] > shapes[DARWIN_1] else DARWIN_1,
        release=f"Darwin JSON ({described}); {root.name} sha256:{digest.hexdigest()[:16]}",
        images=images,
        notes={"files_by_shape": dict(sorted(shapes.items()))},
    )


def _darwin_image(file: JsonFile, document: object, shape: str | None) -> V7Image:
    if shape == DARWIN_1:
        return _guarded(read_darwin_v1, document, file)
    if shape == DARWIN_2:
        return _guarded(read_darwin_v2, document, file)
    reason = "unreadable JSON" if isinstance(document, dict) and "_unreadable" in document else None
    if file.too_large:
        reason = f"{TOO_LARGE}: {file.too_large}"
    return V7Image(file.name, file.name, error=reason or "not a Darwin JSON or COCO file")


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
