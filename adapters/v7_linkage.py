"""Linking V7 images to ieee8023 rows: exact `file_name` == `filename`, and field-by-field agreement.

V7 was built from the June-2020 ieee8023 metadata, so its tags are a snapshot of that file; a newer
metadata.csv lacks a few of its images and relabels some fields. Nothing here changes either side:
it says which row an image belongs to, why an image has none, and where the two disagree.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def metadata_path(related: Path) -> Path:
    """The metadata.csv of an ieee8023 folder, or the file itself."""
    return related if related.suffix.lower() == ".csv" else related / "metadata.csv"


def read_ieee8023_rows(related: Path) -> dict[str, list[Ieee8023Row]]:
    """Rows by exact filename. Malformed rows (wrong field count) are skipped: they link nothing."""
    path = metadata_path(related)
    if not path.is_file():
        raise SourceNotFoundError(f"v7_darwin: no ieee8023 metadata.csv at {path} to link against")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceFormatError(f"v7_darwin: ieee8023 {path.name} is not UTF-8") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header_line, lines = next(reader, []), list(reader)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
        raise SourceFormatError(f"v7_darwin: ieee8023 {path.name} line {reader.line_num}: {exc}") from exc
    header = [COLUMN_ALIASES.get(h, h.strip()) for h in header_line]
    if "filename" not in header or "patientid" not in header:
        raise SourceFormatError(f"v7_darwin: ieee8023 {path.name} lacks filename/patientid columns")
    rows: dict[str, list[Ieee8023Row]] = {}
    for line in lines:
        if len(line) != len(header):
            continue
        cells = dict(zip(header, line, strict=True))
        row = Ieee8023Row(cells["filename"], cells["patientid"].strip(), cells)
        rows.setdefault(row.filename, []).append(row)
    return rows


def unmatched_reason(file_name: str, rows: Mapping[str, list[Ieee8023Row]]) -> str | None:
    """None when exactly one row has this filename; otherwise why the image is not linked."""
    found = rows.get(file_name, [])
    if len(found) == 1:
        return None
    if len(found) > 1:
        return f"ambiguous: {len(found)} ieee8023 rows have this filename"
    folded = sorted(name for name in rows if name.casefold() == file_name.casefold())
    if folded:
        return f"not in ieee8023 metadata; only a case-insensitive match ({folded[0]}), not linked"
    stem = file_name.rsplit(".", 1)[0]
    same_stem = sorted(name for name in rows if name.rsplit(".", 1)[0] == stem)
    if same_stem:
        return f"not in ieee8023 metadata; only the stem matches ({same_stem[0]}), not linked"
    return "not in ieee8023 metadata (removed upstream after V7's June-2020 snapshot, or never there)"


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


def tally(outcomes: list[dict[str, str]]) -> dict[str, dict[str, int]]:
    counters: dict[str, Counter[str]] = {name: Counter() for name in COMPARED_FIELDS}
    for outcome in outcomes:
        for name, kind in outcome.items():
            counters[name][kind] += 1
    return {name: dict(sorted(c.items())) for name, c in counters.items()}
