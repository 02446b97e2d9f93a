"""Parsers of BIMCV's tab-separated tables, each defect handled explicitly (see cards/bimcv.md).

Every parser takes the file's bytes, or a function that gives them a piece at a time (`TableBytes`),
checks the whole table, raising any error then, and returns a stream of plain rows, so that a table
of every session of the release is never held in memory. Nothing here maps vocabulary. The row
dataclasses convert to and from JSON lists (`to_json`, `from_json`) for the adapter's disk index.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from covid_cxr_unified.harmonize.errors import SourceFormatError

_QUOTED_ITEM = re.compile(r"'([^']*)'")
_CUI = re.compile(r"C\d{7}")
_INT = re.compile(r"\d+")
MISSING = {"", "None", "nan", "NaN"}

# Iteration 1's test table names its columns in Spanish.
TEST_COLUMN_ALIASES = {"fecha": "date", "prueba": "test", "resultado": "result"}

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# A table's bytes, or a function giving them a piece at a time, afresh on each call: a table is read
# more than once (checked whole, then streamed).
TableBytes = bytes | Callable[[], Iterable[bytes]]


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SourceFormatError(f"bimcv: {name} line {line} is not UTF-8") from exc


def _pieces(source: TableBytes) -> Iterable[bytes]:
    return (source,) if isinstance(source, bytes) else source()


def _check_utf8(source: TableBytes, name: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        for piece in _pieces(source):
            decoder.decode(piece)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        _text(b"".join(_pieces(source)), name)  # raises, naming the line (a broken table may be held whole)
        raise


class _PieceReader(io.RawIOBase):
    """A readable stream over pieces of bytes."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._rest:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._rest = memoryview(piece)
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._rest))
        target[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


def _lines(source: TableBytes) -> io.TextIOWrapper:
    """The text's lines, ends kept, split like `io.StringIO(text, newline="")` does."""
    return io.TextIOWrapper(io.BufferedReader(_PieceReader(_pieces(source))), encoding="utf-8-sig", newline="")


def read_tsv(source: TableBytes, name: str) -> tuple[list[str], Iterator[dict[str, str]]]:
    """(header, rows) of a TSV read like pandas does (quoted fields may hold tabs). The whole table is
    checked here (UTF-8, quoting, cells beyond the header), in that order; the rows then stream."""
    _check_utf8(source, name)
    header = _check_cells(source, name)
    return header, _rows(source, header)


def _check_cells(source: TableBytes, name: str) -> list[str]:
    reader = csv.reader(_lines(source), delimiter="\t", strict=True)
    shifted: tuple[int, int] | None = None
    try:
        header = next(reader, None)
        for number, line in enumerate(reader, start=2):
            if shifted is None and header is not None and any(cell.strip() for cell in line[len(header) :]):
                shifted = (number, len(line))  # blank extra cells are a trailing tab
    except csv.Error as exc:  # bad quoting, or a cell over the csv module's field size limit
        raise SourceFormatError(f"bimcv: {name} line {reader.line_num}: {exc}") from exc
    if header is None:
        raise SourceFormatError(f"bimcv: {name} is empty")
    if shifted is not None:
        raise SourceFormatError(
            f"bimcv: {name} row {shifted[0]} has {shifted[1]} cells, the header {len(header)}: a shifted row"
        )
    return header


def _rows(source: TableBytes, header: list[str]) -> Iterator[dict[str, str]]:
    reader = csv.reader(_lines(source), delimiter="\t", strict=True)
    next(reader)
    for line in reader:
        if not any(cell.strip() for cell in line):
            continue
        padded = line + [""] * (len(header) - len(line))
        yield dict(zip(header, padded, strict=False))


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

    def to_json(self) -> list[JsonValue]:
        return [self.participant, list(self.ages), self.gender, self.row, self.raw]

    @classmethod
    def from_json(cls, value: list[Any]) -> Participant:
        participant, ages, gender, row, raw = value
        return cls(participant, tuple(ages), gender, row, raw)


def parse_participants(source: TableBytes, name: str) -> Iterator[Participant | None]:
    """The participants in row order; None for a junk entry such as the `derivatives` row."""
    header, rows = read_tsv(source, name)
    _require(header, ("participant", "age", "gender"), name)
    return _participants(rows)


def _participants(rows: Iterator[dict[str, str]]) -> Iterator[Participant | None]:
    for number, row in enumerate(rows, start=1):
        pid = row["participant"].strip()
        if not pid.startswith("sub-"):
            yield None
            continue
        gender = row["gender"].strip()
        yield Participant(
            participant=pid,
            ages=tuple(int(a) for a in _INT.findall(row["age"])),
            gender=None if gender in MISSING else gender,
            row=number,
            raw=dict(row),
        )


# --- sub-X_sessions.tsv ------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    session_id: str
    study_date: dt.date | None
    study_date_raw: str | None
    medical_evaluation: str | None
    raw: dict[str, JsonValue]

    def to_json(self) -> list[JsonValue]:
        return [self.session_id, _iso(self.study_date), self.study_date_raw, self.medical_evaluation, self.raw]

    @classmethod
    def from_json(cls, value: list[Any]) -> Session:
        session_id, study_date, study_date_raw, medical_evaluation, raw = value
        return cls(session_id, _date(study_date), study_date_raw, medical_evaluation, raw)


def parse_sessions(source: TableBytes, name: str) -> Iterator[Session]:
    header, rows = read_tsv(source, name)
    _require(header, ("session_id", "study_date"), name)
    return _sessions(rows)


def _sessions(rows: Iterator[dict[str, str]]) -> Iterator[Session]:
    for row in rows:
        raw_date = row["study_date"].strip()
        if raw_date.endswith(".0"):  # an integer column that pandas once wrote as float
            raw_date = raw_date[:-2]
        yield Session(
            session_id=row["session_id"].strip(),
            study_date=parse_yyyymmdd(raw_date),
            study_date_raw=None if raw_date in MISSING else raw_date,
            medical_evaluation=derepr_text(row.get("medical_evaluation", "")),
            raw=dict(row),
        )


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


def _iso(date: dt.date | None) -> str | None:
    return None if date is None else date.isoformat()


def _date(iso: str | None) -> dt.date | None:
    return None if iso is None else dt.date.fromisoformat(iso)


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

    def to_json(self) -> list[JsonValue]:
        return [
            self.row, self.patient_id, self.report_id, list(self.labels), self.labels_missing, self.truncated,
            self.fragment, list(self.cuis), list(self.localizations), self.report, self.raw,
        ]

    @classmethod
    def from_json(cls, value: list[Any]) -> LabelRow:
        row, patient_id, report_id, labels, labels_missing, truncated, fragment, cuis, places, report, raw = value
        flags = (labels_missing, truncated, fragment)
        return cls(row, patient_id, report_id, tuple(labels), *flags, tuple(cuis), tuple(places), report, raw)


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


def parse_labels(source: TableBytes, name: str) -> Iterator[LabelRow]:
    header, rows = read_tsv(source, name)
    _require(header, ("PatientID", "ReportID", "Labels", "labelCUIS"), name)
    return _label_rows(rows)


def _label_rows(rows: Iterator[dict[str, str]]) -> Iterator[LabelRow]:
    for number, row in enumerate(rows, start=1):
        labels_raw = row["Labels"]
        labels, truncated, fragment = split_list_cell(labels_raw)
        localizations, _, _ = split_list_cell(row.get("Localizations", ""))
        report = row.get("Report", "").strip()
        yield LabelRow(
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

    def to_json(self) -> list[JsonValue]:
        return [self.row, self.participant, _iso(self.date), self.date_raw, self.test, self.result, self.raw]

    @classmethod
    def from_json(cls, value: list[Any]) -> DiagnosticTest:
        row, participant, date, date_raw, test, result, raw = value
        return cls(row, participant, _date(date), date_raw, test, result, raw)


def parse_tests(source: TableBytes, name: str) -> Iterator[DiagnosticTest]:
    """Both column namings: `date/test/result` (1+2, trailing empty column) and `fecha/prueba/resultado`."""
    header, rows = read_tsv(source, name)
    canonical = [TEST_COLUMN_ALIASES.get(h.strip(), h.strip()) for h in header]
    _require(canonical, ("participant", "date", "test", "result"), name)
    return _tests(rows, header, canonical)


def _tests(rows: Iterator[dict[str, str]], header: list[str], canonical: list[str]) -> Iterator[DiagnosticTest]:
    for number, row in enumerate(rows, start=1):
        cells = {canon: row[orig] for canon, orig in zip(canonical, header, strict=True)}
        date_raw = cells["date"].strip()
        try:
            date = dt.datetime.strptime(date_raw, "%d.%m.%Y").date()
        except ValueError:
            date = None
        yield DiagnosticTest(
            row=number,
            participant=cells["participant"].strip(),
            date=date,
            date_raw=date_raw,
            test=cells["test"].strip(),
            result=cells["result"].strip(),
            raw={k: v for k, v in row.items() if k.strip() or v.strip()},
        )


# --- derivatives/partitions.tsv ----------------------------------------------------------------


def parse_partitions(source: TableBytes, name: str) -> Iterator[str]:
    """The file paths (relative to the release root, `./` removed); the header line is irregular
    (space-separated) and is skipped rather than trusted."""
    _check_utf8(source, name)
    return _partition_paths(source)


def _partition_paths(source: TableBytes) -> Iterator[str]:
    lines = (line for text in _lines(source) for line in text.splitlines())  # as `str.splitlines()` splits
    next(lines, None)
    for line in lines:
        cells = re.split(r"\t| +", line.strip())
        if len(cells) >= 3 and cells[-1]:
            yield cells[-1].removeprefix("./")
