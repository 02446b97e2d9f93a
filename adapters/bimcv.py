"""BIMCV COVID-19+ (`covid19_posi`): an extracted release folder or the folder of its `.tar.gz` parts.

Reads iteration 1 (June 2020: `labels_covid19_posi.tsv`, `EHR/sil_reg_covid.tsv`, per-archive folders)
and iterations 1+2 (Oct 2020: `covid19_posi/`, `labels_covid_posi.tsv`, `sil_reg_covid_posi.tsv`,
`sub-X/sub-X_sessions.tsv`). Archives are verified against `sha1sums.txt` and read member by member,
never extracted. One record per CR/DX PNG; CT volumes are excluded by scope. Table parsers are in
`bimcv_tables`, vocabulary in `bimcv_vocab`, sidecars in `dicom_json`, ROIs in `aim_roi`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import posixpath
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import JsonValue

from covid_cxr_unified.adapters import aim_roi, dicom_json
from covid_cxr_unified.adapters.base import (
    Adapter,
    ExcludeItem,
    MappingContext,
    QuarantineItem,
    SourceItem,
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
from covid_cxr_unified.adapters.limits import max_image_bytes
from covid_cxr_unified.adapters.tar_reader import is_archive, iter_archive, read_sha1sums, verify_sha1
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
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


@dataclass(frozen=True)
class _Located:
    """Where a file of the release is: a path under the root folder, or a member of an archive."""

    name: str  # path relative to the root folder, or the member name
    archive: str | None = None


def mids_path(name: str) -> str | None:
    """`sub-X/ses-Y/mod-rx/<file>` for a file inside a MIDS image folder at any depth, else None."""
    parts = name.split("/")
    if len(parts) >= 4 and parts[-2] == "mod-rx" and _SES.match(parts[-3]) and _SUB.match(parts[-4]):
        return "/".join(parts[-4:])
    return None


class BimcvAdapter(Adapter):
    name: ClassVar[Source] = Source.BIMCV
    unit_state: ClassVar[tuple[str, ...]] = ("_recorded", "_roi_attached")
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
        self._files: dict[str, _Located] = {}
        self._small: dict[str, bytes] = {}  # archive mode: the bytes of every non-image member
        self._unread: dict[str, int] = {}  # archive mode: size of members over their limit, left unread
        self._archives: list[Path] = []
        self._verified: dict[str, str] = {}  # archive mode: archive name -> sha1 verified in discovery
        self._current: tuple[str, bytes | None, int] | None = None  # archive mode: image, bytes, size
        self._meta = ""
        self._participants: dict[str, Participant] = {}
        self._junk_participant_rows: list[int] = []
        self._participant_rows = 0
        self._sessions: dict[str, Session] = {}
        self._labels: dict[str, LabelRow] = {}
        self._label_rows: list[LabelRow] = []
        self._tests: dict[str, list[DiagnosticTest]] = defaultdict(list)
        self._test_rows: list[DiagnosticTest] = []
        self._images: dict[str, _Located] = {}  # MIDS path -> location, images and CT volumes
        self._duplicates: dict[str, _Located] = {}
        # image stem -> the file name of its readable sidecar (read and parsed again where a unit maps the
        # image: holding every sidecar, even as bytes, grew discovery with the release), or why it is
        # unreadable; and its (Study Date, Study Time) for discovery
        self._sidecars: dict[str, str] = {}
        self._bad_sidecars: dict[str, str] = {}
        self._study_when: dict[str, tuple[str | None, str | None]] = {}
        self._sessions_of: dict[str, set[str]] = defaultdict(set)
        self._session_when: dict[str, tuple[dt.date, str] | None] = {}
        self._rois: dict[str, list[tuple[str, list[aim_roi.RoiPolygon]]]] = defaultdict(list)
        self._bad_rois: list[tuple[str, str]] = []
        self._recorded: set[str] = set()  # MIDS paths that became records
        self._roi_attached: set[str] = set()

    # --- discovery -------------------------------------------------------------------------------
    def discover(self) -> None:
        if not self.root.exists():
            raise SourceNotFoundError(f"bimcv: {self.root} does not exist; {self.access}")
        if self.root.is_file():
            raise SourceNotFoundError(
                f"bimcv: {self.root} is a file; pass the folder holding the release (or its .tar.gz parts "
                f"and {SHA1SUMS})"
            )
        tree = self._walk_tree()
        if any(posixpath.basename(n) == "participants.tsv" for n in tree):
            self._files = {n: _Located(n) for n in tree}
        else:
            self._archives = sorted(p for p in self.root.iterdir() if is_archive(p))
            if not self._archives:
                raise SourceNotFoundError(
                    f"bimcv: no participants.tsv and no .tar.gz parts under {self.root}; {self.access}"
                )
            self._index_archives()
        self._index()

    def _walk_tree(self) -> list[str]:
        names = []
        for folder, dirs, files in os.walk(self.root):
            dirs.sort()
            rel = Path(folder).relative_to(self.root).as_posix()
            names += [f if rel == "." else f"{rel}/{f}" for f in sorted(files)]
        return names

    def _index_archives(self) -> None:
        sums_path = self.root / SHA1SUMS
        if not sums_path.is_file():
            raise SourceNotFoundError(
                f"bimcv: {SHA1SUMS} is missing from {self.root}; download it with the archives so each "
                "can be verified"
            )
        sums = read_sha1sums(sums_path)
        differing: list[JsonValue] = []
        for archive in self._archives:
            verify_sha1(archive, sums)
            self._verified[archive.name] = sums[archive.name]
            members = set()
            members_of = iter_archive(archive, lambda n: not _is_image(n), self.max_archive_members, self._json_limit)
            for name, member, data in members_of:
                if name in self._files:
                    raise SourceFormatError(
                        f"bimcv: {name} is in both {self._files[name].archive} and {archive.name}; pass the "
                        "parts of one release only"
                    )
                self._files[name] = _Located(name, archive.name)
                members.add(name)
                if data is not None:
                    self._small[name] = data
                elif not _is_image(name):
                    self._unread[name] = member.size
            listed = self._listing(archive, sums)
            if listed is not None and listed != members:
                differing.append(archive.name)
        self.report.notes["archives"] = {"archives": len(self._archives), "listing_differs": differing}

    def _listing(self, archive: Path, sums: dict[str, str]) -> set[str] | None:
        """The file paths of the archive's verified `*.tar-tvf.txt` listing; None when there is none."""
        stem = archive.name.removesuffix(".tgz") if archive.name.endswith(".tgz") else archive.name
        listing = archive.with_name(f"{stem}.tar-tvf.txt")
        if not listing.is_file():
            return None
        verify_sha1(listing, sums)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise SourceFormatError(f"bimcv: {listing.name} is not UTF-8 text") from exc
        paths = (line.split()[-1] for line in lines if line.startswith("-"))
        return {"/".join(p for p in path.split("/") if p not in ("", ".")) for path in paths}

    def _image_limit(self, name: str) -> int | None:
        return max_image_bytes(self.max_image_pixels)

    def _json_limit(self, name: str) -> int | None:
        return self.max_json_bytes if name.endswith(".json") else None

    def _size(self, name: str) -> int:
        if name in self._small:
            return len(self._small[name])
        if name in self._unread:
            return self._unread[name]
        return (self.root / self._files[name].name).stat().st_size

    def _read(self, name: str) -> bytes:
        if name in self._small:
            return self._small[name]
        located = self._files[name]
        if located.archive is not None:
            raise SourceFormatError(f"bimcv: {name} was not read from {located.archive}")
        return (self.root / located.name).read_bytes()

    def _index(self) -> None:
        candidates = sorted(
            posixpath.dirname(n)
            for n in self._files
            if posixpath.basename(n) == "participants.tsv"
            and any(f.startswith(_join(posixpath.dirname(n), "derivatives/")) for f in self._files)
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
        labels = [n for n in (_join(labels_dir, name) for name in RELEASES) if n in self._files]
        if len(labels) != 1:
            found = sorted(posixpath.basename(n) for n in self._files if n.startswith(labels_dir + "/"))
            raise SourceFormatError(
                f"bimcv: expected one of {', '.join(RELEASES)} in {labels_dir or '.'}, found "
                f"{', '.join(found) or 'nothing'}; this adapter reads iteration 1 and iterations 1+2"
            )
        labels_data = self._read(labels[0])
        self.release = (
            f"{RELEASES[posixpath.basename(labels[0])]}; {posixpath.basename(labels[0])} "
            f"sha256:{hashlib.sha256(labels_data).hexdigest()[:16]}"
        )
        tests = [n for n in (_join(self._meta, f"derivatives/EHR/{t}") for t in TEST_TABLES) if n in self._files]
        if not tests:
            raise SourceFormatError(
                f"bimcv: no derivatives/EHR/{' or '.join(TEST_TABLES)} beside {labels[0]}; the release is "
                "incomplete (iterations 1+2: covid19_posi_head.tar.gz)"
            )
        self._read_tables(_join(self._meta, "participants.tsv"), labels[0], tests[0], labels_data)
        self._index_images()
        self._index_rois()
        self._date_sessions()
        self._check_partitions()

    def _read_tables(self, participants: str, labels: str, tests: str, labels_data: bytes) -> None:
        people, self._junk_participant_rows = parse_participants(self._read(participants), participants)
        self._participant_rows = len(people) + len(self._junk_participant_rows)
        self._participants = {p.participant: p for p in people}
        for name in sorted(self._files):
            base = posixpath.basename(name)
            if base.endswith("_sessions.tsv") and _SUB.match(base.removesuffix("_sessions.tsv")):
                for session in parse_sessions(self._read(name), name):
                    self._sessions[session.session_id] = session
                    self._sessions_of[base.removesuffix("_sessions.tsv")].add(session.session_id)
        self._label_rows = parse_labels(labels_data, labels)
        for row in self._label_rows:
            self._labels.setdefault(row.report_id, row)  # several rows per session: keep the first
            self._sessions_of[row.patient_id].add(row.report_id)
        self._test_rows = parse_tests(self._read(tests), tests)
        for test in self._test_rows:
            self._tests[test.participant].append(test)

    def _index_images(self) -> None:
        for name, located in sorted(self._files.items()):
            path = mids_path(name)
            if path is None:
                continue
            if path.endswith(".json"):
                stem = posixpath.basename(path).removesuffix(".json")
                size = self._size(name)
                if size > self.max_json_bytes:
                    self._bad_sidecars[stem] = (
                        f"{SIDECAR_TOO_LARGE}: {size} bytes, over the limit of {self.max_json_bytes} (max_json_bytes)"
                    )
                    continue
                try:
                    parsed = DicomJson.parse(self._read(name))
                except SidecarError as exc:
                    self._bad_sidecars[stem] = str(exc)
                    continue
                self._sidecars[stem] = name
                self._study_when[stem] = (parsed.text(dicom_json.STUDY_DATE), parsed.text(dicom_json.STUDY_TIME))
                continue
            if path in self._images:
                self._duplicates[name] = located
                continue
            self._images[path] = located
            sub, ses = path.split("/")[:2]
            self._sessions_of[sub].add(ses)

    def _index_rois(self) -> None:
        roi_dir = _join(self._meta, "derivatives/roi/")
        for name in sorted(n for n in self._files if n.startswith(roi_dir) and n.endswith(".xml")):
            stem = aim_roi.image_stem_of_roi(name)
            try:
                if stem is None:
                    raise aim_roi.RoiError("file name names no image (expected …_mod-cr_roi.xml)")
                polygons = aim_roi.parse_aim(self._read(name))
                for polygon in polygons:
                    if len(polygon.points) < 3:
                        raise aim_roi.RoiError(f"a polygon of {polygon.label!r} has {len(polygon.points)} points")
            except aim_roi.RoiError as exc:
                self._bad_rois.append((name, str(exc)))
                continue
            self._rois[stem].append((name, polygons))

    def _date_sessions(self) -> None:
        """(date, time) of every session: sessions.tsv first, else the DICOM Study Date of its images."""
        dicom: dict[str, list[tuple[dt.date, str]]] = defaultdict(list)
        for path in self._images:
            study_date, study_time = self._study_when.get(_stem(path), (None, None))
            day = _yyyymmdd(study_date)
            if day is not None:
                dicom[path.split("/")[1]].append((day, study_time or ""))
        for sessions in self._sessions_of.values():
            for ses in sessions:
                table = self._sessions.get(ses)
                if table is not None and table.study_date is not None:
                    times = sorted(t for d, t in dicom.get(ses, []) if d == table.study_date)
                    self._session_when[ses] = (table.study_date, times[0] if times else "")
                else:
                    self._session_when[ses] = min(dicom[ses]) if dicom.get(ses) else None

    def _check_partitions(self) -> None:
        partitions = _join(self._meta, "derivatives/partitions.tsv")
        if partitions not in self._files:
            self.report.notes["partitions"] = "absent"
            return
        listed = set(parse_partitions(self._read(partitions), partitions))
        self.report.notes["partitions"] = {
            "rows": len(listed),
            "listed_without_file": len(listed - set(self._images)),
            "file_not_listed": len(set(self._images) - listed),
        }

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
            for archive in self._archives:
                size = sum(1 for located in self._images.values() if located.archive == archive.name)
                if size:
                    units.append(WorkUnit(len(units), f"archive {archive.name}", archive=archive.name, size=size))
        else:
            paths, start = sorted(self._images), 0
            for stop in range(1, len(paths) + 1):
                last = stop == len(paths)
                if last or (stop - start >= self.unit_items and _sub(paths[stop]) != _sub(paths[stop - 1])):
                    key = f"subjects {_sub(paths[start])}..{_sub(paths[stop - 1])}"
                    units.append(WorkUnit(len(units), key, start, stop, size=stop - start))
                    start = stop
        extra = len(self._duplicates) + len(self._bad_rois)
        return [*units, WorkUnit(len(units), "duplicate images and unreadable ROIs", size=extra)]

    def items_of(self, unit: WorkUnit) -> Iterator[SourceItem]:
        if unit.archive is not None:
            yield from self._archive_items(unit.archive)
        elif unit.stop > unit.start:
            for path in sorted(self._images)[unit.start : unit.stop]:
                yield self._image_item(path, self._images[path])
        else:
            for name, located in sorted(self._duplicates.items()):
                yield SourceItem(key=name, source_file=located.name, row=None, fields={"kind": "duplicate image"})
            for name, why in self._bad_rois:
                yield SourceItem(key=name, source_file=name, row=None, fields={"kind": "roi", "error": why})
        self._current = None

    def unit_inputs(self, unit: WorkUnit) -> list[Path]:
        if unit.archive is not None:
            return [self.root / unit.archive]
        return [self.root / self._images[path].name for path in sorted(self._images)[unit.start : unit.stop]]

    def unit_checksum(self, unit: WorkUnit) -> str:
        """An archive's sha1, verified against sha1sums.txt in discovery; else the files' sizes and times."""
        if unit.archive is not None:
            return f"sha1:{self._verified[unit.archive]}"
        return super().unit_checksum(unit)

    def source_checksum(self) -> str:
        if self._archives:
            listing = "".join(f"{name} {sha1}\n" for name, sha1 in sorted(self._verified.items()))
            return hashlib.sha256(listing.encode(errors="surrogateescape")).hexdigest()
        return files_checksum(self.root, source_files(self._files))  # the tree as discovery listed it

    def finish(self) -> None:
        self._write_notes()

    def _image_item(self, path: str, located: _Located) -> SourceItem:
        return SourceItem(
            key=path,
            source_file=path,
            row=None,
            fields={"kind": "image", "archive": located.archive, "member": located.name},
            image_path=path,
        )

    def _archive_items(self, archive_name: str) -> Iterator[SourceItem]:
        """The images of one archive in member order, then those gone since discovery (missing)."""
        wanted = {located.name: path for path, located in self._images.items() if located.archive == archive_name}
        yielded: set[str] = set()

        def want(name: str) -> bool:
            return not self.metadata_only and name.endswith(".png") and name in wanted

        members_of = iter_archive(self.root / archive_name, want, self.max_archive_members, self._image_limit)
        for name, member, data in members_of:
            path = wanted.get(name)
            if path is None:
                continue
            self._current = (path, data, member.size)
            yielded.add(path)
            yield self._image_item(path, self._images[path])
        self._current = None
        for path in sorted(set(wanted.values()) - yielded):  # gone since discovery: quarantined as missing
            yield self._image_item(path, self._images[path])

    def read_image(self, item: SourceItem) -> bytes:
        if self._current is not None and self._current[0] == item.key:
            _, data, size = self._current
            if data is None:  # left unread in the archive: over the limit (or metadata only)
                self.check_image_bytes(size)
            return data or b""
        located = self._images.get(item.key)
        if located is None or located.archive is not None:
            raise QuarantineItem("image missing", item.key)
        path = self.root / located.name
        if not path.is_file():
            raise QuarantineItem("image missing", located.name)
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise QuarantineItem("image path unsafe", f"{located.name!r} is a link out of the release")
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
        sidecar = self._sidecar(path, ctx)
        modality = self._modality(match["mod"], sidecar, ctx)
        image = self._image(image, sidecar, item, ctx)
        study = self._study(ses, sidecar, ctx)
        findings, report_evidence = self._findings(ses, ctx, repairs)
        issue = KNOWN_SESSION_ISSUES.get((sub, ses))
        if issue is not None:
            ctx.flag(f"BIMCV quality control: {issue}")
        row = self._labels.get(ses)
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
            masks=self._masks(path, image, sidecar, ctx),
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
        self._recorded.add(path)
        return record

    def _sidecar(self, path: str, ctx: MappingContext) -> DicomJson | None:
        stem = _stem(path)
        why = self._bad_sidecars.get(stem)
        if why is not None and why.startswith(SIDECAR_TOO_LARGE):
            raise QuarantineItem(SIDECAR_TOO_LARGE, why)
        name = self._sidecars.get(stem)
        if name is None:
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
        table = self._sessions.get(ses)
        dicom_raw = sidecar.text(dicom_json.STUDY_DATE) if sidecar is not None else None
        dicom_date = _yyyymmdd(dicom_raw)
        date: dt.date | None = dicom_date
        raw = dicom_raw
        when = self._session_when.get(ses)
        if date is None and when is not None:  # another image of the session has the DICOM date
            date, raw = when[0], when[0].strftime("%Y%m%d")
        if table is not None and table.study_date is not None:
            if dicom_date is not None and dicom_date != table.study_date:
                ctx.flag("study date: sessions.tsv and DICOM differ")
            date, raw = table.study_date, table.study_date_raw
        return Study(study_id=ses, study_date=date, study_year=date.year if date else None, date_raw=raw)

    def _patient(self, sub: str, sidecar: DicomJson | None, ctx: MappingContext, repairs: list[str]) -> Patient:
        person = self._participants.get(sub)
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
        row = self._labels.get(ses)
        when = self._session_when.get(ses)
        if row is None or when is None:
            return None
        earlier = [
            (self._session_when[other], other)
            for other in self._sessions_of.get(row.patient_id, set())
            if other in self._labels and self._session_when.get(other) is not None and other != ses
        ]
        before = [(w, other) for w, other in earlier if w is not None and w < when]
        return max(before)[1] if before else None

    def _resolved_labels(self, ses: str, repairs: list[str], ctx: MappingContext) -> list[tuple[str, str]]:
        """(label as written, session it comes from): the session's labels, `unchanged` replaced by the
        labels of the previous study of the patient (recursively)."""
        result: list[tuple[str, str]] = []
        seen = {ses}
        current: str | None = ses
        while current is not None:
            row = self._labels[current]
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
        row = self._labels.get(ses)
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
        for test in sorted(self._tests.get(sub, []), key=lambda t: (t.date or dt.date.max, t.row)):
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
        rois = self._rois.get(_stem(path), [])
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
            for polygon in polygons:
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
        person, session, row = self._participants.get(sub), self._sessions.get(ses), self._labels.get(ses)
        tests: list[JsonValue] = [t.raw for t in self._tests.get(sub, [])]
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
        subjects_recorded = {p.split("/")[0] for p in self._recorded}
        sessions_recorded = {p.split("/")[1] for p in self._recorded}
        subjects_with_files = {p.split("/")[0] for p in self._images}
        sessions_with_files = {p.split("/")[1] for p in self._images}

        def outcome(key: str, recorded: set[str], with_files: set[str]) -> str:
            if key in recorded:
                return "record"
            return "images excluded or quarantined" if key in with_files else "no image"

        participants = Counter(
            outcome(p, subjects_recorded, subjects_with_files) for p in self._participants
        )
        participants["junk row (not sub-*)"] = len(self._junk_participant_rows)
        label_rows: Counter[str] = Counter()
        for row in self._label_rows:
            if self._labels[row.report_id] is not row:
                label_rows["duplicate row of a session (first kept)"] += 1
            else:
                label_rows[outcome(row.report_id, sessions_recorded, sessions_with_files)] += 1
        tests = Counter(outcome(t.participant, subjects_recorded, subjects_with_files) for t in self._test_rows)
        rois = Counter(
            "attached to a record" if name in self._roi_attached else "no matching record"
            for entries in self._rois.values()
            for name, _ in entries
        )
        rois["unreadable (quarantined)"] = len(self._bad_rois)
        kinds = Counter(
            "png" if p.endswith(".png") else "nii.gz" if p.endswith(".nii.gz") else "other" for p in self._images
        )
        self.report.notes.update(
            {
                "release": self.release,
                "read_from": "archives" if self._archives else "folder",
                "image_files": dict(sorted(kinds.items())),
                "participants": {"rows": self._participant_rows, **dict(sorted(participants.items()))},
                "label_rows": {"rows": len(self._label_rows), **dict(sorted(label_rows.items()))},
                "test_rows": {"rows": len(self._test_rows), **dict(sorted(tests.items()))},
                "roi_files": {
                    "files": sum(len(e) for e in self._rois.values()) + len(self._bad_rois),
                    **dict(sorted(rois.items())),
                },
                "subjects_not_in_participants": [*sorted(subjects_with_files - set(self._participants))],
            }
        )


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
