"""ieee8023 covid-chestxray-dataset: `metadata.csv` (+ `images/`), any of its three header generations.

Discovery reads the file once, streaming, into an on-disk index (`DiskIndex`): every parsed row, the
sexes given per patient and the first in-scope row of each filename. Memory does not grow with the rows;
a unit reads back only its own rows.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from pydantic import JsonValue

from covid_cxr_unified.adapters.base import (
    Adapter,
    ExcludeItem,
    MappingContext,
    QuarantineItem,
    SourceItem,
    WorkUnit,
)
from covid_cxr_unified.adapters.disk_index import DiskIndex
from covid_cxr_unified.adapters.urls import scrubbed
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
from covid_cxr_unified.schema.licenses import UNKNOWN_LICENSE_ID, license_record
from covid_cxr_unified.schema.record import (
    MAX_AGE_YEARS,
    Clinical,
    Covid19Evidence,
    Covid19Label,
    FindingLabel,
    ImageRef,
    Outcomes,
    Patient,
    Provenance,
    Record,
    Study,
    ViewInfo,
)
from covid_cxr_unified.schema.vocab import (
    FINDING_CUI,
    Covid19Basis,
    Finding,
    LabelState,
    Modality,
    OffsetReference,
    Sex,
    Source,
    View,
    ViewBasis,
)

F = Finding
POS, NEG, NM = LabelState.POSITIVE, LabelState.NEGATIVE, LabelState.NOT_MENTIONED

# Raw finding (whitespace-stripped; the raw text is kept on the record) -> positive findings and what
# the finding says about COVID-19. Plain "Pneumonia" names no cause, so COVID-19 is not mentioned.
FINDINGS: dict[str, tuple[tuple[Finding, ...], LabelState]] = {
    # newest generation: hierarchical
    "Pneumonia/Viral/COVID-19": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.COVID19), POS),
    "Pneumonia/Viral/SARS": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.SARS), NEG),
    "Pneumonia/Viral/MERS-CoV": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.MERS), NEG),
    "Pneumonia/Viral/Varicella": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.VARICELLA), NEG),
    "Pneumonia/Viral/Influenza": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.INFLUENZA), NEG),
    "Pneumonia/Viral/Influenza/H1N1": (
        (F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.INFLUENZA, F.INFLUENZA_H1N1),
        NEG,
    ),
    "Pneumonia/Viral/Herpes": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.HERPES), NEG),
    "Pneumonia/Bacterial": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA), NEG),
    "Pneumonia/Bacterial/Streptococcus": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.STREPTOCOCCUS), NEG),
    "Pneumonia/Bacterial/Mycoplasma": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.MYCOPLASMA), NEG),
    "Pneumonia/Bacterial/Klebsiella": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.KLEBSIELLA), NEG),
    "Pneumonia/Bacterial/Legionella": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.LEGIONELLA), NEG),
    "Pneumonia/Bacterial/Nocardia": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.NOCARDIA), NEG),
    "Pneumonia/Bacterial/E.Coli": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.E_COLI), NEG),
    "Pneumonia/Bacterial/Chlamydophila": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.CHLAMYDOPHILA), NEG),
    "Pneumonia/Bacterial/Staphylococcus/MRSA": (
        (F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.STAPHYLOCOCCUS, F.MRSA),
        NEG,
    ),
    "Pneumonia/Fungal/Pneumocystis": ((F.PNEUMONIA, F.FUNGAL_PNEUMONIA, F.PNEUMOCYSTIS), NEG),
    "Pneumonia/Fungal/Aspergillosis": ((F.PNEUMONIA, F.FUNGAL_PNEUMONIA, F.ASPERGILLOSIS), NEG),
    "Pneumonia/Lipoid": ((F.PNEUMONIA, F.LIPOID_PNEUMONIA), NEG),
    "Pneumonia/Aspiration": ((F.PNEUMONIA, F.ASPIRATION_PNEUMONIA), NEG),
    "Pneumonia": ((F.PNEUMONIA,), NM),
    "Tuberculosis": ((F.TUBERCULOSIS,), NEG),
    "No Finding": ((F.NO_FINDING,), NEG),
    # earlier generations: flat labels
    "COVID-19": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.COVID19), POS),
    "COVID-19, ARDS": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.COVID19, F.ARDS), POS),
    "SARS": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.SARS), NEG),
    "MERS": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.MERS), NEG),
    "ARDS": ((F.ARDS,), NM),
    "Streptococcus": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.STREPTOCOCCUS), NEG),
    "Pneumocystis": ((F.PNEUMONIA, F.FUNGAL_PNEUMONIA, F.PNEUMOCYSTIS), NEG),
    "Legionella": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.LEGIONELLA), NEG),
    "Klebsiella": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.KLEBSIELLA), NEG),
    "Chlamydophila": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.CHLAMYDOPHILA), NEG),
    "E.Coli": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.E_COLI), NEG),
    "Mycoplasma Bacterial Pneumonia": ((F.PNEUMONIA, F.BACTERIAL_PNEUMONIA, F.MYCOPLASMA), NEG),
    "Varicella": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.VARICELLA), NEG),
    "Influenza": ((F.PNEUMONIA, F.VIRAL_PNEUMONIA, F.INFLUENZA), NEG),
    "Lipoid": ((F.PNEUMONIA, F.LIPOID_PNEUMONIA), NEG),
}

# Findings the maintainers say are not part of the dataset (issue #149): excluded by scope.
NOT_IN_DATASET_FINDINGS = {"todo", "Unknown"}

VIEWS: dict[str, View] = {
    "PA": View.PA,
    "AP": View.AP,
    "AP Supine": View.AP_SUPINE,
    "AP Erect": View.AP,  # an AP film taken upright; the raw value is kept
    "L": View.LATERAL,
}
CT_VIEWS = {"Axial", "Coronal"}

MODALITIES: dict[str, Modality] = {"X-ray": Modality.XR, "CT": Modality.CT}
SEXES: dict[str, Sex] = {"M": Sex.MALE, "F": Sex.FEMALE}
YES_NO: dict[str, bool] = {"Y": True, "N": False}
PCR_RESULTS: dict[str, LabelState] = {"Y": LabelState.POSITIVE, "Unclear": LabelState.UNCERTAIN}

# All 12 raw spellings of the newest file, exactly (the single space is a blank in disguise).
LICENSES: dict[str, str] = {
    "": UNKNOWN_LICENSE_ID,
    " ": UNKNOWN_LICENSE_ID,
    "CC BY-NC-SA": "LicenseRef-CC-BY-NC-SA-unversioned",
    "CC BY-NC-SA 4.0": "CC-BY-NC-SA-4.0",
    "CC BY 3.0": "CC-BY-3.0",
    "CC BY-NC-ND": "LicenseRef-CC-BY-NC-ND-unversioned",
    "CC BY-NC-ND 4.0": "CC-BY-NC-ND-4.0",
    "Apache 2.0": "Apache-2.0",
    "listed as authorized for everyone": "LicenseRef-ieee8023-authorized-for-everyone",
    "CC BY 4.0": "CC-BY-4.0",
    "CC BY": "LicenseRef-CC-BY-unversioned",
    "CC BY-SA": "LicenseRef-CC-BY-SA-unversioned",
}

DATE_FORMATS: tuple[tuple[str, bool], ...] = (  # (strptime format, has a day)
    ("%Y", False),
    ("%B %d, %Y", True),
    ("%b %d, %Y", True),
    ("%m/%d/%y", True),
    ("%m/%d/%Y", True),
    ("%B %Y", False),
    ("%d %B %Y", True),
)

OUTCOME_COLUMNS = {
    "survival": "survival",
    "intubated": "intubated",
    "intubation_present": "intubation_present",
    "went_icu": "went_icu",
    "in_icu": "in_icu",
    "needed_supplemental_O2": "needed_supplemental_o2",
    "extubated": "extubated",
}
CLINICAL_COLUMNS = {
    "temperature": "temperature_c",
    "pO2_saturation": "po2_saturation",
    "leukocyte_count": "leukocyte_count",
    "neutrophil_count": "neutrophil_count",
    "lymphocyte_count": "lymphocyte_count",
}
# (column, low, high): values outside are kept as published and flagged.
PLAUSIBLE_RANGES = (
    ("temperature", 30.0, 45.0),
    ("pO2_saturation", 0.0, 100.0),
    ("lymphocyte_count", 0.0, 50.0),
)


@dataclass(frozen=True)
class HeaderGeneration:
    name: str
    marker: str  # a column only this generation (or a later one) has


# Newest first: the first whose marker is present wins.
GENERATIONS = (
    HeaderGeneration("2020-07+ hierarchical findings, RT_PCR_positive", "RT_PCR_positive"),
    HeaderGeneration("2020-04..06 flat findings, went_icu", "went_icu"),
    HeaderGeneration("2020-03 Patientid, url, notes", "patientid"),
)
# Early spellings -> current column names.
COLUMN_ALIASES = {"Patientid": "patientid", "notes": "clinical_notes"}
REQUIRED_COLUMNS = ("patientid", "finding", "view", "filename", "license")
ROWS_PER_BLOCK = 256  # rows stored, read back and indexed together


class Ieee8023Adapter(Adapter):
    name: ClassVar[Source] = Source.IEEE8023
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str] = "COVID-19 image data collection (ieee8023 covid-chestxray-dataset)"
    homepage: ClassVar[str] = "https://github.com/ieee8023/covid-chestxray-dataset"
    citation: ClassVar[str] = (
        "@article{cohen2020covid,\n"
        "  title={COVID-19 image data collection},\n"
        "  author={Joseph Paul Cohen and Paul Morrison and Lan Dao},\n"
        "  journal={arXiv 2003.11597},\n"
        "  year={2020}\n}"
    )
    access: ClassVar[str] = (
        "git clone https://github.com/ieee8023/covid-chestxray-dataset and pass the clone (or its "
        "metadata.csv) as --ieee8023"
    )

    def __init__(self, root: Path, **kwargs: object) -> None:
        metadata = root if root.name.endswith(".csv") else root / "metadata.csv"
        images = kwargs.pop("images", None) or metadata.parent / "images"
        super().__init__(metadata.parent, images=images, **kwargs)  # type: ignore[arg-type]
        self.metadata = metadata
        self.generation = ""
        self._metadata_sha256 = ""
        self._row_count = 0
        self._duplicate_count = 0  # rows repeating the filename of an earlier in-scope row
        self._sex_conflict_count = 0  # patients whose rows give more than one sex

    def discover(self) -> None:
        if not self.metadata.is_file():
            raise SourceNotFoundError(
                f"ieee8023: no metadata.csv at {self.metadata}; {self.access}"
            )
        index = DiskIndex(self.workdir, name="ieee8023")  # its file lives as long as its tables
        self._rows = index.table("rows")  # "block number" -> [[first line, last line, cells], ...]
        self._sexes = index.table("sexes")  # patientid -> the sexes its rows give, sorted
        self._first_rows = index.table("first_rows")  # filename -> its first in-scope row
        header, self._metadata_sha256 = self._read_rows()
        if header is None:
            raise SourceFormatError(f"ieee8023: {self.metadata.name} is empty")
        self.header = [COLUMN_ALIASES.get(h.strip(), h.strip()) for h in header]
        missing = [c for c in REQUIRED_COLUMNS if c not in self.header]
        if missing:
            raise SourceFormatError(
                f"ieee8023: {self.metadata.name} lacks column(s) {', '.join(missing)}; header is "
                f"{','.join(header)}"
            )
        self.generation = next(g.name for g in GENERATIONS if g.marker in self.header)
        self.release = f"{self.generation}; metadata.csv sha256:{self._metadata_sha256[:16]}"
        self._raw_header = header
        self._index_patients_and_filenames()
        conflicts = {p: sexes for p, sexes in self._sexes.items() if len(sexes) > 1}
        self.report.notes["sex_conflicts"] = dict(sorted(conflicts.items()))
        self._sex_conflict_count = len(conflicts)

    def _read_rows(self) -> tuple[list[str] | None, str]:
        """Parse metadata.csv in one streaming read, rows to disk: (header, sha256 of the bytes)."""
        with self.metadata.open("rb") as handle:
            hashed = _HashingReader(handle)
            text = io.TextIOWrapper(io.BufferedReader(hashed), encoding="utf-8-sig", newline="")
            reader = csv.reader(text)
            try:
                header = next(reader, None)
                self._store_rows(reader)
            except (UnicodeDecodeError, csv.Error) as exc:  # csv.Error: e.g. a cell over its field size limit
                raise self._read_error(exc, reader.line_num) from exc
        return header, hashed.sha256.hexdigest()

    def _store_rows(self, reader: Any) -> None:
        """The rows of a csv reader in blocks of ROWS_PER_BLOCK (the last one may be short)."""
        self._row_count = 0
        block: list[JsonValue] = []
        previous_end = 1  # a bad quote can join several lines into one row
        for cells in reader:
            block.append([previous_end + 1, reader.line_num, cells])
            previous_end = reader.line_num
            self._row_count += 1
            if len(block) == ROWS_PER_BLOCK:
                self._rows[str(self._row_count // ROWS_PER_BLOCK - 1)] = block
                block = []
        if block:
            self._rows[str(self._row_count // ROWS_PER_BLOCK)] = block

    def _numbered_rows(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """(row number, stored row) of rows start+1..stop, one block read at a time."""
        block: list[Any] = []
        for index in range(start, stop):
            if index == start or index % ROWS_PER_BLOCK == 0:
                block = self._rows[str(index // ROWS_PER_BLOCK)]
            yield index + 1, block[index % ROWS_PER_BLOCK]

    def _read_error(self, exc: Exception, line_num: int) -> SourceFormatError:
        """A byte that is not UTF-8 anywhere in the file is reported before any CSV error."""
        bad_line = _first_non_utf8_line(self.metadata)
        if bad_line is not None:
            return SourceFormatError(f"ieee8023: {self.metadata.name} line {bad_line} is not UTF-8")
        if isinstance(exc, UnicodeDecodeError):  # the file changed while it was read
            return SourceFormatError(f"ieee8023: {self.metadata.name} is not UTF-8")
        return SourceFormatError(f"ieee8023: {self.metadata.name} line {line_num}: {exc}")

    def _index_patients_and_filenames(self) -> None:
        """Done in discovery so that any range of rows can be processed alone. Rows go last to first:
        the row of a filename written last, its first in-scope row, is the one the table keeps."""
        in_scope = 0
        for start in reversed(range(0, self._row_count, ROWS_PER_BLOCK)):
            rows = list(self._numbered_rows(start, min(start + ROWS_PER_BLOCK, self._row_count)))[::-1]
            self._add_sexes([cells for _, (_, _, cells) in rows])
            in_scope += self._add_first_rows(self._items(rows))
        self._duplicate_count = in_scope - len(self._first_rows)

    def _add_sexes(self, lines: list[list[str]]) -> None:
        """Merge the sexes these rows give into each patient's sorted list."""
        if "sex" not in self.header:
            return
        pid, sex = self.header.index("patientid"), self.header.index("sex")
        found: dict[str, set[str]] = defaultdict(set)
        for line in lines:
            if len(line) == len(self.header) and line[sex].strip():
                found[line[pid].strip()].add(line[sex].strip())
        changed: dict[str, list[str]] = {}
        for patient, sexes in found.items():
            known = self._sexes.get(patient, [])
            merged = sorted(sexes.union(known))
            if merged != known:
                changed[patient] = merged
        self._sexes.update(changed.items())

    def _add_first_rows(self, items: Iterable[SourceItem]) -> int:
        """Write filename -> row for the in-scope items, in their order; return how many there are."""
        pairs = [(self._column(item, "filename"), item.row) for item in items if self._in_scope(item)]
        self._first_rows.update(pairs)
        return len(pairs)

    def _in_scope(self, item: SourceItem) -> bool:
        try:
            self._check_row(item)
        except (ExcludeItem, QuarantineItem):
            return False
        return True

    def items(self) -> Iterator[SourceItem]:
        return self._items(self._numbered_rows(0, self._row_count))

    def units(self) -> list[WorkUnit]:
        return self.range_units(self._row_count, "rows")

    def source_checksum(self) -> str:
        return self._metadata_sha256

    def items_of(self, unit: WorkUnit) -> Iterator[SourceItem]:
        return self._items(self._numbered_rows(unit.start, unit.stop))

    def _items(self, rows: Iterable[tuple[int, Any]]) -> Iterator[SourceItem]:
        """Items of (row number, stored row) pairs."""
        for number, (first, last, line) in rows:
            fields: dict[str, JsonValue]
            if len(line) == len(self.header):
                fields = dict(zip(self._raw_header, line, strict=True))
            else:
                where = f"line {first}" if first == last else f"lines {first}-{last} (a bad quote joins them)"
                fields = {"_malformed_fields": list(line), "_lines": where}
            filename = line[self.header.index("filename")] if len(line) == len(self.header) else None
            yield SourceItem(
                key=filename or f"row {number}",
                source_file=self.metadata.name,
                row=number,
                fields=fields,
                image_path=filename or None,
            )

    def _column(self, item: SourceItem, column: str) -> str:
        """The cell of a current-name column, '' when this generation lacks the column."""
        if column not in self.header:
            return ""
        value = item.fields[self._raw_header[self.header.index(column)]]
        return value if isinstance(value, str) else ""

    def check_scope(self, item: SourceItem, ctx: MappingContext) -> None:
        self._check_row(item)
        # The counts spare a look-up per row when, as usual, there is nothing to find.
        if self._duplicate_count and self._first_rows.get(self._column(item, "filename")) != item.row:
            raise QuarantineItem("duplicate filename")

    def _check_row(self, item: SourceItem) -> None:
        if "_malformed_fields" in item.fields:
            n = len(item.fields["_malformed_fields"])  # type: ignore[arg-type]
            where = item.fields["_lines"]
            raise QuarantineItem("malformed row", f"{n} fields, header has {len(self.header)}; {where}")
        cell = self._column
        if cell(item, "folder").strip() == "volumes":
            raise ExcludeItem("CT volume: not a chest X-ray")
        if self._modality_raw(item) == "CT":
            raise ExcludeItem("CT slice: not a chest X-ray")
        finding = cell(item, "finding").strip()
        if finding in NOT_IN_DATASET_FINDINGS:
            raise ExcludeItem(f"finding '{finding}': not part of the dataset (ieee8023 #149)")
        if not cell(item, "filename").strip():
            raise QuarantineItem("filename missing")
        if not cell(item, "patientid").strip():
            raise QuarantineItem("patientid missing")

    def _modality_raw(self, item: SourceItem) -> str:
        raw = self._column(item, "modality").strip()
        if raw or "modality" in self.header:
            return raw
        # The earliest header has no modality column; there, CT slices are the Axial/Coronal views.
        return "CT" if self._column(item, "view").strip() in CT_VIEWS else "X-ray"

    def to_record(self, item: SourceItem, image: ImageRef | None, ctx: MappingContext) -> Record:
        fields, repairs = scrubbed(dict(item.fields))  # no access token from a `url` cell reaches a build
        item = dataclasses.replace(item, fields=fields)
        cell = self._column
        pid = cell(item, "patientid").strip()
        filename = cell(item, "filename")
        finding_raw = cell(item, "finding")
        findings, covid_state = ctx.lookup("finding", FINDINGS, finding_raw.strip() or None) or ((), NM)
        modality = ctx.lookup("modality", MODALITIES, self._modality_raw(item) or None) or Modality.XR
        self._flag_values(item, ctx, pid)
        offset = _int_or_none(ctx, "offset", cell(item, "offset").strip())
        date, year = _parse_date(ctx, cell(item, "date").strip())
        license_raw = cell(item, "license")
        license_id = ctx.lookup("license", LICENSES, license_raw) or UNKNOWN_LICENSE_ID
        credit = cell(item, "doi").strip() or cell(item, "url").strip()
        return Record(
            record_id=f"ieee8023:{filename}",
            source=Source.IEEE8023,
            release=self.release,
            patient=Patient(
                patient_id=f"ieee8023:{pid}",
                sex=ctx.lookup("sex", SEXES, cell(item, "sex").strip() or None),
                age_years=_age_or_none(ctx, cell(item, "age").strip()),
            ),
            study=Study(study_date=date, study_year=year, date_raw=cell(item, "date") or None),
            image=image,
            modality=modality,
            view=self._view(item, ctx),
            findings=tuple(
                FindingLabel(finding=f, state=POS, cui=FINDING_CUI.get(f), raw=finding_raw) for f in findings
            ),
            covid19=_covid19(covid_state, finding_raw, self._pcr(item, ctx)),
            offset_days=offset,
            offset_reference=OffsetReference.SYMPTOM_ONSET_OR_ADMISSION if offset is not None else None,
            outcomes=Outcomes(
                **{
                    attr: ctx.lookup(col, YES_NO, cell(item, col).strip() or None)
                    for col, attr in OUTCOME_COLUMNS.items()
                }
            ),
            clinical=Clinical(
                **{
                    attr: _float_or_none(ctx, col, cell(item, col).strip())
                    for col, attr in CLINICAL_COLUMNS.items()
                }
            ),
            license=license_record(
                license_id,
                license_raw,
                attribution=f"{credit} ({license_raw.strip() or 'license not stated'}), "
                "via ieee8023/covid-chestxray-dataset",
            ),
            provenance=Provenance(
                source_file=item.source_file,
                row=item.row,
                adapter_version=self.version,
                repairs=repairs,
                flags=tuple(ctx.flags),
            ),
            raw=dict(item.fields),
        )

    def _view(self, item: SourceItem, ctx: MappingContext) -> ViewInfo:
        raw = self._column(item, "view")
        view = ctx.lookup("view", VIEWS, raw.strip() or None)
        if view is None:
            return ViewInfo(view=View.UNKNOWN, raw=raw or None, basis=ViewBasis.NONE)
        return ViewInfo(view=view, raw=raw, basis=ViewBasis.METADATA)

    def _pcr(self, item: SourceItem, ctx: MappingContext) -> Covid19Evidence | None:
        raw = self._column(item, "RT_PCR_positive").strip()
        state = ctx.lookup("RT_PCR_positive", PCR_RESULTS, raw or None)
        return None if state is None else Covid19Evidence(basis=Covid19Basis.PCR, state=state, raw=raw)

    def _flag_values(self, item: SourceItem, ctx: MappingContext, pid: str) -> None:
        if self._sex_conflict_count and len(self._sexes.get(pid, ())) > 1:
            ctx.flag("sex conflicts within patient")
        if self._column(item, "").strip():
            ctx.flag("notes spilled into the unnamed trailing column")
        for column, low, high in PLAUSIBLE_RANGES:
            value = self._column(item, column).strip()
            try:
                number = float(value) if value else None
            except ValueError:
                continue
            if number is not None and not low <= number <= high:
                ctx.flag(f"implausible {column}")


class _HashingReader(io.RawIOBase):
    """A binary file that hashes its bytes as they are read."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.handle.read(len(buffer))
        buffer[: len(data)] = data
        self.sha256.update(data)
        return len(data)


def _first_non_utf8_line(path: Path) -> int | None:
    """The line (1-based, lines end at b"\\n") of the file's first byte that is not UTF-8; None when all are."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            pending = decoder.getstate()[0]  # the unfinished character the last chunk ended with
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:  # exc.start counts from `pending`, which holds no newline
                return newlines + (pending + chunk)[: exc.start].count(b"\n") + 1
            newlines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return newlines + 1
    return None


def _covid19(from_finding: LabelState, finding_raw: str, pcr: Covid19Evidence | None) -> Covid19Label:
    evidence = [Covid19Evidence(basis=Covid19Basis.PUBLICATION, state=from_finding, raw=finding_raw)]
    if pcr is not None:
        evidence.append(pcr)
    if from_finding is NM:
        return Covid19Label(state=NM, basis=Covid19Basis.NONE, evidence=tuple(evidence))
    pcr_confirms = pcr is not None and pcr.state is from_finding
    basis = Covid19Basis.PCR if pcr_confirms else Covid19Basis.PUBLICATION
    return Covid19Label(state=from_finding, basis=basis, evidence=tuple(evidence))


def _int_or_none(ctx: MappingContext, column: str, raw: str) -> int | None:
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        ctx.unmapped(column, raw)
        return None


def _age_or_none(ctx: MappingContext, raw: str) -> float | None:
    """An age outside 0..130 years is no age: counted as unmapped, the row stays a record."""
    age = _float_or_none(ctx, "age", raw)
    if age is not None and not 0 <= age <= MAX_AGE_YEARS:
        ctx.unmapped("age", raw)
        return None
    return age


def _float_or_none(ctx: MappingContext, column: str, raw: str) -> float | None:
    if not raw:
        return None
    try:
        number = float(raw)
    except ValueError:
        ctx.unmapped(column, raw)
        return None
    if not math.isfinite(number):  # 'nan', 'inf': not a measurement
        ctx.unmapped(column, raw)
        return None
    return number


def _parse_date(ctx: MappingContext, raw: str) -> tuple[dt.date | None, int | None]:
    """(date when the day is known, year when the year is known)."""
    if not raw:
        return None, None
    for fmt, has_day in DATE_FORMATS:
        try:
            parsed = dt.datetime.strptime(raw, fmt)
        except ValueError:
            continue
        return (parsed.date() if has_day else None), parsed.year
    try:  # "January 12": a day without a year
        dt.datetime.strptime(f"{raw} 2000", "%B %d %Y")
        return None, None
    except ValueError:
        ctx.unmapped("date", raw)
        return None, None

