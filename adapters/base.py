"""The adapter base: every source is read through it.

An adapter declares its source facts and two short methods: `items()` lists raw items (rows, files)
and `to_record()` maps one raw item to a Record. The base does the rest: discovery checks, image
loading and probing, validation, exclusion and quarantine accounting, unmapped-vocabulary counting
and progress. Every raw item ends as exactly one of: record, excluded (with reason), quarantined
(with reason).

Work units: after `discover()`, `units()` splits the items into independent `WorkUnit`s (row ranges,
image ranges, subjects, archives) that can run in any process; each runs on its own copy of the
adapter (`unit_worker()`), and `absorb()` merges its counts in unit order. State that spans items
(per-patient conflicts, linkage, previous studies) is computed in `discover()`; state an item adds
to is named in `unit_state` and summed across units; `finish()` writes notes from the sums.
"""

from __future__ import annotations

import copy
import hashlib
import io
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar

from PIL import Image, UnidentifiedImageError
from pydantic import JsonValue, ValidationError
from tqdm import tqdm

from covid_cxr_unified.adapters.limits import DEFAULT_MAX_ARCHIVE_MEMBERS as DEFAULT_MAX_ARCHIVE_MEMBERS
from covid_cxr_unified.adapters.limits import DEFAULT_MAX_IMAGE_PIXELS as DEFAULT_MAX_IMAGE_PIXELS
from covid_cxr_unified.adapters.limits import DEFAULT_MAX_JSON_BYTES as DEFAULT_MAX_JSON_BYTES
from covid_cxr_unified.adapters.limits import IMAGE_FORMATS, max_image_bytes
from covid_cxr_unified.adapters.pixels import picture_hashes
from covid_cxr_unified.schema.record import ImageRef, Record
from covid_cxr_unified.schema.vocab import Source

T = TypeVar("T")
RecordFilter = Callable[[Record], str | None]


class ExcludeItem(Exception):
    """Raised by `to_record` for an item outside the scope of the build (e.g. CT)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QuarantineItem(Exception):
    """Raised while reading or mapping an item that is in scope but cannot be trusted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SourceItem:
    """One raw input item: a metadata row, an annotation file, an image file."""

    key: str
    source_file: str
    row: int | None
    fields: Mapping[str, JsonValue]
    image_path: str | None = None  # relative to the adapter's image root, when the item has an image


@dataclass(frozen=True)
class WorkUnit:
    """An independent share of a source's items; results are merged in `index` order."""

    index: int
    key: str  # stable and readable, e.g. "rows 1-256", "archive covid19_posi_subjects_1.tar.gz"
    start: int = 0
    stop: int = 0
    archive: str | None = None
    size: int = 0  # items expected, for progress


@dataclass
class UnitDelta:
    """What one unit adds to its adapter: counts, `unit_state` values and a digest of its image bytes."""

    report: AdapterReport
    state: dict[str, Any]
    digest: str


@dataclass(frozen=True)
class Emitted:
    record: Record
    image_bytes: bytes | None


@dataclass(frozen=True)
class ItemNote:
    key: str
    reason: str
    detail: str = ""


@dataclass
class AdapterReport:
    """Counts for one source. `input_items == records + Σexcluded + Σquarantined` always holds."""

    source: str
    input_items: int = 0
    records: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    quarantined: Counter[str] = field(default_factory=Counter)
    unmapped: dict[str, Counter[str]] = field(default_factory=dict)
    flags: Counter[str] = field(default_factory=Counter)
    excluded_items: list[ItemNote] = field(default_factory=list)
    quarantined_items: list[ItemNote] = field(default_factory=list)
    notes: dict[str, JsonValue] = field(default_factory=dict)

    def absorb(self, other: AdapterReport) -> None:
        """Add the counts of `other` (a unit's report) to this one."""
        self.input_items += other.input_items
        self.records += other.records
        self.excluded.update(other.excluded)
        self.quarantined.update(other.quarantined)
        for name, counter in other.unmapped.items():
            self.unmapped.setdefault(name, Counter()).update(counter)
        self.flags.update(other.flags)
        self.excluded_items += other.excluded_items
        self.quarantined_items += other.quarantined_items
        self.notes.update(other.notes)

    def reconciles(self) -> bool:
        accounted = self.records + sum(self.excluded.values()) + sum(self.quarantined.values())
        return self.input_items == accounted

    def summary(self) -> dict[str, Any]:
        """The `inspect --json` shape; `notes` holds source-specific accounting (e.g. BIMCV's
        participants and label rows, V7's linkage)."""
        return {
            "source": self.source,
            "input_items": self.input_items,
            "records": self.records,
            "excluded": dict(sorted(self.excluded.items())),
            "quarantined": dict(sorted(self.quarantined.items())),
            "unmapped": {f: dict(sorted(c.items())) for f, c in sorted(self.unmapped.items())},
            "notes": self.notes,
        }

    def details(self) -> dict[str, Any]:
        """Everything, for the build report."""
        return {
            **self.summary(),
            "reconciles": self.reconciles(),
            "flags": dict(sorted(self.flags.items())),
            "excluded_items": [vars(n) for n in self.excluded_items],
            "quarantined_items": [vars(n) for n in self.quarantined_items],
            "notes": self.notes,
        }


class MappingContext:
    """Passed to `to_record`: exact vocabulary look-ups that count what they cannot map."""

    def __init__(self, report: AdapterReport) -> None:
        self._report = report
        self.flags: list[str] = []

    def lookup(self, field_name: str, table: Mapping[str, T], raw: str | None) -> T | None:
        """`table[raw]`, or None; a non-blank raw value missing from the table is counted as unmapped."""
        if raw is None:
            return None
        if raw in table:
            return table[raw]
        self.unmapped(field_name, raw)
        return None

    def unmapped(self, field_name: str, raw: str) -> None:
        self._report.unmapped.setdefault(field_name, Counter())[raw] += 1

    def flag(self, flag: str) -> None:
        """A value kept as published but worth a look (implausible lab value, conflicting sex, …)."""
        self.flags.append(flag)
        self._report.flags[flag] += 1


@dataclass(frozen=True)
class ImageProbe:
    sha256: str
    format: str
    mode: str
    width: int
    height: int
    bits_stored: int
    pixel_sha256: str
    perceptual_hash: str


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii.gz", ".nii", ".dcm")


def source_files(names: Iterable[str]) -> list[str]:
    """The relative POSIX names a source checksum covers, sorted: no images, nothing in hidden folders."""
    return sorted(
        name for name in names
        if not name.endswith(IMAGE_SUFFIXES) and not any(part.startswith(".") for part in name.split("/"))
    )


def files_checksum(root: Path, names: Iterable[str]) -> str:
    """sha256 over `name<TAB>sha256 of its bytes` for each named path under `root` that is a regular file."""
    digest = hashlib.sha256()
    for name in names:
        path = root / name
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            line = f"{name}\t{hashlib.file_digest(handle, 'sha256').hexdigest()}\n"
        digest.update(line.encode(errors="surrogateescape"))
    return digest.hexdigest()


_BITS_BY_MODE = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16}


def probe_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageProbe:
    """Hash and fully decode image bytes; raise QuarantineItem for anything a user could not load."""
    if not data:
        raise QuarantineItem("image empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise QuarantineItem("image too large", f"{width}x{height} > {max_pixels} pixels")
            img.load()
            fmt, mode = img.format or "unknown", img.mode
            identity, near = picture_hashes(img)
    except QuarantineItem:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own limit, when it is below max_pixels
        raise QuarantineItem("image too large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise QuarantineItem("image unreadable", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise QuarantineItem("image unreadable", str(exc)) from exc
    return ImageProbe(
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        mode=mode,
        width=width,
        height=height,
        bits_stored=_BITS_BY_MODE.get(mode, 8),
        pixel_sha256=identity,
        perceptual_hash=near,
    )


def image_ref(path: str, probe: ImageProbe, archive: str | None = None) -> ImageRef:
    return ImageRef(
        path=path,
        archive=archive,
        sha256=probe.sha256,
        format=probe.format,
        mode=probe.mode,
        width=probe.width,
        height=probe.height,
        bits_stored=probe.bits_stored,
        photometric_interpretation=None,
        pixel_sha256=probe.pixel_sha256,
        perceptual_hash=probe.perceptual_hash,
    )


class Adapter(ABC):
    """Base of every source adapter. Subclasses declare source facts as class attributes."""

    name: ClassVar[Source]
    version: ClassVar[str]
    title: ClassVar[str]
    homepage: ClassVar[str]
    citation: ClassVar[str]  # BibTeX
    access: ClassVar[str]  # how a user obtains the files
    # Attributes that processing items adds to (Counter, set, int): summed over units by `absorb`.
    unit_state: ClassVar[tuple[str, ...]] = ()
    unit_items: ClassVar[int] = 256  # items per unit, for adapters that cut ranges

    def __init__(
        self,
        root: Path,
        *,
        images: Path | None = None,
        metadata_only: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS,
        related: Mapping[Source, Path] | None = None,
        workdir: Path | None = None,
        num_proc: int = 1,
        progress: bool = False,
    ) -> None:
        self.root = root
        self.workdir = workdir  # where discovery indexes go (`DiskIndex`); None: the system's temp folder
        self.num_proc = num_proc  # processes that discovery may use (BIMCV: archives scanned at once)
        self.progress = progress  # progress bars in discovery
        self.related = dict(related or {})  # other sources of the same build, e.g. for linkage
        self.images = images
        self.metadata_only = metadata_only
        self.max_image_pixels = max_image_pixels
        self.max_json_bytes = max_json_bytes
        self.max_archive_members = max_archive_members
        self.report = AdapterReport(source=self.name.value)
        self._read_images: list[str] = []  # key and sha256 of every image probed, for `delta()`

    # --- what an adapter declares -------------------------------------------------------------
    @abstractmethod
    def discover(self) -> None:
        """Find and check the source files; raise SourceNotFoundError/SourceFormatError saying what
        is missing, where it looked and how to obtain it."""

    @abstractmethod
    def items(self) -> Iterator[SourceItem]:
        """Every raw input item, in a deterministic order."""

    @abstractmethod
    def to_record(self, item: SourceItem, image: ImageRef | None, ctx: MappingContext) -> Record:
        """Map one raw item; raise ExcludeItem or QuarantineItem when it cannot become a record."""

    def read_image(self, item: SourceItem) -> bytes:
        """The bytes of the item's image; raise QuarantineItem('image missing') when absent."""
        if self.images is None or item.image_path is None:
            raise QuarantineItem("image missing", "no images folder given")
        parts = item.image_path.replace("\\", "/").split("/")
        drive = len(parts[0]) == 2 and parts[0][1] == ":"
        if PurePosixPath(item.image_path).is_absolute() or ".." in parts or drive:
            raise QuarantineItem("image path unsafe", f"{item.image_path!r} leaves the images folder")
        path = self.images / item.image_path
        if not path.is_file():
            raise QuarantineItem("image missing", str(item.image_path))
        if not path.resolve().is_relative_to(self.images.resolve()):
            raise QuarantineItem("image path unsafe", f"{item.image_path!r} is a link out of the images folder")
        try:
            self.check_image_bytes(path.stat().st_size)
            return path.read_bytes()
        except OSError as exc:
            raise QuarantineItem("image unreadable", f"{item.image_path}: {exc.strerror or exc}") from exc

    def check_image_bytes(self, size: int) -> None:
        """Quarantine, unread, an image file too large to hold `max_image_pixels` pixels."""
        limit = max_image_bytes(self.max_image_pixels)
        if size > limit:
            raise QuarantineItem("image too large", f"{size} bytes > {limit} (from max_image_pixels)")

    def check_scope(self, item: SourceItem, ctx: MappingContext) -> None:  # noqa: B027 - optional hook
        """Raise ExcludeItem for out-of-scope items before any image is read."""

    # --- work units (override to split a source; the default is one unit of every item) ----------
    def units(self) -> list[WorkUnit]:
        """Independent units of the discovered items, in a deterministic order."""
        return [WorkUnit(0, "all")]

    def items_of(self, unit: WorkUnit) -> Iterator[SourceItem]:
        """The items of one unit; together the units hold every item of `items()` once."""
        return self.items()

    def unit_inputs(self, unit: WorkUnit) -> list[Path]:
        """The files a unit reads beyond discovery (for resume keys); default: its items' images."""
        if self.images is None or self.metadata_only:
            return []
        return [self.images / item.image_path for item in self.items_of(unit) if item.image_path]

    def unit_checksum(self, unit: WorkUnit) -> str:
        """Known before the unit runs (a resume key): name, size and mtime of every file it reads."""
        digest = hashlib.sha256()
        for path in self.unit_inputs(unit):
            try:
                stat = path.stat()
                digest.update(f"{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode(errors="surrogateescape"))
            except OSError:
                digest.update(f"{path.name}\tmissing\n".encode(errors="surrogateescape"))
        return f"stat:{digest.hexdigest()}"

    def source_checksum(self) -> str:
        """Content hash of the inputs read in discovery (tables, annotation files), after `discover()`.
        Default: the root file, or every file under the root folder except images and hidden folders.
        Image bytes are not read here: each unit hashes the images it reads (`UnitDelta.digest`)."""
        if self.root.is_file():
            return files_checksum(self.root.parent, [self.root.name])
        names = (path.relative_to(self.root).as_posix() for path in self.root.rglob("*"))
        return files_checksum(self.root, source_files(names))

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once every unit is absorbed: write notes that depend on all items."""

    def range_units(self, count: int, label: str) -> list[WorkUnit]:
        """Units of `unit_items` consecutive items each (item numbers 1-based in keys)."""
        step = self.unit_items
        return [
            WorkUnit(i, f"{label} {start + 1}-{min(start + step, count)}", start, min(start + step, count),
                     size=min(step, count - start))
            for i, start in enumerate(range(0, count, step))
        ]

    def unit_worker(self) -> Adapter:
        """A copy that shares the discovered state and counts into a fresh report and `unit_state`."""
        worker = copy.copy(self)
        worker.report = AdapterReport(source=self.name.value)
        worker._read_images = []
        for name in self.unit_state:
            setattr(worker, name, type(getattr(self, name))())
        return worker

    def run_unit(
        self, unit: WorkUnit, exclude: RecordFilter | None = None, tick: Callable[[], object] | None = None
    ) -> Iterator[Emitted]:
        """Process one unit (call on a `unit_worker()`); `delta()` then holds what it added."""
        for item in self.items_of(unit):
            emitted = self._process(item, exclude)
            if tick is not None:
                tick()
            if emitted is not None:
                yield emitted

    def delta(self) -> UnitDelta:
        digest = hashlib.sha256("".join(self._read_images).encode(errors="surrogateescape")).hexdigest()
        return UnitDelta(self.report, {name: getattr(self, name) for name in self.unit_state}, digest)

    def absorb(self, delta: UnitDelta) -> None:
        """Add a unit's counts and state to this adapter (in unit order)."""
        self.report.absorb(delta.report)
        for name, value in delta.state.items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, set):
                mine |= set(value)
            else:
                setattr(self, name, mine + value)

    # --- what the base does ---------------------------------------------------------------------
    def run(self, *, progress: bool = False, exclude: RecordFilter | None = None) -> Iterator[Emitted]:
        """Yield one Emitted per record, unit after unit; fill `self.report` as it goes.

        `exclude(record)` may return a reason to exclude a valid record (e.g. a license policy).
        """
        self.discover()
        with tqdm(desc=f"{self.name.value}", unit=" items", disable=not progress) as bar:
            for unit in self.units():
                worker = self.unit_worker()
                yield from worker.run_unit(unit, exclude, tick=bar.update)
                self.absorb(worker.delta())
        self.finish()

    def _process(self, item: SourceItem, exclude: RecordFilter | None = None) -> Emitted | None:
        self.report.input_items += 1
        ctx = MappingContext(self.report)
        try:
            self.check_scope(item, ctx)
            data, ref = self._load_image(item)
            record = self.to_record(item, ref, ctx)
            reason = None if exclude is None else exclude(record)
            if reason is not None:
                raise ExcludeItem(reason)
        except ExcludeItem as exc:
            self.report.excluded[exc.reason] += 1
            self.report.excluded_items.append(ItemNote(item.key, exc.reason))
            return None
        except QuarantineItem as exc:
            self._quarantine(item, exc.reason, exc.detail)
            return None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            self._quarantine(item, "record invalid", f"{where}: {first['msg']}")
            return None
        self.report.records += 1
        return Emitted(record, data)

    def _quarantine(self, item: SourceItem, reason: str, detail: str) -> None:
        self.report.quarantined[reason] += 1
        self.report.quarantined_items.append(ItemNote(item.key, reason, detail))

    def _load_image(self, item: SourceItem) -> tuple[bytes | None, ImageRef | None]:
        if self.metadata_only or item.image_path is None:
            return None, None
        data = self.read_image(item)
        probe = probe_image(data, self.max_image_pixels)
        self._read_images.append(f"{item.key}\t{probe.sha256}\n")  # the hash probe_image made
        return data, image_ref(item.image_path, probe)

