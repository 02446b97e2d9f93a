"""Linking V7 images to ieee8023 rows: exact `file_name` == `filename`, and field-by-field agreement.

V7 was built from the June-2020 ieee8023 metadata, so its tags are a snapshot of that file; a newer
metadata.csv lacks a few of its images and relabels some fields. Nothing here changes either side:
it says which row an image belongs to, why an image has none, and where the two disagree. The rows
are streamed from metadata.csv into a `DiskIndex`, so memory does not grow with the metadata.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import JsonValue

from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable
from covid_cxr_unified.adapters.v7_formats import BatchWriter
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError

# Early ieee8023 header spellings -> current column names (as in the ieee8023 adapter).
COLUMN_ALIASES = {"Patientid": "patientid", " url": "url", "notes": "clinical_notes"}

# Fields compared between a V7 tag (already named as the ieee8023 column) and the ieee8023 cell.
NUMERIC_FIELDS = ("age", "temperature", "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count")
TEXT_FIELDS = (
    "patientid",
    "sex",
    "view",
    "modality",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "location",
    "finding",
)
COMPARED_FIELDS = TEXT_FIELDS + NUMERIC_FIELDS
# Every ieee8023 spelling of a COVID-19 finding, as the value V7's bare `COVID-19` tag stands for.
COVID19_FINDINGS = {"Pneumonia/Viral/COVID-19": "COVID-19", "COVID-19": "COVID-19", "COVID-19, ARDS": "COVID-19"}

AGREE, DISAGREE, V7_ONLY, IEEE_ONLY, BOTH_BLANK = "agree", "disagree", "v7_only", "ieee8023_only", "both_blank"


@dataclass(frozen=True)
class Ieee8023Row:
    filename: str
    patientid: str
    cells: Mapping[str, str]  # current column names -> raw cell

    @classmethod
    def of(cls, cells: Mapping[str, str]) -> Ieee8023Row:
        return cls(cells["filename"], cells["patientid"].strip(), cells)


def metadata_path(related: Path) -> Path:
    """The metadata.csv of an ieee8023 folder, or the file itself."""
    return related if related.suffix.lower() == ".csv" else related / "metadata.csv"


class Ieee8023Rows:
    """ieee8023 rows by exact filename, on disk (`DiskIndex`): each row's cells in `header` order."""

    def __init__(self, index: DiskIndex, header: list[str]) -> None:
        self.header = header
        # A column named twice keeps its last cell, as dict(zip(header, line)) does.
        self._filename_at = len(header) - 1 - header[::-1].index("filename")
        self._index = index
        self._lines = BatchWriter(index.table("rows", multi=True))  # filename -> each row's cells
        self._near: tuple[DiskTable, DiskTable] | None = None

    def add(self, line: list[str]) -> None:
        self._lines.add(line[self._filename_at], line)

    def flush(self) -> None:
        self._lines.flush()

    def row(self, line: list[str]) -> Ieee8023Row:
        return Ieee8023Row.of(dict(zip(self.header, line, strict=True)))

    def match(self, file_name: str) -> tuple[Ieee8023Row, list[str]] | str:
        """The one row with this filename (and its cells), or why the image is not linked."""
        found = self._lines.table.get(file_name, [])
        if len(found) == 1:
            return self.row(found[0]), found[0]
        if len(found) > 1:
            return f"ambiguous: {len(found)} ieee8023 rows have this filename"
        folded_names, stem_names = self._near_names()
        folded = folded_names.get(file_name.casefold(), [])
        if folded:
            return f"not in ieee8023 metadata; only a case-insensitive match ({min(folded)}), not linked"
        same_stem = stem_names.get(_stem(file_name), [])
        if same_stem:
            return f"not in ieee8023 metadata; only the stem matches ({min(same_stem)}), not linked"
        return "not in ieee8023 metadata (removed upstream after V7's June-2020 snapshot, or never there)"

    def _near_names(self) -> tuple[DiskTable, DiskTable]:
        """Filenames by casefold and by stem; made on the first image that has no row."""
        if self._near is None:
            folded = BatchWriter(self._index.table("folded", multi=True))
            stems = BatchWriter(self._index.table("stems", multi=True))
            for name in self._lines.table:
                folded.add(name.casefold(), name)
                stems.add(_stem(name), name)
            folded.flush()
            stems.flush()
            self._near = folded.table, stems.table
        return self._near


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def read_ieee8023_rows(related: Path, index: DiskIndex) -> Ieee8023Rows:
    """Every well-formed row (malformed rows, of the wrong field count, link nothing), read as a stream.
    Errors come in the order reading the whole file first gave: not UTF-8, then CSV, then columns."""
    path = metadata_path(related)
    if not path.is_file():
        raise SourceNotFoundError(f"v7_darwin: no ieee8023 metadata.csv at {path} to link against")
    try:
        with path.open(encoding="utf-8-sig", newline="") as text:
            rows = _read_rows(text, path, index)
    except UnicodeDecodeError as exc:
        raise SourceFormatError(f"v7_darwin: ieee8023 {path.name} is not UTF-8") from exc
    if isinstance(rows, SourceFormatError):
        raise rows
    rows.flush()
    return rows


def _read_rows(text: TextIO, path: Path, index: DiskIndex) -> Ieee8023Rows | SourceFormatError:
    """The rows of `text`, or the CSV or column problem found, once all of `text` is decoded."""
    reader = csv.reader(text)
    try:
        header = [COLUMN_ALIASES.get(h, h.strip()) for h in next(reader, [])]
        rows = Ieee8023Rows(index, header) if "filename" in header and "patientid" in header else None
        for line in reader:
            if rows is not None and len(line) == len(header):
                rows.add(line)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
        problem = SourceFormatError(f"v7_darwin: ieee8023 {path.name} line {reader.line_num}: {exc}")
        while text.read(1 << 16):  # the rest must still decode
            pass
        return problem
    if rows is None:
        return SourceFormatError(f"v7_darwin: ieee8023 {path.name} lacks filename/patientid columns")
    return rows


def compare(v7: Mapping[str, str], row: Ieee8023Row) -> dict[str, str]:
    """Per field: agree, disagree, v7_only, ieee8023_only or both_blank. Whitespace is not a difference.

    `finding` compares V7's `COVID-19` tag with the row's finding, read through COVID19_FINDINGS.
    """
    outcome: dict[str, str] = {}
    for name in COMPARED_FIELDS:
        mine, theirs = v7.get(name, "").strip(), row.cells.get(name, "").strip()
        if name == "finding":
            theirs = COVID19_FINDINGS.get(theirs, theirs)
        if not mine and not theirs:
            outcome[name] = BOTH_BLANK
        elif not theirs:
            outcome[name] = V7_ONLY
        elif not mine:
            outcome[name] = IEEE_ONLY
        else:
            outcome[name] = AGREE if _same(name, mine, theirs) else DISAGREE
    return outcome


def _same(name: str, mine: str, theirs: str) -> bool:
    if name in NUMERIC_FIELDS:
        try:
            return float(mine) == float(theirs)
        except ValueError:
            return mine == theirs
    return mine == theirs


class Agreement:
    """Per compared field, how many linked images fall in each outcome."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {name: Counter() for name in COMPARED_FIELDS}

    def add(self, outcome: dict[str, str]) -> None:
        for name, kind in outcome.items():
            self._counts[name][kind] += 1

    def table(self) -> dict[str, dict[str, int]]:
        return {name: dict(sorted(c.items())) for name, c in self._counts.items()}


class Linkage:
    """Links images to ieee8023 rows one by one; each link goes to `links` on disk:
    file_name -> [the row's cells in `rows.header` order, the fields where V7 disagrees] (`link_of`
    reads it back)."""

    def __init__(self, related: Path, rows: Ieee8023Rows, links: DiskTable) -> None:
        self.related = related
        self.rows = rows
        self.links = BatchWriter(links)
        self.unmatched: dict[str, JsonValue] = {}
        self.agreement = Agreement()

    def add(self, file_name: str, v7: Mapping[str, str]) -> list[Any] | None:
        """Link one image, given its tag values as ieee8023 spells them; the link as stored, or None."""
        found = self.rows.match(file_name)
        if isinstance(found, str):
            self.unmatched[file_name] = found
            return None
        row, line = found
        outcome = compare(v7, row)
        self.agreement.add(outcome)
        link = [line, [name for name, kind in outcome.items() if kind == DISAGREE]]
        self.links.add(file_name, link)
        return link

    def notes(self) -> dict[str, JsonValue]:
        """The report's `linkage`, `disagreements` and `field_agreement` notes."""
        self.links.flush()
        matched = len(self.links.table)
        table = self.agreement.table()
        return {
            "linkage": {
                "ieee8023": self.related.name,
                "images": matched + len(self.unmatched),
                "matched": matched,
                "unmatched": dict(sorted(self.unmatched.items())),
            },
            "disagreements": {name: c.get(DISAGREE, 0) for name, c in table.items()},
            "field_agreement": {name: dict(c) for name, c in table.items()},
        }


def link_of(stored: list[Any], header: list[str]) -> tuple[Ieee8023Row, tuple[str, ...]]:
    """The row of a link as `Linkage` stores it, and the fields where V7 disagrees with it."""
    line, disagreements = stored
    return Ieee8023Row.of(dict(zip(header, line, strict=True))), tuple(disagreements)
