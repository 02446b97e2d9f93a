"""BIMCV COVID-19+ (`covid19_posi`): an extracted release folder or the folder of its `.tar.gz` parts.

Reads iteration 1 (June 2020: `labels_covid19_posi.tsv`, `EHR/sil_reg_covid.tsv`, per-archive folders)
and iterations 1+2 (Oct 2020: `covid19_posi/`, `labels_covid_posi.tsv`, `sil_reg_covid_posi.tsv`,
`sub-X/sub-X_sessions.tsv`). Archives are verified against `sha1sums.txt` and read member by member,
never extracted. One record per CR/DX PNG; CT volumes are excluded by scope. Table parsers are in
`bimcv_tables`, vocabulary in `bimcv_vocab`, sidecars in `dicom_json`, ROIs in `aim_roi`.

Discovery keeps what it learns per file, image, session and subject in a `DiskIndex` (one SQLite
file, see `_Index`), never in Python containers, so memory does not grow with the release; lookups
go through a small cache, as units go subject by subject. Archive members other than images are
stored there too. Units only read the index; what they record is merged into it by `absorb`.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import heapq
import itertools
import os
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

from pydantic import JsonValue
from tqdm import tqdm

from covid_cxr_unified.adapters import aim_roi, dicom_json
from covid_cxr_unified.adapters.base import (
    Adapter,
    ExcludeItem,
    MappingContext,
    QuarantineItem,
    SourceItem,
    UnitDelta,
    WorkUnit,
    files_checksum,
    source_files,
)
from covid_cxr_unified.adapters.bimcv_tables import (
    DiagnosticTest,
    LabelRow,
    Participant,
    Session,
    parse_labels,
    parse_participants,
    parse_partitions,
    parse_sessions,
    parse_tests,
)
from covid_cxr_unified.adapters.bimcv_vocab import (
    COVID_LABELS,
    FILENAME_VIEWS,
    KNOWN_SESSION_ISSUES,
    LABEL_CUIS,
    LABELS,
    MARKERS,
    MODALITIES,
    SERIES_DESCRIPTIONS,
    SERIES_DESCRIPTIONS_WITHOUT_VIEW,
    SEXES,
    TEST_BASIS_PRIORITY,
    TEST_KINDS,
    TEST_RESULTS,
    UNCHANGED,
    VIEW_CODES,
    VIEW_POSITIONS,
)
from covid_cxr_unified.adapters.dicom_json import DicomJson, SidecarError, dicom_age_years
from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable
from covid_cxr_unified.adapters.limits import max_image_bytes
from covid_cxr_unified.adapters.tar_reader import (
    is_archive,
    iter_archive,
    iter_archive_pieces,
    read_sha1sums,
    verify_sha1,
)
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
from covid_cxr_unified.harmonize.processes import imap_ordered
from covid_cxr_unified.schema.licenses import license_record
from covid_cxr_unified.schema.record import (
    MAX_AGE_YEARS,
    Clinical,
    Covid19Evidence,
    Covid19Label,
    FindingLabel,
    ImageRef,
    LicenseRecord,
    Mask,
    Outcomes,
    Patient,
    Provenance,
    Record,
    Study,
    ViewInfo,
)
from covid_cxr_unified.schema.vocab import (
    Covid19Basis,
    Finding,
    LabelState,
    MaskLabel,
    Modality,
    OffsetReference,
    Source,
    View,
    ViewBasis,
)

LICENSE_ID = "LicenseRef-BIMCV-COVID19-RUA"
LICENSE_RAW = "BIMCV-COVID19 Dataset Research Use Agreement"
ATTRIBUTION = (
    "BIMCV COVID-19+ (de la Iglesia Vayá et al., arXiv:2006.01174), Medical Imaging Databank of the "
    "Valencia Region"
)

# Release generations, told apart by the name of the labels table (never mix two releases).
RELEASES: dict[str, str] = {
    "labels_covid19_posi.tsv": "BIMCV-COVID19+ iteration 1",
    "labels_covid_posi.tsv": "BIMCV-COVID19+ iterations 1+2",
}
TEST_TABLES = ("sil_reg_covid.tsv", "sil_reg_covid_posi.tsv")
SHA1SUMS = "sha1sums.txt"

# sub-<S>_ses-<E>[_acq-<n>][_run-<n>][_bp-<part>][_vp-<view>]_<mod>.<ext>  (bimcv_format.md §1.4)
IMAGE_NAME = re.compile(
    r"^(?P<sub>sub-S\d+)_(?P<ses>ses-E\d+)(?:_acq-\d+)?(?:_run-\d+)?(?:_bp-[a-z]+)?(?:_vp-(?P<vp>[a-z]+))?"
    r"_(?P<mod>cr|dx|ct)\.(?P<ext>png|nii\.gz)$"
)
_SUB, _SES = re.compile(r"^sub-S\d+$"), re.compile(r"^ses-E\d+$")
GRAYSCALE_MODES = {"L", "I;16", "I;16B", "I;16L", "I", "1"}
# Photometric Interpretation (0028,0004) of a grey radiograph; any other value is counted as unmapped.
GREY_PHOTOMETRICS = frozenset({"MONOCHROME1", "MONOCHROME2"})
SIDECAR_TOO_LARGE = "JSON file too large"
CT_REASON = "CT volume: not a chest X-ray"

POS = LabelState.POSITIVE

CHUNK_BYTES = 256 << 10  # an archive member is stored, and a file read, in pieces of this size
BATCH_PAIRS = 1024  # pairs written to the index per transaction
BATCH_BYTES = 2 << 20  # bytes of member pieces written per transaction
SORT_RUN = 2048  # pairs sorted in memory at a time
RECENT = 1024  # decoded look-ups kept

T = TypeVar("T")


def mids_path(name: str) -> str | None:
    """`sub-X/ses-Y/mod-rx/<file>` for a file inside a MIDS image folder at any depth, else None."""
    parts = name.split("/")
    if len(parts) >= 4 and parts[-2] == "mod-rx" and _SES.match(parts[-3]) and _SUB.match(parts[-4]):
        return "/".join(parts[-4:])
    return None


class _Image(NamedTuple):
    """An image file of the release as the index holds it (a JSON list)."""

    path: str  # MIDS path
    archive: str | None
    name: str  # file name under the root folder, or member name
    number: int  # in MIDS path order
    sidecar: str | None  # file name of its readable sidecar (read and parsed again where a unit maps it)
    sidecar_error: str | None  # why a sidecar of the image is unreadable
    rois: bool  # whether ROI files name it

    def to_json(self) -> list[JsonValue]:
        return [self.path, self.archive, self.name, self.number, self.sidecar, self.sidecar_error, self.rois]


class _Index:
    """The tables of one discovery, in one `DiskIndex` (MIDS path: `sub-X/ses-Y/mod-rx/<file>`). A scan
    of one archive fills `found`, `stored`, `pieces` and `unread` of an index of its own."""

    def __init__(self, index: DiskIndex) -> None:
        self.index = index
        table = index.table
        # file name (or member name) -> its archive (None in a folder), in name order; set by discovery
        self.files = table("tree")
        self.found = table("found")  # archive mode: member name -> archive, in archive order
        # archive mode: non-image member read -> [size, its bytes if they are one piece, else None]; bytes are kept
        # as latin-1 text (a JSON value, one character per byte)
        self.stored = table("stored")
        self.pieces = table("pieces")  # archive mode: f"{number}:{member}" -> a piece of its bytes
        self.unread = table("unread")  # archive mode: non-image member over its limit -> its size
        self.participants = table("participants")  # sub -> Participant
        self.sessions = table("sessions")  # ses -> Session (sessions.tsv)
        self.sessions_of = table("sessions_of", multi=True)  # sub -> ses, from every table and image
        self.labels = table("labels", multi=True)  # ses -> LabelRow, rows in table order (the first is kept)
        self.tests = table("tests", multi=True)  # sub -> DiagnosticTest, in table order
        self.found_images = table("found_images", multi=True)  # MIDS path -> [archive, file name], name order
        self.found_duplicates = table("found_duplicates")  # file name -> archive, in path order
        self.images = table("images")  # MIDS path -> _Image
        self.image_at = table("image_at")  # str(number) -> _Image, in path order
        self.duplicates = table("duplicates")  # file name of a second file of a MIDS path -> archive, name order
        self.image_subjects = table("image_subjects")  # sub (of a MIDS path) -> True
        self.image_sessions = table("image_sessions")  # ses (of a MIDS path) -> True
        self.sidecars = table("sidecars")  # image stem -> [sidecar name, ISO Study Date, Study Time]
        self.bad_sidecars = table("bad_sidecars")  # image stem -> why its sidecar is unreadable
        self.dicom_days = table("dicom_days", multi=True)  # ses -> [ISO Study Date, Study Time] of an image
        self.rois = table("rois", multi=True)  # image stem -> [ROI file name, polygons]
        self.bad_rois = table("bad_rois")  # ROI file name -> why it is unreadable
        self.partitions = table("partitions")  # MIDS path listed in partitions.tsv -> True
        # merged from the units by `absorb`
        self.recorded_subjects = table("recorded_subjects")
        self.recorded_sessions = table("recorded_sessions")
        self.roi_attached = table("roi_attached")


class _Batched:
    """Pairs for one table, written a batch per transaction; `get` and `in` also see those not yet written."""

    def __init__(self, table: DiskTable, limit: int = BATCH_PAIRS) -> None:
        self.table = table
        self.limit = limit
        self._pairs: list[tuple[str, JsonValue]] = []
        self._latest: dict[str, JsonValue] = {}
        self._weight = 0

    def add(self, key: str, value: JsonValue, weight: int = 1) -> None:
        self._pairs.append((key, value))
        if not self.table.multi:
            self._latest[key] = value
        self._weight += weight
        if self._weight >= self.limit:
            self.flush()

    def get(self, key: str) -> Any:
        return self._latest[key] if key in self._latest else self.table.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._latest or key in self.table

    def flush(self) -> None:
        self.table.update(self._pairs)
        self._pairs, self._latest, self._weight = [], {}, 0

    def __enter__(self) -> _Batched:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if kind is None:
            self.flush()


def _batches(pairs: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(pairs)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _in_key_order(index: DiskIndex, table: DiskTable) -> Iterator[tuple[str, Any]]:
    """The pairs of `table` in Python's key order: runs sorted in memory, kept on disk, then merged."""
    runs = []
    for number, run in enumerate(_batches(table.items(), SORT_RUN)):
        runs.append(index.table(f"{table.name}_run{number}"))
        runs[-1].update(sorted(run, key=_key))
    return heapq.merge(*(run.items() for run in runs), key=_key)


# --- archives: each is verified and indexed on its own (in any process), then merged in order ---


@dataclass(frozen=True)
class _ArchiveScan:
    """One archive, verified, with its members indexed in the index file `at`."""

    archive: str
    sha1: str
    listing: bool | None  # whether its verified `*.tar-tvf.txt` names exactly its members; None: it has none
    at: Path


def _scan_archive(archive: Path, sums: dict[str, str], max_members: int, max_json_bytes: int, at: Path) -> _ArchiveScan:
    """Check the archive's sha1 and index its members into a new index file `at` (runs in any process)."""
    verify_sha1(archive, sums)
    part = _Index(DiskIndex(at=at))
    members = _index_members(archive, part, max_members, max_json_bytes)
    listing = part.index.table("listing")
    if not _read_listing(archive, sums, listing):
        return _ArchiveScan(archive.name, sums[archive.name], None, at)
    matches = len(listing) == members and all(path in part.found for path in listing)  # its members are distinct
    return _ArchiveScan(archive.name, sums[archive.name], matches, at)


def _index_members(archive: Path, part: _Index, max_members: int, max_json_bytes: int) -> int:
    """Index the members of one archive, storing the bytes of those that are not images; how many.
    A member of one piece (a sidecar, say) is stored whole in `stored`: read with one look-up."""
    count = 0
    json_limit = functools.partial(_json_limit, max_json_bytes)
    members_of = iter_archive_pieces(archive, lambda n: not _is_image(n), max_members, json_limit, CHUNK_BYTES)
    with (
        _Batched(part.found) as found,
        _Batched(part.stored, BATCH_BYTES) as stored,
        _Batched(part.pieces, BATCH_BYTES) as pieces,
        _Batched(part.unread) as unread,
    ):
        for name, member, offset, piece in members_of:
            if piece is not None and offset > 0:  # a further piece of a large member
                pieces.add(f"{offset // CHUNK_BYTES}:{name}", piece.decode("latin-1"), len(piece))
                continue
            if name in found:
                raise _in_two_archives(name, archive.name, archive.name)
            found.add(name, archive.name)
            count += 1
            if piece is None:
                if not _is_image(name):
                    unread.add(name, member.size)
            elif member.size <= CHUNK_BYTES:
                stored.add(name, [member.size, piece.decode("latin-1")], len(piece) + 1)
            else:
                stored.add(name, [member.size, None])
                pieces.add(f"0:{name}", piece.decode("latin-1"), len(piece))
    return count


def _in_two_archives(name: str, first: str, second: str) -> SourceFormatError:
    return SourceFormatError(f"bimcv: {name} is in both {first} and {second}; pass the parts of one release only")


def _json_limit(max_json_bytes: int, name: str) -> int | None:
    return max_json_bytes if name.endswith(".json") else None


def _read_listing(archive: Path, sums: dict[str, str], listing: DiskTable) -> bool:
    """Put the file paths of the archive's verified `*.tar-tvf.txt` listing in `listing`; False when
    there is none."""
    stem = archive.name.removesuffix(".tgz") if archive.name.endswith(".tgz") else archive.name
    path = archive.with_name(f"{stem}.tar-tvf.txt")
    if not path.is_file():
        return False
    verify_sha1(path, sums)
    with _Batched(listing) as paths, path.open(encoding="utf-8", newline="") as lines:
        try:
            for line in (piece for text in lines for piece in text.splitlines()):  # as str.splitlines()
                if line.startswith("-"):
                    paths.add("/".join(p for p in line.split()[-1].split("/") if p not in ("", ".")), True)
        except UnicodeDecodeError as exc:
            raise SourceFormatError(f"bimcv: {path.name} is not UTF-8 text") from exc
    return True


def _key(pair: tuple[str, Any]) -> str:
    return pair[0]


def _sorted_tree(folder: str, prefix: str = "") -> Iterator[str]:
    """The files under `folder` (what `os.walk` finds: no symlinked folders), in sorted path order. A
    folder is listed among its siblings as `name/`, which is where its paths fall in that order."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(_walk_name(entry) for entry in entries)
    except OSError:  # like os.walk: an unreadable folder is skipped
        return
    for name in names:
        if name.endswith("/"):
            yield from _sorted_tree(f"{folder}/{name[:-1]}", f"{prefix}{name}")
        elif name:
            yield f"{prefix}{name}"


def _walk_name(entry: os.DirEntry[str]) -> str:
    """`name/` for a folder to walk into, `` for a symlinked folder (skipped), else the file's name."""
    try:
        is_dir = entry.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        return entry.name
    try:
        is_link = entry.is_symlink()
    except OSError:
        is_link = False
    return "" if is_link else f"{entry.name}/"


class BimcvAdapter(Adapter):
    name: ClassVar[Source] = Source.BIMCV
    # A unit's own; the parent merges them into its index in `absorb`.
    unit_state: ClassVar[tuple[str, ...]] = ("_recorded_subjects", "_recorded_sessions", "_roi_attached")
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str] = "BIMCV COVID-19+ (BIMCV-COVID19, positive partition)"
    homepage: ClassVar[str] = "https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/"
    citation: ClassVar[str] = (
        "@article{vaya2020bimcv,\n"
        "  title={BIMCV COVID-19+: a large annotated dataset of RX and CT images from COVID-19 patients},\n"
        "  author={de la Iglesia Vay{\\'a}, Maria and Saborit, Jose Manuel and Montell, Joaquim Angel "
        "and others},\n"
        "  journal={arXiv 2006.01174},\n"
        "  year={2020}\n}"
    )
    access: ClassVar[str] = (
        "request access at https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/ and accept the BIMCV-COVID19 "
        "Research Use Agreement; download the release (e.g. share BIMCV-COVID19-cIter_1_2: the .tar.gz parts, "
        "*.tar-tvf.txt and sha1sums.txt) and pass that folder, or the folder you extracted it to, as --bimcv"
    )

    def __init__(self, root: Path, **kwargs: object) -> None:
        super().__init__(root, **kwargs)  # type: ignore[arg-type]
        self.release = ""
        self.license: LicenseRecord = license_record(LICENSE_ID, LICENSE_RAW, attribution=ATTRIBUTION)
        self._discovered: _Index | None = None
        self._archives: list[Path] = []
        self._verified: dict[str, str] = {}  # archive mode: archive name -> sha1 verified in discovery
        self._current: tuple[str, bytes | None, int] | None = None  # archive mode: image, bytes, size
        self._meta = ""
        self._junk_participants = 0
        self._participant_rows = 0
        self._label_rows = 0
        self._test_rows = 0
        self._recent: dict[tuple[str, str], Any] = {}  # (kind, key) -> decoded look-up, see `_recall`
        self._recorded_subjects: set[str] = set()
        self._recorded_sessions: set[str] = set()
        self._roi_attached: set[str] = set()

    @property
    def ix(self) -> _Index:
        if self._discovered is None:
            raise RuntimeError("bimcv: discover() first")
        return self._discovered

    # --- discovery -------------------------------------------------------------------------------
    def discover(self) -> None:
        if not self.root.exists():
            raise SourceNotFoundError(f"bimcv: {self.root} does not exist; {self.access}")
        if self.root.is_file():
            raise SourceNotFoundError(
                f"bimcv: {self.root} is a file; pass the folder holding the release (or its .tar.gz parts "
                f"and {SHA1SUMS})"
            )
        self._discovered = ix = _Index(DiskIndex(self.workdir, name="bimcv"))
        self._recent.clear()
        if not self._index_tree():
            self._archives = sorted(p for p in self.root.iterdir() if is_archive(p))
            if not self._archives:
                raise SourceNotFoundError(
                    f"bimcv: no participants.tsv and no .tar.gz parts under {self.root}; {self.access}"
                )
            self._index_archives()
            ix.files = ix.index.table("members")
            ix.files.update(_in_key_order(ix.index, ix.found))
        self._index_release()

    def _index_tree(self) -> bool:
        """List the folder's files into the index; whether one is a participants.tsv."""
        participants = False
        with _Batched(self.ix.files) as files:
            for name in _sorted_tree(str(self.root)):
                files.add(name, None)
                participants = participants or posixpath.basename(name) == "participants.tsv"
        return participants

    def _index_archives(self) -> None:
        """Verify and index every archive, up to `num_proc` at a time (each a full gunzip); merged in
        archive order."""
        sums_path = self.root / SHA1SUMS
        if not sums_path.is_file():
            raise SourceNotFoundError(
                f"bimcv: {SHA1SUMS} is missing from {self.root}; download it with the archives so each "
                "can be verified"
            )
        sums = read_sha1sums(sums_path)
        folder = self.ix.index.path.parent
        calls = [
            (_scan_archive, archive, sums, self.max_archive_members, self.max_json_bytes, folder / f"archive{n}.sqlite")
            for n, archive in enumerate(self._archives)
        ]
        differing: list[JsonValue] = []
        total = sum(archive.stat().st_size for archive in self._archives)
        desc = "bimcv: verify and index archives"
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not self.progress) as bar:
            for archive, scan in zip(self._archives, imap_ordered(calls, self.num_proc), strict=True):
                self._absorb(scan)
                if scan.listing is False:
                    differing.append(scan.archive)
                bar.update(archive.stat().st_size)
        self.report.notes["archives"] = {"archives": len(self._archives), "listing_differs": differing}

    def _absorb(self, scan: _ArchiveScan) -> None:
        """Add one archive's scan to the index; a member name that an earlier archive holds is an error."""
        ix, part = self.ix, _Index(DiskIndex(at=scan.at))
        with (
            _Batched(ix.found) as found,
            _Batched(ix.stored, BATCH_BYTES) as stored,
            _Batched(ix.pieces, BATCH_BYTES) as pieces,
            _Batched(ix.unread) as unread,
        ):
            for name, archive in part.found.items():
                if name in found:
                    raise _in_two_archives(name, found.get(name), archive)
                found.add(name, archive)
            for name, value in part.stored.items():
                stored.add(name, value, 1 + len(value[1] or ""))
            for key, piece in part.pieces.items():
                pieces.add(key, piece, len(piece))
            for name, size in part.unread.items():
                unread.add(name, size)
        self._verified[scan.archive] = scan.sha1
        scan.at.unlink()

    def _image_limit(self, name: str) -> int | None:
        return max_image_bytes(self.max_image_pixels)

    def _json_bytes(self, name: str) -> bytes | int:
        """A JSON file's bytes, or its size when it is over `max_json_bytes` (then left unread)."""
        if self._archives:  # iter_archive read it if it was within the limit
            stored = self.ix.stored.get(name)
            return int(self.ix.unread[name]) if stored is None else b"".join(self._stored_pieces(name, stored))
        size = (self.root / name).stat().st_size
        return size if size > self.max_json_bytes else self._read(name)

    def _read(self, name: str) -> bytes:
        return b"".join(self._pieces(name))

    def _pieces(self, name: str) -> Iterator[bytes]:
        """The bytes of a file of the release, a piece at a time."""
        if self._archives:
            stored = self.ix.stored.get(name)
            if stored is None:
                raise SourceFormatError(f"bimcv: {name} was not read from {self.ix.files.get(name)}")
            yield from self._stored_pieces(name, stored)
            return
        with (self.root / name).open("rb") as handle:
            while piece := handle.read(CHUNK_BYTES):
                yield piece

    def _stored_pieces(self, name: str, stored: list[Any]) -> Iterator[bytes]:
        size, whole = stored
        if whole is not None:
            yield whole.encode("latin-1")
            return
        for number in range(-(-size // CHUNK_BYTES)):
            yield self.ix.pieces[f"{number}:{name}"].encode("latin-1")

    def _index_release(self) -> None:
        files = self.ix.files
        candidates = sorted(
            posixpath.dirname(n)
            for n in files
            if posixpath.basename(n) == "participants.tsv" and self._has_derivatives(posixpath.dirname(n))
        )
        where = "archives in " if self._archives else ""
        if not candidates:
            raise SourceNotFoundError(
                f"bimcv: no participants.tsv beside a derivatives/ folder in {where}{self.root}; {self.access}"
            )
        if len(candidates) > 1:
            raise SourceFormatError(
                f"bimcv: {where}{self.root} holds {len(candidates)} releases "
                f"({', '.join(c or '.' for c in candidates)}); ids are reused across releases, pass one release"
            )
        self._meta = candidates[0]
        labels_dir = _join(self._meta, "derivatives/labels")
        labels = [n for n in (_join(labels_dir, name) for name in RELEASES) if n in files]
        if len(labels) != 1:
            found = sorted(posixpath.basename(n) for n in files if n.startswith(labels_dir + "/"))
            raise SourceFormatError(
                f"bimcv: expected one of {', '.join(RELEASES)} in {labels_dir or '.'}, found "
                f"{', '.join(found) or 'nothing'}; this adapter reads iteration 1 and iterations 1+2"
            )
        digest = hashlib.sha256()
        for piece in self._pieces(labels[0]):
            digest.update(piece)
        self.release = (
            f"{RELEASES[posixpath.basename(labels[0])]}; {posixpath.basename(labels[0])} "
            f"sha256:{digest.hexdigest()[:16]}"
        )
        tests = [n for n in (_join(self._meta, f"derivatives/EHR/{t}") for t in TEST_TABLES) if n in files]
        if not tests:
            raise SourceFormatError(
                f"bimcv: no derivatives/EHR/{' or '.join(TEST_TABLES)} beside {labels[0]}; the release is "
                "incomplete (iterations 1+2: covid19_posi_head.tar.gz)"
            )
        self._read_tables(_join(self._meta, "participants.tsv"), labels[0], tests[0])
        self._index_files()
        self._index_rois()
        self._index_images()
        self._check_partitions()

    def _has_derivatives(self, folder: str) -> bool:
        return any(name.startswith(_join(folder, "derivatives/")) for name in self.ix.files)

    def _pieces_of(self, name: str) -> Callable[[], Iterator[bytes]]:
        """The file's pieces, afresh on each call (a table is checked whole, then read again)."""
        return functools.partial(self._pieces, name)

    def _read_tables(self, participants: str, labels: str, tests: str) -> None:
        ix = self.ix
        self._participant_rows = self._junk_participants = self._label_rows = self._test_rows = 0
        with _Batched(ix.participants) as people:
            for person in parse_participants(self._pieces_of(participants), participants):
                self._participant_rows += 1
                if person is None:
                    self._junk_participants += 1
                else:
                    people.add(person.participant, person.to_json())
        with _Batched(ix.sessions) as sessions, _Batched(ix.sessions_of) as sessions_of:
            for name in ix.files:
                base = posixpath.basename(name)
                if base.endswith("_sessions.tsv") and _SUB.match(base.removesuffix("_sessions.tsv")):
                    for session in parse_sessions(self._pieces_of(name), name):
                        sessions.add(session.session_id, session.to_json())
                        sessions_of.add(base.removesuffix("_sessions.tsv"), session.session_id)
            with _Batched(ix.labels) as rows:
                for row in parse_labels(self._pieces_of(labels), labels):
                    self._label_rows += 1
                    rows.add(row.report_id, row.to_json())
                    sessions_of.add(row.patient_id, row.report_id)
        with _Batched(ix.tests) as rows:
            for test in parse_tests(self._pieces_of(tests), tests):
                self._test_rows += 1
                rows.add(test.participant, test.to_json())

    def _index_files(self) -> None:
        """Read every sidecar; set aside every other file of a MIDS image folder as an image."""
        ix = self.ix
        with (
            _Batched(ix.found_images) as found,
            _Batched(ix.sidecars) as sidecars,
            _Batched(ix.bad_sidecars) as bad_sidecars,
        ):
            for name, archive in ix.files.items():
                path = mids_path(name)
                if path is None:
                    continue
                if path.endswith(".json"):
                    self._index_sidecar(name, path, sidecars, bad_sidecars)
                else:
                    found.add(path, [archive, name])

    def _index_sidecar(self, name: str, path: str, sidecars: _Batched, bad_sidecars: _Batched) -> None:
        stem = posixpath.basename(path).removesuffix(".json")
        data = self._json_bytes(name)
        if isinstance(data, int):
            why = f"{SIDECAR_TOO_LARGE}: {data} bytes, over the limit of {self.max_json_bytes} (max_json_bytes)"
            bad_sidecars.add(stem, why)
            return
        try:
            parsed = DicomJson.parse(data)
        except SidecarError as exc:
            bad_sidecars.add(stem, str(exc))
            return
        # the sidecar is read and parsed again where a unit maps the image: only its name and date are kept
        day = _yyyymmdd(parsed.text(dicom_json.STUDY_DATE))
        sidecars.add(stem, [name, None if day is None else day.isoformat(), parsed.text(dicom_json.STUDY_TIME)])

    def _index_images(self) -> None:
        """The images in MIDS path order, numbered, each with what a unit needs to map it; a second file of
        a path is a duplicate (the first in name order is the image)."""
        ix = self.ix
        any_bad_sidecar, any_roi = bool(ix.bad_sidecars), bool(ix.rois)
        number, previous = 0, ("", "", "")
        with (
            _Batched(ix.images) as images,
            _Batched(ix.image_at) as image_at,
            _Batched(ix.found_duplicates) as duplicates,
            _Batched(ix.dicom_days) as days,
            _Batched(ix.sessions_of) as sessions_of,
            _Batched(ix.image_subjects) as subjects,
            _Batched(ix.image_sessions) as sessions,
        ):
            for path, (archive, name) in _in_key_order(ix.index, ix.found_images):
                if path == previous[0]:
                    duplicates.add(name, archive)
                    continue
                sub, ses = path.split("/")[:2]
                stem = _stem(path)
                sidecar = ix.sidecars.get(stem) or [None, None, None]
                why = ix.bad_sidecars.get(stem) if any_bad_sidecar else None
                image = _Image(path, archive, name, number, sidecar[0], why, any_roi and stem in ix.rois)
                images.add(path, image.to_json())
                image_at.add(str(number), image.to_json())
                number += 1
                if sidecar[1] is not None:
                    days.add(ses, [sidecar[1], sidecar[2] or ""])
                if sub != previous[1]:
                    subjects.add(sub, True)
                if (sub, ses) != previous[1:]:  # paths are sorted: a subject's, a session's come together
                    sessions_of.add(sub, ses)
                    sessions.add(ses, True)
                previous = (path, sub, ses)
        ix.duplicates.update(_in_key_order(ix.index, ix.found_duplicates))

    def _index_rois(self) -> None:
        roi_dir = _join(self._meta, "derivatives/roi/")
        ix = self.ix
        with _Batched(ix.rois) as rois, _Batched(ix.bad_rois) as bad_rois:
            for name in ix.files:
                if not (name.startswith(roi_dir) and name.endswith(".xml")):
                    continue
                stem = aim_roi.image_stem_of_roi(name)
                try:
                    if stem is None:
                        raise aim_roi.RoiError("file name names no image (expected …_mod-cr_roi.xml)")
                    polygons = aim_roi.parse_aim(self._read(name))
                    for polygon in polygons:
                        if len(polygon.points) < 3:
                            raise aim_roi.RoiError(f"a polygon of {polygon.label!r} has {len(polygon.points)} points")
                except aim_roi.RoiError as exc:
                    bad_rois.add(name, str(exc))
                    continue
                rois.add(stem, [name, [_polygon_json(polygon) for polygon in polygons]])

    def _check_partitions(self) -> None:
        partitions = _join(self._meta, "derivatives/partitions.tsv")
        ix = self.ix
        if partitions not in ix.files:
            self.report.notes["partitions"] = "absent"
            return
        with _Batched(ix.partitions) as listed:
            for path in parse_partitions(self._pieces_of(partitions), partitions):
                listed.add(path, True)
        self.report.notes["partitions"] = {
            "rows": len(ix.partitions),
            "listed_without_file": sum(1 for path in ix.partitions if path not in ix.images),
            "file_not_listed": sum(1 for path in ix.images if path not in ix.partitions),
        }

    # --- look-ups of the index, decoded and kept for the next few images ----------------------------
    def _recall(self, kind: str, key: str, load: Callable[[str], T]) -> T:
        """`load(key)`, kept for the next look-ups: a unit maps a subject's images one after another."""
        if (kind, key) in self._recent:
            kept: T = self._recent[(kind, key)]
            return kept
        if len(self._recent) >= RECENT:
            self._recent.clear()
        value = self._recent[(kind, key)] = load(key)
        return value

    def _participant(self, sub: str) -> Participant | None:
        return self._recall("participant", sub, self._load_participant)

    def _load_participant(self, sub: str) -> Participant | None:
        value = self.ix.participants.get(sub)
        return None if value is None else Participant.from_json(value)

    def _session(self, ses: str) -> Session | None:
        return self._recall("session", ses, self._load_session)

    def _load_session(self, ses: str) -> Session | None:
        value = self.ix.sessions.get(ses)
        return None if value is None else Session.from_json(value)

    def _label(self, ses: str) -> LabelRow | None:
        """The first report row of the session (several rows per session: the first is kept)."""
        return self._recall("label", ses, self._load_label)

    def _load_label(self, ses: str) -> LabelRow | None:
        rows = self.ix.labels.get(ses)
        return None if rows is None else LabelRow.from_json(rows[0])

    def _tests(self, sub: str) -> list[DiagnosticTest]:
        return self._recall("tests", sub, self._load_tests)

    def _load_tests(self, sub: str) -> list[DiagnosticTest]:
        return [DiagnosticTest.from_json(value) for value in self.ix.tests.get(sub, [])]

    def _sessions_of(self, sub: str) -> set[str]:
        return self._recall("sessions_of", sub, lambda key: set(self.ix.sessions_of.get(key, [])))

    def _session_when(self, ses: str) -> tuple[dt.date, str] | None:
        """(date, time) of a session: sessions.tsv first, else the DICOM Study Date of its images."""
        return self._recall("when", ses, self._load_session_when)

    def _load_session_when(self, ses: str) -> tuple[dt.date, str] | None:
        dicom = [(dt.date.fromisoformat(day), time) for day, time in self.ix.dicom_days.get(ses, [])]
        table = self._session(ses)
        if table is not None and table.study_date is not None:
            times = sorted(t for d, t in dicom if d == table.study_date)
            return table.study_date, times[0] if times else ""
        return min(dicom) if dicom else None

    # --- items -----------------------------------------------------------------------------------
    def items(self) -> Iterator[SourceItem]:
        for unit in self.units():
            yield from self.items_of(unit)
        self._write_notes()

    def units(self) -> list[WorkUnit]:
        """Archive mode: one unit per archive holding images; tree mode: runs of whole subjects of
        about `unit_items` images. Last: the duplicate images and unreadable ROIs."""
        units: list[WorkUnit] = []
        if self._archives:
            sizes = Counter(_Image(*value).archive for value in self.ix.image_at.values())
            for archive in self._archives:
                size = sizes[archive.name]
                if size:
                    units.append(WorkUnit(len(units), f"archive {archive.name}", archive=archive.name, size=size))
        else:
            units = self._subject_runs()
        extra = len(self.ix.duplicates) + len(self.ix.bad_rois)
        return [*units, WorkUnit(len(units), "duplicate images and unreadable ROIs", size=extra)]

    def _subject_runs(self) -> list[WorkUnit]:
        """Runs of whole subjects in path order, each closed at the first new subject after `unit_items`."""
        units: list[WorkUnit] = []
        start, count, first, previous = 0, 0, "", ""
        for count, value in enumerate(self.ix.image_at.values(), start=1):
            sub, at = _sub(_Image(*value).path), count - 1
            if at - start >= self.unit_items and sub != previous:
                units.append(WorkUnit(len(units), f"subjects {first}..{previous}", start, at, size=at - start))
                start = at
            if at == start:
                first = sub
            previous = sub
        if count > start:
            units.append(WorkUnit(len(units), f"subjects {first}..{previous}", start, count, size=count - start))
        return units

    def _images_of(self, unit: WorkUnit) -> Iterator[_Image]:
        return (_Image(*self.ix.image_at[str(number)]) for number in range(unit.start, unit.stop))

    def items_of(self, unit: WorkUnit) -> Iterator[SourceItem]:
        if unit.archive is not None:
            yield from self._archive_items(unit)
        elif unit.stop > unit.start:
            yield from map(_image_item, self._images_of(unit))
        else:
            for name in self.ix.duplicates:  # in name order
                yield SourceItem(key=name, source_file=name, row=None, fields={"kind": "duplicate image"})
            for name, why in self.ix.bad_rois.items():
                yield SourceItem(key=name, source_file=name, row=None, fields={"kind": "roi", "error": why})
        self._current = None

    def unit_inputs(self, unit: WorkUnit) -> list[Path]:
        if unit.archive is not None:
            return [self.root / unit.archive]
        return [self.root / image.name for image in self._images_of(unit)]

    def unit_checksum(self, unit: WorkUnit) -> str:
        """An archive's sha1, verified against sha1sums.txt in discovery; else the files' sizes and times."""
        if unit.archive is not None:
            return f"sha1:{self._verified[unit.archive]}"
        return super().unit_checksum(unit)

    def source_checksum(self) -> str:
        if self._archives:
            listing = "".join(f"{name} {sha1}\n" for name, sha1 in sorted(self._verified.items()))
            return hashlib.sha256(listing.encode(errors="surrogateescape")).hexdigest()
        # the tree as discovery listed it (in name order), filtered by the base's rule one name at a time
        return files_checksum(self.root, (name for name in self.ix.files if source_files([name])))

    def finish(self) -> None:
        self._write_notes()

    def absorb(self, delta: UnitDelta) -> None:
        """Add a unit's counts; what it recorded goes into the index (a set of every record would grow)."""
        self.report.absorb(delta.report)
        ix = self.ix
        ix.recorded_subjects.update((sub, True) for sub in delta.state["_recorded_subjects"])
        ix.recorded_sessions.update((ses, True) for ses in delta.state["_recorded_sessions"])
        ix.roi_attached.update((name, True) for name in delta.state["_roi_attached"])

    def _archive_image(self, name: str, archive: str) -> _Image | None:
        """The image that member `name` of `archive` is, if it is one."""
        path = mids_path(name)
        if path is None or path.endswith(".json"):  # sidecars are never images
            return None
        value = self.ix.images.get(path)
        image = None if value is None else _Image(*value)
        return image if image is not None and (image.archive, image.name) == (archive, name) else None

    def _archive_items(self, unit: WorkUnit) -> Iterator[SourceItem]:
        """The images of one archive in member order, then those gone since discovery (missing)."""
        archive = unit.archive or ""
        seen = bytearray(len(self.ix.images) // 8 + 1)  # a bit per image number
        last: dict[str, _Image | None] = {}  # want() and the loop below ask about the same member

        def image_of(name: str) -> _Image | None:
            if name not in last:
                last.clear()
                last[name] = self._archive_image(name, archive)
            return last[name]

        def want(name: str) -> bool:
            return not self.metadata_only and name.endswith(".png") and image_of(name) is not None

        members_of = iter_archive(self.root / archive, want, self.max_archive_members, self._image_limit)
        for name, member, data in members_of:
            image = image_of(name)
            if image is None:
                continue
            seen[image.number >> 3] |= 1 << (image.number & 7)
            self._current = (image.path, data, member.size)
            yield _image_item(image)
        self._current = None
        if sum(byte.bit_count() for byte in seen) == unit.size:
            return
        for value in self.ix.image_at.values():  # gone since discovery, in path order: quarantined as missing
            image = _Image(*value)
            if image.archive == archive and not seen[image.number >> 3] & 1 << (image.number & 7):
                yield _image_item(image)

    def read_image(self, item: SourceItem) -> bytes:
        if self._current is not None and self._current[0] == item.key:
            _, data, size = self._current
            if data is None:  # left unread in the archive: over the limit (or metadata only)
                self.check_image_bytes(size)
            return data or b""
        name = item.fields.get("member")
        if not isinstance(name, str) or item.fields.get("archive") is not None:
            raise QuarantineItem("image missing", item.key)
        path = self.root / name
        if not path.is_file():
            raise QuarantineItem("image missing", name)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise QuarantineItem("image path unsafe", f"{name!r} is a link out of the release")
        self.check_image_bytes(path.stat().st_size)
        return path.read_bytes()

    def check_scope(self, item: SourceItem, ctx: MappingContext) -> None:
        kind = item.fields.get("kind")
        if kind == "roi":
            raise QuarantineItem("ROI unreadable", str(item.fields.get("error")))
        if kind == "duplicate image":
            raise QuarantineItem("image file present twice", item.key)
        match = IMAGE_NAME.match(posixpath.basename(item.key))
        if item.key.endswith(".nii.gz") or (match is not None and match["mod"] == "ct"):
            raise ExcludeItem(CT_REASON)
        if match is None:
            raise QuarantineItem("file name outside the MIDS grammar", posixpath.basename(item.key))

    # --- mapping ---------------------------------------------------------------------------------
    def to_record(self, item: SourceItem, image: ImageRef | None, ctx: MappingContext) -> Record:
        path = item.key
        match = IMAGE_NAME.match(posixpath.basename(path))
        if match is None:  # check_scope already quarantines these
            raise QuarantineItem("file name outside the MIDS grammar", posixpath.basename(path))
        sub, ses = match["sub"], match["ses"]
        if path.split("/")[:2] != [sub, ses]:
            raise QuarantineItem("file name disagrees with its folders", path)
        if image is not None and image.mode not in GRAYSCALE_MODES:
            raise QuarantineItem(f"image not grayscale ({image.mode})", "RGB files can carry burned-in text")
        repairs: list[str] = []
        sidecar = self._sidecar(item, ctx)
        modality = self._modality(match["mod"], sidecar, ctx)
        image = self._image(image, sidecar, item, ctx)
        study = self._study(ses, sidecar, ctx)
        findings, report_evidence = self._findings(ses, ctx, repairs)
        issue = KNOWN_SESSION_ISSUES.get((sub, ses))
        if issue is not None:
            ctx.flag(f"BIMCV quality control: {issue}")
        row = self._label(ses)
        if row is not None and row.patient_id != sub:
            ctx.flag("label row PatientID differs from the image's subject")
        tests = self._test_evidence(sub, ctx)
        offset = self._offset(study.study_date, tests)
        record = Record(
            record_id=f"bimcv:{sub}/{ses}/{_stem(path)}",
            source=Source.BIMCV,
            release=self.release,
            patient=self._patient(sub, sidecar, ctx, repairs),
            study=study,
            image=image,
            modality=modality,
            view=self._view(match["vp"], sidecar, ctx),
            findings=findings,
            covid19=_covid19(tests, report_evidence),
            offset_days=offset,
            offset_reference=OffsetReference.FIRST_POSITIVE_TEST if offset is not None else None,
            outcomes=Outcomes(),
            clinical=Clinical(),
            masks=self._masks(path, image, sidecar, ctx) if item.fields.get("rois") else (),
            license=self.license,
            provenance=Provenance(
                source_file=path,
                row=None,
                adapter_version=self.version,
                repairs=tuple(repairs),
                flags=tuple(ctx.flags),
            ),
            raw=self._raw(path, sub, ses, sidecar),
        )
        self._recorded_subjects.add(sub)
        self._recorded_sessions.add(ses)
        return record

    def _sidecar(self, item: SourceItem, ctx: MappingContext) -> DicomJson | None:
        why, name = item.fields.get("sidecar_error"), item.fields.get("sidecar")
        if isinstance(why, str) and why.startswith(SIDECAR_TOO_LARGE):
            raise QuarantineItem(SIDECAR_TOO_LARGE, why)
        if not isinstance(name, str):
            ctx.flag("sidecar missing" if why is None else "sidecar unreadable")
            return None
        try:
            return DicomJson.parse(self._read(name))
        except (OSError, SidecarError):  # changed or removed since discovery
            ctx.flag("sidecar unreadable")
            return None

    def _modality(self, from_name: str, sidecar: DicomJson | None, ctx: MappingContext) -> Modality:
        by_name = MODALITIES[from_name.upper()]
        raw = sidecar.text(dicom_json.MODALITY) if sidecar is not None else None
        by_dicom = ctx.lookup("Modality (0008,0060)", MODALITIES, raw)
        if by_dicom is not None and by_dicom is not by_name:
            ctx.flag("modality: DICOM and file name differ")
        return by_dicom or by_name

    def _image(
        self, image: ImageRef | None, sidecar: DicomJson | None, item: SourceItem, ctx: MappingContext
    ) -> ImageRef | None:
        if image is None:
            return None
        update: dict[str, object] = {"archive": item.fields.get("archive")}
        if sidecar is not None:
            photometric = sidecar.text(dicom_json.PHOTOMETRIC_INTERPRETATION)
            update["photometric_interpretation"] = photometric
            if photometric is not None and photometric not in GREY_PHOTOMETRICS:
                ctx.unmapped("PhotometricInterpretation", photometric)
                ctx.flag("photometric interpretation is not MONOCHROME1/2 for a grey PNG")
            if photometric == "MONOCHROME1":
                ctx.flag("MONOCHROME1: invert for display")
            bits = sidecar.number(dicom_json.BITS_STORED)
            if bits is not None and 1 <= bits <= (image.bits_stored or 16):
                update["bits_stored"] = int(bits)
            elif bits is not None:
                ctx.flag("bits stored: DICOM says more than the PNG holds")
            spacing = sidecar.numbers(dicom_json.PIXEL_SPACING) or sidecar.numbers(dicom_json.IMAGER_PIXEL_SPACING)
            if spacing is not None and len(spacing) == 2:
                update["pixel_spacing_mm"] = spacing
        return image.model_copy(update=update)

    def _study(self, ses: str, sidecar: DicomJson | None, ctx: MappingContext) -> Study:
        table = self._session(ses)
        dicom_raw = sidecar.text(dicom_json.STUDY_DATE) if sidecar is not None else None
        dicom_date = _yyyymmdd(dicom_raw)
        date: dt.date | None = dicom_date
        raw = dicom_raw
        when = self._session_when(ses) if date is None else None
        if when is not None:  # another image of the session has the DICOM date
            date, raw = when[0], when[0].strftime("%Y%m%d")
        if table is not None and table.study_date is not None:
            if dicom_date is not None and dicom_date != table.study_date:
                ctx.flag("study date: sessions.tsv and DICOM differ")
            date, raw = table.study_date, table.study_date_raw
        return Study(study_id=ses, study_date=date, study_year=date.year if date else None, date_raw=raw)

    def _patient(self, sub: str, sidecar: DicomJson | None, ctx: MappingContext, repairs: list[str]) -> Patient:
        person = self._participant(sub)
        if person is None:
            ctx.flag("subject not in participants.tsv")
        sex = ctx.lookup("gender", SEXES, person.gender if person else None)
        dicom_sex = SEXES.get(sidecar.text(dicom_json.PATIENT_SEX) or "") if sidecar is not None else None
        if sex is not None and dicom_sex is not None and sex is not dicom_sex:
            ctx.flag("sex: participants.tsv and DICOM differ")
        age: float | None = None
        if person is not None and person.ages:
            age = float(min(person.ages))
            if len(person.ages) > 1:
                repairs.append(f"age: minimum of {list(person.ages)} (participants.tsv lists two ages)")
        elif sidecar is not None:
            age = dicom_age_years(sidecar.text(dicom_json.PATIENT_AGE))
        if age is not None and not 0 <= age <= MAX_AGE_YEARS:  # no age: counted, the image stays a record
            ctx.unmapped("age", f"{age:g}")
            age = None
        return Patient(patient_id=f"bimcv:{sub}", sex=sex or dicom_sex, age_years=age)

    def _view(self, vp: str | None, sidecar: DicomJson | None, ctx: MappingContext) -> ViewInfo:
        candidates: list[tuple[ViewBasis, str, View | None]] = []
        if sidecar is not None:
            raw = sidecar.text(dicom_json.VIEW_POSITION)
            if raw is not None:
                candidates.append((ViewBasis.DICOM_VIEW_POSITION, raw, ctx.lookup("ViewPosition", VIEW_POSITIONS, raw)))
            codes = sidecar.items(dicom_json.VIEW_CODE_SEQUENCE)
            code = codes[0].text(dicom_json.CODE_VALUE) if codes else None
            if code is not None:
                meaning = codes[0].text(dicom_json.CODE_MEANING)
                candidates.append(
                    (
                        ViewBasis.DICOM_VIEW_CODE_SEQUENCE,
                        f"{code} {meaning}" if meaning else code,
                        ctx.lookup("ViewCodeSequence", VIEW_CODES, code),
                    )
                )
            description = sidecar.text(dicom_json.SERIES_DESCRIPTION)
            if description is not None and description not in SERIES_DESCRIPTIONS_WITHOUT_VIEW:
                view = ctx.lookup("SeriesDescription", SERIES_DESCRIPTIONS, description)
                candidates.append((ViewBasis.DICOM_SERIES_DESCRIPTION, description, view))
        if vp is not None:
            candidates.append((ViewBasis.FILENAME, f"vp-{vp}", ctx.lookup("file name vp-", FILENAME_VIEWS, vp)))
        known = [(basis, raw, view) for basis, raw, view in candidates if view is not None]
        if not known:
            raw = candidates[0][1] if candidates else None
            return ViewInfo(view=View.UNKNOWN, raw=raw, basis=ViewBasis.NONE)
        basis, raw, view = known[0]
        disagreements = tuple(f"{b.value}={r}" for b, r, v in known[1:] if v is not view)
        if disagreements:
            ctx.flag("view sources disagree")
            if any(b is ViewBasis.FILENAME and v is not view for b, _, v in known[1:]):
                ctx.flag("view: file name vp- token is wrong")
        return ViewInfo(view=view, raw=raw, basis=basis, disagreements=disagreements)

    # --- labels ----------------------------------------------------------------------------------
    def _previous_session(self, ses: str) -> str | None:
        """The latest labelled session of the same patient strictly before `ses`, by (date, time)."""
        row = self._label(ses)
        when = self._session_when(ses)
        if row is None or when is None:
            return None
        before = []
        for other in self._sessions_of(row.patient_id):
            other_when = self._session_when(other)
            if other != ses and other_when is not None and other_when < when and self._label(other) is not None:
                before.append((other_when, other))
        return max(before)[1] if before else None

    def _resolved_labels(self, ses: str, repairs: list[str], ctx: MappingContext) -> list[tuple[str, str]]:
        """(label as written, session it comes from): the session's labels, `unchanged` replaced by the
        labels of the previous study of the patient (recursively)."""
        result: list[tuple[str, str]] = []
        seen = {ses}
        current: str | None = ses
        while current is not None:
            row = self._label(current)
            assert row is not None  # the session, and each previous one, was chosen for its row
            result += [(label, current) for label in row.labels if label.strip() != UNCHANGED]
            if all(label.strip() != UNCHANGED for label in row.labels):
                break
            previous = self._previous_session(current)
            if previous is None or previous in seen:
                ctx.flag("unchanged: no previous study to resolve it")
                break
            repairs.append(f"'unchanged' in {current} resolved from the previous study {previous}")
            seen.add(previous)
            current = previous
        return result

    def _findings(
        self, ses: str, ctx: MappingContext, repairs: list[str]
    ) -> tuple[tuple[FindingLabel, ...], Covid19Evidence | None]:
        row = self._label(ses)
        if row is None:
            ctx.flag("no report row for the session")
            return (), None
        if row.labels_missing:
            ctx.flag("report not labelled")
            return (), None
        for label in row.labels:
            marker = MARKERS.get(label.strip())
            if marker is not None:
                ctx.flag(marker)
        if row.truncated:
            ctx.flag("labels cell truncated")
            if row.fragment is not None:
                ctx.unmapped("report label", row.fragment)
        labels: dict[Finding, FindingLabel] = {}
        covid: Covid19Evidence | None = None
        for label, origin in self._resolved_labels(ses, repairs, ctx):
            key = label.strip()
            raw = label if origin == ses else f"{label.strip()} (unchanged, from {origin})"
            if key in MARKERS:
                continue
            state = COVID_LABELS.get(key)
            finding = Finding.COVID19 if state is not None else ctx.lookup("report label", LABELS, key)
            if finding is None:
                continue
            if state is not None and covid is None:
                covid = Covid19Evidence(basis=Covid19Basis.REPORT, state=state, raw=raw)
            cui = LABEL_CUIS.get(key)
            labels.setdefault(finding, FindingLabel(finding=finding, state=state or POS, cui=cui, raw=raw))
        if covid is None:
            covid = Covid19Evidence(basis=Covid19Basis.REPORT, state=LabelState.NOT_MENTIONED, raw=None)
        return tuple(labels.values()), covid

    def _test_evidence(self, sub: str, ctx: MappingContext) -> list[Covid19Evidence]:
        evidence = []
        for test in sorted(self._tests(sub), key=lambda t: (t.date or dt.date.max, t.row)):
            basis = ctx.lookup("test", TEST_KINDS, test.test or None)
            state = ctx.lookup("result", TEST_RESULTS, test.result or None)
            if test.date is None and test.date_raw:
                ctx.unmapped("test date", test.date_raw)
            if basis is not None and state is not None:
                raw = f"{test.test} {test.result} {test.date_raw}".strip()
                evidence.append(Covid19Evidence(basis=basis, state=state, date=test.date, raw=raw))
        return evidence

    @staticmethod
    def _offset(study_date: dt.date | None, tests: list[Covid19Evidence]) -> int | None:
        positives = [t.date for t in tests if t.state is POS and t.date is not None]
        if study_date is None or not positives:
            return None
        return (study_date - min(positives)).days

    def _masks(
        self, path: str, image: ImageRef | None, sidecar: DicomJson | None, ctx: MappingContext
    ) -> tuple[Mask, ...]:
        rois = self.ix.rois.get(_stem(path), [])
        if not rois:
            return ()
        if image is not None:
            width, height = image.width, image.height
        else:
            columns = sidecar.number(dicom_json.COLUMNS) if sidecar is not None else None
            rows = sidecar.number(dicom_json.ROWS) if sidecar is not None else None
            limit = self.max_image_pixels
            if columns is None or rows is None or not 1 <= min(columns, rows) <= columns * rows <= limit:
                ctx.flag("ROI kept out: image size unknown")  # absent, or implausible (0, NaN, too large)
                return ()
            width, height = int(columns), int(rows)
        masks = []
        for name, polygons in rois:
            for polygon in map(_polygon, polygons):
                finding = ctx.lookup("ROI label", LABELS, polygon.label)
                if finding is None:
                    ctx.flag("ROI with an unknown label kept out")
                    continue
                try:
                    rle = aim_roi.polygon_rle(polygon.points, width, height)
                except aim_roi.RoiError as exc:
                    ctx.flag(f"ROI rejected: {exc}")
                    continue
                masks.append(
                    Mask(
                        label=MaskLabel.FINDING,
                        finding=finding,
                        size=rle.size,
                        counts=rle.counts,
                        area=rle.area,
                        bbox=rle.bbox,
                        annotation_source=Source.BIMCV,
                        annotation_id=polygon.annotation_id or name,
                        annotation_license=self.license,
                    )
                )
            self._roi_attached.add(name)
        return tuple(masks)

    def _raw(self, path: str, sub: str, ses: str, sidecar: DicomJson | None) -> dict[str, JsonValue]:
        person, session, row = self._participant(sub), self._session(ses), self._label(ses)
        tests: list[JsonValue] = [t.raw for t in self._tests(sub)]
        return {
            "file": path,
            "participant": person.raw if person else None,
            "session": session.raw if session else None,
            "labels": row.raw if row else None,
            "tests": tests,
            "dicom": sidecar.as_json() if sidecar is not None else None,
        }

    # --- accounting of what is not an item of the main stream --------------------------------------
    def _write_notes(self) -> None:
        ix = self.ix

        def outcome(key: str, recorded: DiskTable, with_files: DiskTable) -> str:
            if key in recorded:
                return "record"
            return "images excluded or quarantined" if key in with_files else "no image"

        @functools.lru_cache(maxsize=RECENT)  # a subject's test rows come together
        def of_subject(sub: str) -> str:
            return outcome(sub, ix.recorded_subjects, ix.image_subjects)

        participants = Counter(of_subject(sub) for sub in ix.participants)
        participants["junk row (not sub-*)"] = self._junk_participants
        label_rows = Counter(outcome(ses, ix.recorded_sessions, ix.image_sessions) for ses in ix.labels)
        if self._label_rows > len(ix.labels):
            label_rows["duplicate row of a session (first kept)"] = self._label_rows - len(ix.labels)
        tests = Counter(of_subject(sub) for sub, _ in ix.tests.items())
        rois = Counter(
            "attached to a record" if name in ix.roi_attached else "no matching record"
            for _, (name, _) in ix.rois.items()
        )
        rois["unreadable (quarantined)"] = len(ix.bad_rois)
        kinds = Counter(
            "png" if p.endswith(".png") else "nii.gz" if p.endswith(".nii.gz") else "other" for p in ix.images
        )
        self.report.notes.update(
            {
                "release": self.release,
                "read_from": "archives" if self._archives else "folder",
                "image_files": dict(sorted(kinds.items())),
                "participants": {"rows": self._participant_rows, **dict(sorted(participants.items()))},
                "label_rows": {"rows": self._label_rows, **dict(sorted(label_rows.items()))},
                "test_rows": {"rows": self._test_rows, **dict(sorted(tests.items()))},
                "roi_files": {"files": rois.total(), **dict(sorted(rois.items()))},  # every ROI file once
                "subjects_not_in_participants": [
                    *sorted(sub for sub in ix.image_subjects if sub not in ix.participants)
                ],
            }
        )


def _image_item(image: _Image) -> SourceItem:
    fields: dict[str, JsonValue] = {
        "kind": "image",
        "archive": image.archive,
        "member": image.name,
        "sidecar": image.sidecar,
        "sidecar_error": image.sidecar_error,
        "rois": image.rois,
    }
    return SourceItem(key=image.path, source_file=image.path, row=None, fields=fields, image_path=image.path)


def _covid19(tests: list[Covid19Evidence], report: Covid19Evidence | None) -> Covid19Label:
    """Tests decide (positive > uncertain > negative; basis PCR > antigen > serology); the report
    decides only without tests. Every piece of evidence is kept."""
    evidence = tuple(tests) + ((report,) if report is not None else ())
    for state in (POS, LabelState.UNCERTAIN, LabelState.NEGATIVE):
        bases = {t.basis for t in tests if t.state is state}
        for basis in TEST_BASIS_PRIORITY:
            if basis in bases:
                return Covid19Label(state=state, basis=basis, evidence=evidence)
    if report is None:
        return Covid19Label(state=LabelState.NOT_ANNOTATED, basis=Covid19Basis.NONE, evidence=evidence)
    if report.state is LabelState.NOT_MENTIONED:
        return Covid19Label(state=LabelState.NOT_MENTIONED, basis=Covid19Basis.NONE, evidence=evidence)
    return Covid19Label(state=report.state, basis=Covid19Basis.REPORT, evidence=evidence)


def _is_image(name: str) -> bool:
    return name.endswith((".png", ".nii.gz")) and mids_path(name) is not None


def _sub(path: str) -> str:
    return path.split("/")[0]


def _stem(path: str) -> str:
    base = posixpath.basename(path)
    for suffix in (".nii.gz", ".png", ".json"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _yyyymmdd(raw: str | None) -> dt.date | None:
    if raw is None or not re.fullmatch(r"\d{8}", raw):
        return None
    try:
        return dt.datetime.strptime(raw, "%Y%m%d").date()
    except ValueError:
        return None


def _polygon_json(polygon: aim_roi.RoiPolygon) -> list[JsonValue]:
    return [polygon.label, [[x, y] for x, y in polygon.points], polygon.annotation_id]


def _polygon(value: list[Any]) -> aim_roi.RoiPolygon:
    label, points, annotation_id = value
    return aim_roi.RoiPolygon(label, tuple((x, y) for x, y in points), annotation_id)
