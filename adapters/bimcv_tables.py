"""Parsers of BIMCV's tab-separated tables, each defect handled explicitly (see cards/bimcv.md).

Every parser takes the file's bytes and returns plain rows; nothing here maps vocabulary.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass, field

from pydantic import JsonValue

from covid_cxr_unified.harmonize.errors import SourceFormatError

_QUOTED_ITEM = re.compile(r"'([^']*)'")
_CUI = re.compile(r"C\d{7}")
_INT = re.compile(r"\d+")
MISSING = {"", "None", "nan", "NaN"}

# Iteration 1's test table names its columns in Spanish.
TEST_COLUMN_ALIASES = {"fecha": "date", "prueba": "test", "resultado": "result"}


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceFormatError(f"bimcv: {name} line {line} is not UTF-8") from exc


def read_tsv(data: bytes, name: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a TSV read like pandas does (quoted fields may hold tabs)."""
    reader = csv.reader(io.StringIO(_text(data, name), newline=""), delimiter="\t", strict=True)
    try:
        header, lines = next(reader, None), list(reader)
    except csv.Error as exc:  # bad quoting, or a cell over the csv module's field size limit
        raise SourceFormatError(f"bimcv: {name} line {reader.line_num}: {exc}") from exc
    if header is None:
        raise SourceFormatError(f"bimcv: {name} is empty")
    rows = []
    for number, line in enumerate(lines, start=2):
        if not any(cell.strip() for cell in line):
            continue
        if any(cell.strip() for cell in line[len(header) :]):  # blank extra cells are a trailing tab
            raise SourceFormatError(
                f"bimcv: {name} row {number} has {len(line)} cells, the header {len(header)}: a shifted row"
            )
        padded = line + [""] * (len(header) - len(line))
        rows.append(dict(zip(header, padded, strict=False)))
    return header, rows


def _require(header: list[str], columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise SourceFormatError(
            f"bimcv: {name} lacks column(s) {', '.join(missing)}; header is {'|'.join(header)}"
        )


def missing(value: str | None) -> bool:
    return value is None or value.strip() in MISSING


# --- participants.tsv --------------------------------------------------------------------------


@dataclass(frozen=True)
class Participant:
    participant: str
    ages: tuple[int, ...]
    gender: str | None
    row: int
    raw: dict[str, JsonValue]


def parse_participants(data: bytes, name: str) -> tuple[list[Participant], list[int]]:
    """(participants, 1-based rows of junk entries such as the `derivatives` row)."""
    header, rows = read_tsv(data, name)
    _require(header, ("participant", "age", "gender"), name)
    result, junk = [], []
    for number, row in enumerate(rows, start=1):
        pid = row["participant"].strip()
        if not pid.startswith("sub-"):
            junk.append(number)
            continue
        gender = row["gender"].strip()
        result.append(
            Participant(
                participant=pid,
                ages=tuple(int(a) for a in _INT.findall(row["age"])),
                gender=None if gender in MISSING else gender,
                row=number,
                raw=dict(row),
            )
        )
    return result, junk


# --- sub-X_sessions.tsv ------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    session_id: str
    study_date: dt.date | None
    study_date_raw: str | None
    medical_evaluation: str | None
    raw: dict[str, JsonValue]


def parse_sessions(data: bytes, name: str) -> list[Session]:
    header, rows = read_tsv(data, name)
    _require(header, ("session_id", "study_date"), name)
    sessions = []
    for row in rows:
        raw_date = row["study_date"].strip()
        if raw_date.endswith(".0"):  # an integer column that pandas once wrote as float
            raw_date = raw_date[:-2]
        sessions.append(
            Session(
                session_id=row["session_id"].strip(),
                study_date=parse_yyyymmdd(raw_date),
                study_date_raw=None if raw_date in MISSING else raw_date,
                medical_evaluation=derepr_text(row.get("medical_evaluation", "")),
                raw=dict(row),
            )
        )
    return sessions


def parse_yyyymmdd(raw: str | None) -> dt.date | None:
    if raw is None or not re.fullmatch(r"\d{8}", raw.strip()):
        return None
    try:
        return dt.datetime.strptime(raw.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def derepr_text(raw: str) -> str | None:
    """The report text of a `medical_evaluation` list repr, with `\\n`, `\\t` and quotes unescaped."""
    text = raw.strip()
    if text in MISSING or text == "[]":
        return None
    if text.startswith("['") and text.endswith("']"):
        text = "\n".join(text[2:-2].split("', '"))
    for escaped, plain in (("\\n", "\n"), ("\\t", "\t"), ("\\'", "'"), ('\\"', '"')):
        text = text.replace(escaped, plain)
    return text.strip() or None


# --- labels_covid(19)_posi.tsv -----------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    row: int
    patient_id: str
    report_id: str
    labels: tuple[str, ...]  # items as written (leading spaces kept), empty items dropped
    labels_missing: bool  # NaN / empty cell: the report was not labelled
    truncated: bool  # the cell was cut mid-item; the cut fragment is in `fragment`
    fragment: str | None
    cuis: tuple[str, ...]
    localizations: tuple[str, ...]
    report: str | None
    raw: dict[str, JsonValue]


def split_list_cell(raw: str) -> tuple[tuple[str, ...], bool, str | None]:
    """(quoted items, truncated?, cut fragment) of a list-like cell in either separator style.

    Handles `['a', ' b']`, iteration 1's `['a'\\t 'b']`, empty items `''` and strings cut mid-item
    (`['a', 'central venous ca`), where `ast.literal_eval` fails.
    """
    text = raw.strip()
    items = tuple(item for item in _QUOTED_ITEM.findall(text) if item.strip())
    if not text or text.endswith("]"):
        return items, False, None
    tail = text[text.rfind("'") + 1 :] if text.count("'") % 2 else ""
    return items, True, tail or None


def parse_labels(data: bytes, name: str) -> list[LabelRow]:
    header, rows = read_tsv(data, name)
    _require(header, ("PatientID", "ReportID", "Labels", "labelCUIS"), name)
    result = []
    for number, row in enumerate(rows, start=1):
        labels_raw = row["Labels"]
        labels, truncated, fragment = split_list_cell(labels_raw)
        localizations, _, _ = split_list_cell(row.get("Localizations", ""))
        report = row.get("Report", "").strip()
        result.append(
            LabelRow(
                row=number,
                patient_id=row["PatientID"].strip(),
                report_id=row["ReportID"].strip(),
                labels=labels,
                labels_missing=missing(labels_raw),
                truncated=truncated,
                fragment=fragment,
                cuis=tuple(_CUI.findall(row["labelCUIS"])),
                localizations=tuple(loc.strip() for loc in localizations),
                report=report or None,
                raw=dict(row),
            )
        )
    return result


# --- EHR/sil_reg_covid(_posi).tsv --------------------------------------------------------------


@dataclass(frozen=True)
class DiagnosticTest:
    row: int
    participant: str
    date: dt.date | None
    date_raw: str
    test: str
    result: str
    raw: dict[str, JsonValue] = field(default_factory=dict)


def parse_tests(data: bytes, name: str) -> list[DiagnosticTest]:
    """Both column namings: `date/test/result` (1+2, trailing empty column) and `fecha/prueba/resultado`."""
    header, rows = read_tsv(data, name)
    canonical = [TEST_COLUMN_ALIASES.get(h.strip(), h.strip()) for h in header]
    _require(canonical, ("participant", "date", "test", "result"), name)
    result = []
    for number, row in enumerate(rows, start=1):
        cells = {canon: row[orig] for canon, orig in zip(canonical, header, strict=True)}
        date_raw = cells["date"].strip()
        try:
            date = dt.datetime.strptime(date_raw, "%d.%m.%Y").date()
        except ValueError:
            date = None
        result.append(
            DiagnosticTest(
                row=number,
                participant=cells["participant"].strip(),
                date=date,
                date_raw=date_raw,
                test=cells["test"].strip(),
                result=cells["result"].strip(),
                raw={k: v for k, v in row.items() if k.strip() or v.strip()},
            )
        )
    return result


# --- derivatives/partitions.tsv ----------------------------------------------------------------


def parse_partitions(data: bytes, name: str) -> list[str]:
    """The file paths (relative to the release root, `./` removed); the header line is irregular
    (space-separated) and is skipped rather than trusted."""
    lines = _text(data, name).splitlines()
    paths = []
    for line in lines[1:]:
        cells = re.split(r"\t| +", line.strip())
        if len(cells) >= 3 and cells[-1]:
            paths.append(cells[-1].removeprefix("./"))
    return paths
