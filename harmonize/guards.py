"""The split guard: proves that no patient, linked patient group or duplicate picture straddles splits.

Works on a built folder, on a `DatasetDict` a user loaded or re-split, or on any mapping of split
name to `datasets.Dataset`. Also tabulates covid19 label x source per split and warns about the known
shortcut traps (a class that comes from a single source; pediatric-only negatives).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.features import LABEL_STATE_NAMES
from covid_cxr_unified.harmonize.groups import NEAR_DUPLICATE_BITS, UnionFind, near_duplicate_pairs

GUARD_COLUMNS = (
    "record_id",
    "source",
    "patient_id",
    "links",
    "image_sha256",
    "image_pixel_sha256",
    "image_phash",
    "covid19",
    "age_years",
)
ADULT_AGE = 18
_SHARD = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d{5}-of-\d{5}\.parquet$")


class SplitLeakError(HarmonizeError):
    """Records that must share a split do not."""

    exit_code = 6


@dataclass(frozen=True)
class Leak:
    kind: str  # record | patient | linked patient group | identical picture | near-duplicate picture
    key: str
    splits: tuple[str, ...]
    records: tuple[str, ...]

    def describe(self) -> str:
        shown = ", ".join(self.records[:4]) + (" …" if len(self.records) > 4 else "")
        return f"{self.kind} {self.key} in {'+'.join(self.splits)} ({shown})"


@dataclass
class GuardReport:
    records: int
    leaks: list[Leak] = field(default_factory=list)
    label_by_source: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.leaks

    def raise_for_leaks(self) -> None:
        if self.leaks:
            first = "; ".join(leak.describe() for leak in self.leaks[:3])
            more = f" and {len(self.leaks) - 3} more" if len(self.leaks) > 3 else ""
            raise SplitLeakError(f"split leak: {first}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "ok": self.ok,
            "leaks": [vars(leak) for leak in self.leaks],
            "label_by_source": self.label_by_source,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Row:
    split: str
    record_id: str
    source: str
    patient_id: str
    linked_patients: tuple[str, ...]
    sha256: str | None
    pixel_sha256: str | None
    phash: str | None
    covid19: str | None
    age: float | None


def verify_splits(target: Path | Mapping[str, Any], near_bits: int | None = NEAR_DUPLICATE_BITS) -> GuardReport:
    """Check a build folder, a DatasetDict or a {split: Dataset} mapping."""
    tables = _folder_tables(target) if isinstance(target, Path) else _dataset_tables(target)
    rows = _unique_rows(tables)
    report = GuardReport(records=len({row.record_id for row in rows}))
    report.leaks += _record_leaks(rows)
    report.leaks += _leaks_by_key(rows, "patient", lambda row: [row.patient_id])
    report.leaks += _linked_group_leaks(rows)
    report.leaks += _leaks_by_key(
        rows, "identical picture", lambda row: [v for v in (row.sha256, row.pixel_sha256) if v]
    )
    if near_bits is not None:
        report.leaks += _near_duplicate_leaks(rows, near_bits)
    report.label_by_source = _label_by_source(rows)
    report.warnings = _shortcut_warnings(rows)
    return report


def _folder_tables(folder: Path) -> list[tuple[str, pa.Table]]:
    shards = sorted((folder / "data").glob("*/*.parquet"))
    if not shards:
        raise HarmonizeError(f"{folder} holds no data/<config>/<split>-*.parquet shards; is it a covid-cxr build?")
    tables = []
    for shard in shards:
        match = _SHARD.match(shard.name)
        if match is None:
            raise HarmonizeError(f"unexpected shard name {shard.relative_to(folder)}")
        tables.append((match["split"], _select(pq.read_table(shard, columns=list(GUARD_COLUMNS)), shard.name)))
    return tables


def _dataset_tables(splits: Mapping[str, Any]) -> list[tuple[str, pa.Table]]:
    tables = []
    for split, dataset in splits.items():
        missing = [c for c in GUARD_COLUMNS if c not in dataset.column_names]
        if missing:
            raise HarmonizeError(f"split {split!r} lacks column(s) {', '.join(missing)} needed by the guard")
        table = dataset.select_columns(list(GUARD_COLUMNS)).with_format("arrow")[:]
        tables.append((split, _select(table, split)))
    return tables


def _select(table: pa.Table, where: str) -> pa.Table:
    missing = [c for c in GUARD_COLUMNS if c not in table.column_names]
    if missing:
        raise HarmonizeError(f"{where} lacks column(s) {', '.join(missing)} needed by the guard")
    return table.select(list(GUARD_COLUMNS))


def _unique_rows(tables: Iterable[tuple[str, pa.Table]]) -> list[_Row]:
    """One row per (record, split): the per-source and `all` configs hold the same records."""
    seen: set[tuple[str, str]] = set()
    rows = []
    for split, table in tables:
        columns = {name: table.column(name).to_pylist() for name in GUARD_COLUMNS}
        for i, record_id in enumerate(columns["record_id"]):
            if (record_id, split) in seen:
                continue
            seen.add((record_id, split))
            state = columns["covid19"][i]
            rows.append(
                _Row(
                    split=split,
                    record_id=record_id,
                    source=columns["source"][i],
                    patient_id=columns["patient_id"][i],
                    linked_patients=tuple(lk["patient_id"] for lk in columns["links"][i] or () if lk["patient_id"]),
                    sha256=columns["image_sha256"][i],
                    pixel_sha256=columns["image_pixel_sha256"][i],
                    phash=columns["image_phash"][i],
                    covid19=None if state is None else LABEL_STATE_NAMES[state],
                    age=columns["age_years"][i],
                )
            )
    return rows


def _leak(kind: str, key: str, members: list[_Row]) -> Leak:
    return Leak(
        kind=kind,
        key=key,
        splits=tuple(sorted({row.split for row in members})),
        records=tuple(sorted({f"{row.record_id}@{row.split}" for row in members})),
    )


def _record_leaks(rows: list[_Row]) -> list[Leak]:
    by_record: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        by_record[row.record_id].append(row)
    return [_leak("record", rid, members) for rid, members in sorted(by_record.items()) if len(members) > 1]


def _leaks_by_key(rows: list[_Row], kind: str, keys_of: Any) -> list[Leak]:
    members: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        for key in keys_of(row):
            members[key].append(row)
    return [_leak(kind, key, group) for key, group in sorted(members.items()) if len({row.split for row in group}) > 1]


def _linked_group_leaks(rows: list[_Row]) -> list[Leak]:
    uf = UnionFind()
    for row in rows:
        uf.find(row.patient_id)
        for other in row.linked_patients:
            uf.union(row.patient_id, other)
    groups: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        groups[uf.find(row.patient_id)].append(row)
    return [
        _leak("linked patient group", key, group)
        for key, group in sorted(groups.items())
        if len({row.split for row in group}) > 1 and len({row.patient_id for row in group}) > 1
    ]


def _near_duplicate_leaks(rows: list[_Row], bits: int) -> list[Leak]:
    by_record = {row.record_id: row for row in rows}
    pairs = near_duplicate_pairs(((row.record_id, row.phash) for row in rows if row.phash), bits)
    return [
        _leak("near-duplicate picture", f"{a}~{b}", [by_record[a], by_record[b]])
        for a, b in pairs
        if by_record[a].split != by_record[b].split
    ]


def _label_by_source(rows: list[_Row]) -> dict[str, dict[str, dict[str, int]]]:
    table: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for row in rows:
        table[row.split][row.source][row.covid19 or "missing"] += 1
    return {
        split: {source: dict(sorted(counts.items())) for source, counts in sorted(by_source.items())}
        for split, by_source in sorted(table.items())
    }


def _shortcut_warnings(rows: list[_Row]) -> list[str]:
    warnings = []
    for split in sorted({row.split for row in rows}):
        in_split = [row for row in rows if row.split == split]
        sources = {row.source for row in in_split}
        for state in ("positive", "negative"):
            with_state = {row.source for row in in_split if row.covid19 == state}
            if len(sources) > 1 and len(with_state) == 1:
                warnings.append(
                    f"{split}: every covid19 '{state}' comes from {with_state.pop()}; "
                    "a model can learn the source instead of the label"
                )
        negative_ages = [row.age for row in in_split if row.covid19 == "negative" and row.age is not None]
        positive_ages = [row.age for row in in_split if row.covid19 == "positive" and row.age is not None]
        if negative_ages and positive_ages and max(negative_ages) < ADULT_AGE <= min(positive_ages):
            warnings.append(f"{split}: covid19 negatives are all pediatric, positives all adult; age is a shortcut")
    return warnings
