"""The split guard: proves that no patient, linked patient group or duplicate picture straddles splits.

Works on a built folder, on a `DatasetDict` a user loaded or re-split, or on any mapping of split
name to `datasets.Dataset`. Also tabulates covid19 label x source per split and warns about the known
shortcut traps (a class that comes from a single source; pediatric-only negatives).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from covid_cxr_unified.harmonize.clib import give_back_freed_memory
from covid_cxr_unified.harmonize.columns import encode, hashed_codes, hex_words, string_hashes, strings, take_rows
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.features import LABEL_STATE_NAMES
from covid_cxr_unified.harmonize.groups import (
    NEAR_DUPLICATE_BITS,
    join_components,
    near_duplicate_pairs,
    near_duplicate_rows,
    patient_links,
)

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


def verify_splits(target: Path | Mapping[str, Any], near_bits: int | None = NEAR_DUPLICATE_BITS) -> GuardReport:
    """Check a build folder, a DatasetDict or a {split: Dataset} mapping (columnar: ~1.5 s per million rows)."""
    rows = _Rows.of(_folder_parts(target) if isinstance(target, Path) else _dataset_parts(target))
    report = GuardReport(records=rows.records)
    report.leaks += rows.leaks("record", ["record_id"], _spread(rows.record, rows.split))
    give_back_freed_memory()  # each check reads its own columns: the next one starts from what is live
    patients = _Patients.of(rows)
    report.leaks += rows.leaks("patient", ["patient_id"], _spread(patients.record[rows.keep], rows.split))
    report.leaks += _linked_group_leaks(rows, patients)
    del patients
    give_back_freed_memory()
    report.leaks += _picture_leaks(rows)
    give_back_freed_memory()
    if near_bits is not None:
        report.leaks += _near_duplicate_leaks(rows, near_bits)
    report.label_by_source = _label_by_source(rows)
    report.warnings = _shortcut_warnings(rows)
    return report


@dataclass(frozen=True)
class _Part:
    """One table the guard checks (a shard, or a split of a loaded dataset): its split, and a reader of
    some of its columns. Columns are read when a check needs them, not all at once."""

    split: str
    rows: int
    read: Callable[[list[str]], pa.Table]

    def column(self, name: str) -> pa.ChunkedArray:
        return self.read([name]).column(name)


def _folder_parts(folder: Path) -> list[_Part]:
    shards = sorted((folder / "data").glob("*/*.parquet"))
    if not shards:
        raise HarmonizeError(f"{folder} holds no data/<config>/<split>-*.parquet shards; is it a covid-cxr build?")
    parts = []
    for shard in shards:
        match = _SHARD.match(shard.name)
        if match is None:
            raise HarmonizeError(f"unexpected shard name {shard.relative_to(folder)}")
        parquet = pq.ParquetFile(shard)
        _require_columns(parquet.schema_arrow.names, shard.name)
        parts.append(_Part(match["split"], parquet.metadata.num_rows, functools.partial(_read_shard, shard)))
    return parts


def _read_shard(shard: Path, columns: list[str]) -> pa.Table:
    return pq.ParquetFile(shard).read(columns=columns)  # much less memory than pq.read_table


def _dataset_parts(splits: Mapping[str, Any]) -> list[_Part]:
    parts = []
    for split, dataset in splits.items():
        _require_columns(dataset.column_names, f"split {split!r}")
        table = dataset.select_columns(list(GUARD_COLUMNS)).with_format("arrow")[:]
        parts.append(_Part(split, table.num_rows, table.select))
    return parts


def _require_columns(present: list[str], where: str) -> None:
    missing = [c for c in GUARD_COLUMNS if c not in present]
    if missing:
        raise HarmonizeError(f"{where} lacks column(s) {', '.join(missing)} needed by the guard")


@dataclass
class _Rows:
    """The rows of every part end to end, and the rows of them that count (`keep`): one per (record,
    split), the first seen — the per-source and `all` configs hold the same records.

    A check reads the columns it needs (`column`) and drops them when done. Strings stay in Arrow; the
    checks work on integer codes of the kept rows (`split`; `record`, `source`: -1 when missing) and
    only the rows of a leak become Python strings.
    """

    parts: list[_Part]
    split_names: list[Any]
    keep: np.ndarray
    split: np.ndarray
    record: np.ndarray
    records: int
    source: np.ndarray
    source_names: list[str]
    covid19: np.ndarray
    age: np.ndarray

    @classmethod
    def of(cls, parts: list[_Part]) -> _Rows:
        split_names: list[Any] = []
        split_codes = [np.empty(0, dtype=np.int64)]
        for part in parts:
            if part.split not in split_names:
                split_names.append(part.split)
            split_codes.append(np.full(part.rows, split_names.index(part.split), dtype=np.int64))
        split = np.concatenate(split_codes)
        firsts: list[pa.Table] = []  # the small columns of each part, read with its record ids

        def record_ids() -> Iterator[pa.ChunkedArray]:
            for part in parts:
                table = part.read(["record_id", "source", "covid19", "age_years"])
                firsts.append(table.drop_columns(["record_id"]))
                yield table.column("record_id")

        record, records = hashed_codes(record_ids())
        missing = np.where(record < 0, records, record)  # a missing id is one more value, as for pandas
        if len(missing) and np.bincount(missing).max() > 1:  # the same record twice (in other configs)
            keep = _first_of_each(missing * max(1, len(split_names)) + split)
        else:
            keep = np.arange(len(split))
        source, source_names = encode(strings([table.column("source") for table in firsts]))
        covid19 = [_numbers(table.column("covid19"), pa.int64(), -1) for table in firsts]
        age = [_numbers(table.column("age_years"), pa.float64(), None) for table in firsts]
        return cls(
            parts=parts,
            split_names=split_names,
            keep=keep,
            split=split[keep],
            record=record[keep],
            records=records,
            source=source[keep],
            source_names=source_names.to_pylist(),
            covid19=np.concatenate([np.empty(0, dtype=np.int64), *covid19])[keep],
            age=np.concatenate([np.empty(0, dtype=np.float64), *age])[keep],
        )

    @property
    def n(self) -> int:
        return len(self.keep)

    def column(self, name: str) -> pa.ChunkedArray:
        """A string column of every part end to end."""
        return strings([part.column(name) for part in self.parts])

    def patient_links(self) -> Iterator[tuple[np.ndarray, pa.Array]]:
        """Per part: (row, linked patient id) of every link of it that names a patient (rows of every
        part end to end)."""
        start = 0
        for part in self.parts:  # parts may type an all-empty links column differently
            found, patients = patient_links(part.column("links"))
            yield found + start, patients
            start += part.rows

    def values(self, column: str, rows: np.ndarray) -> list[Any]:
        """Python values of a column at kept rows `rows`."""
        values: list[Any] = self.column(column).take(pa.array(self.keep[rows], type=pa.int64())).to_pylist()
        return values

    def leaks(self, kind: str, columns: list[str], entries: np.ndarray, min_patients: int = 1) -> list[Leak]:
        """A leak per value of `columns` (keys of one kind, e.g. two picture hashes) whose rows lie in more
        than one split; `entries` (index into the columns' kept rows end to end) are the candidates:
        every entry of such a value, maybe more."""
        if not len(entries):
            return []
        column, rows = entries // max(1, self.n), entries % max(1, self.n)
        keys = [key for index, name in enumerate(columns) for key in self.values(name, rows[column == index])]
        rows = np.concatenate([rows[column == index] for index in range(len(columns))])
        return self.grouped_leaks(kind, keys, rows, min_patients)

    def grouped_leaks(self, kind: str, keys: list[Any], rows: np.ndarray, min_patients: int = 1) -> list[Leak]:
        """Leaks of rows `rows` grouped by `keys` (one each, None: no key): groups in more than one split
        (and of at least `min_patients` patients), by key."""
        members: dict[Any, list[int]] = {}
        for key, row in zip(keys, rows.tolist(), strict=True):
            if key is not None:
                members.setdefault(key, []).append(row)
        split = self.split
        spread = {key: group for key, group in members.items() if len({int(split[r]) for r in group}) > 1}
        if min_patients > 1:
            where = np.unique(np.asarray([r for group in spread.values() for r in group], dtype=np.int64))
            patient = dict(zip(where.tolist(), self.values("patient_id", where), strict=True))
            spread = {
                key: group
                for key, group in spread.items()
                if len({patient[r] for r in group} - {None}) >= min_patients
            }
        if not spread:
            return []
        where = np.unique(np.asarray([r for group in spread.values() for r in group], dtype=np.int64))
        named = zip(where.tolist(), self.values("record_id", where), strict=True)
        ids = {r: "nan" if i is None else i for r, i in named}  # a missing id reads as pandas printed it
        leaks = []
        for key in sorted(spread):
            group = spread[key]
            splits = [self.split_names[split[r]] for r in group]
            records = (f"{ids[r]}@{s}" for r, s in zip(group, splits, strict=True))
            leaks.append(_leak(kind, str(key), splits, records))
        return leaks


def _numbers(column: pa.ChunkedArray, type_: pa.DataType, fill: int | None) -> np.ndarray:
    cast = column.cast(type_)
    values: np.ndarray = (cast if fill is None else cast.fill_null(fill)).to_numpy(zero_copy_only=False)
    return values


def _first_of_each(values: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each value (non-negative integers), ascending."""
    if not len(values):
        return np.empty(0, dtype=np.int64)
    first = np.full(int(values.max()) + 1, len(values), dtype=np.int64)
    np.minimum.at(first, values, np.arange(len(values)))
    kept: np.ndarray = np.sort(first[first < len(values)])
    return kept


def _last_of_each(values: np.ndarray) -> np.ndarray:
    """Positions of the last occurrence of each value (non-negative integers), ascending."""
    if not len(values):
        return np.empty(0, dtype=np.int64)
    last = np.full(int(values.max()) + 1, -1, dtype=np.int64)
    np.maximum.at(last, values, np.arange(len(values)))
    kept: np.ndarray = np.sort(last[last >= 0])
    return kept


def _spread(keys: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Positions of the keys (non-negative integers; -1: none) that occur in more than one split."""
    valid = keys >= 0
    if not valid.any():
        return np.empty(0, dtype=np.int64)
    safe = np.where(valid, keys, 0)
    some = np.zeros(int(keys.max()) + 1, dtype=splits.dtype)
    some[keys[valid]] = splits[valid]  # one split of each key (any): a key with an entry in another spreads
    spread = np.zeros(len(some), dtype=bool)
    spread[keys[valid & (splits != some[safe])]] = True
    entries: np.ndarray = np.flatnonzero(valid & spread[safe])
    return entries


def _spread_hashed(hashes: np.ndarray, valid: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Like `_spread` for 64-bit hashes of keys (sorted instead of counted): positions of every hash
    that occurs in more than one split (so every key that does, and maybe some that collide)."""
    bits = max(1, int(splits.max(initial=0)).bit_length())
    high = hashes >> np.uint64(bits)
    packed = (high[valid] << np.uint64(bits)) | splits[valid].astype(np.uint64)
    packed.sort()
    top = packed >> np.uint64(bits)
    spread = np.unique(top[1:][(top[1:] == top[:-1]) & (packed[1:] != packed[:-1])])
    if not len(spread):
        return np.empty(0, dtype=np.int64)
    found = spread[np.minimum(np.searchsorted(spread, high), len(spread) - 1)] == high
    entries: np.ndarray = np.flatnonzero(found & valid)
    return entries


def _leak(kind: str, key: str, splits: Iterable[str], records: Iterable[str]) -> Leak:
    return Leak(kind=kind, key=key, splits=tuple(sorted(set(splits))), records=tuple(sorted(set(records))))


@dataclass
class _Patients:
    """Integer codes, in one numbering, of the patient of every row (-1: none) and of the patient
    each link names (`link_row`: the row of the link)."""

    record: np.ndarray
    link_row: np.ndarray
    link: np.ndarray
    count: int

    @classmethod
    def of(cls, rows: _Rows) -> _Patients:
        sizes: list[int] = []
        link_rows = [np.empty(0, dtype=np.int64)]

        def columns() -> Iterator[pa.ChunkedArray]:  # per part: its patients, then the patients its links name
            for part, (found, named) in zip(rows.parts, rows.patient_links(), strict=True):
                link_rows.append(found)
                sizes.extend([part.rows, len(named)])
                yield part.column("patient_id")
                yield pa.chunked_array([named], type=pa.string())

        codes, count = hashed_codes(columns())
        is_link = np.repeat(np.resize([False, True], len(sizes)), sizes)
        return cls(record=codes[~is_link], link_row=np.concatenate(link_rows), link=codes[is_link], count=count)


def _linked_group_leaks(rows: _Rows, patients: _Patients) -> list[Leak]:
    """Patients linked across sources (through the links records carry) must share a split. Groups are
    the connected components of the patient codes joined by the links of the rows that count."""
    counts = np.zeros(len(patients.record), dtype=bool)
    counts[rows.keep] = True
    link_row = patients.link_row
    mine = counts[link_row] & (patients.record[link_row] >= 0)  # a row without a patient links nothing
    a, b = patients.record[link_row[mine]], patients.link[mine]
    if not len(a):
        return []
    root = join_components(np.arange(patients.count), a, b)
    member = np.zeros(patients.count, dtype=bool)
    member[a] = member[b] = True
    kept = patients.record[rows.keep]
    in_group = np.flatnonzero((kept >= 0) & member[np.maximum(kept, 0)])
    where = in_group[_spread(root[kept[in_group]], rows.split[in_group])]  # groups in more than one split
    if not len(where):
        return []
    # a group is named by its smallest patient id, of its rows or of the links into it
    named = np.zeros(patients.count, dtype=bool)
    named[root[kept[where]]] = True
    names: dict[int, str] = {}
    linked = pa.chunked_array([named for _, named in rows.patient_links()], type=pa.string())
    for code_of, values in ((patients.record, rows.column("patient_id")), (patients.link, linked)):
        chosen = np.flatnonzero((code_of >= 0) & member[np.maximum(code_of, 0)])
        chosen = chosen[named[root[code_of[chosen]]]]
        for code, value in zip(root[code_of[chosen]].tolist(), values.take(pa.array(chosen)).to_pylist(), strict=True):
            names[code] = min(names.get(code, value), value)
    keys = [names[code] for code in root[kept[where]].tolist()]
    return rows.grouped_leaks("linked patient group", keys, where, min_patients=2)


def _picture_leaks(rows: _Rows) -> list[Leak]:
    """Identical file bytes or decoded pixels in more than one split (both hashes are one kind of key)."""
    columns = ["image_sha256", "image_pixel_sha256"]
    hashed: dict[str, list[np.ndarray]] = {name: [np.empty(0, dtype=np.uint64)] for name in columns}
    present: dict[str, list[np.ndarray]] = {name: [np.empty(0, dtype=bool)] for name in columns}
    for part in rows.parts:  # both columns of a part at once (read in parallel), then hashed and dropped
        table = part.read(columns)
        for name in columns:
            values, valid_values = string_hashes(table.column(name))
            hashed[name].append(values[:, 0])  # one hash: matches are confirmed by value
            present[name].append(valid_values)
    hashes = np.concatenate([np.concatenate(hashed[name])[rows.keep] for name in columns])
    valid = np.concatenate([np.concatenate(present[name])[rows.keep] for name in columns])
    entries = _spread_hashed(hashes, valid, np.tile(rows.split, 2))
    return rows.leaks("identical picture", columns, entries)


def _near_duplicate_leaks(rows: _Rows, bits: int) -> list[Leak]:
    """Pairs of records in different splits whose perceptual hashes differ in at most `bits` bits."""
    last = _last_of_each(np.where(rows.record < 0, rows.records, rows.record))  # a record's last row stands for it
    parsed = _phash_words(rows, rows.keep[last])
    if parsed is None:  # not all of one even length, or not plain hex: as the build does it
        column = rows.column("image_phash").take(pa.array(rows.keep[last], type=pa.int64()))
        last = last[column.is_valid().to_numpy(zero_copy_only=False)]
        record_ids, splits = rows.values("record_id", last), [rows.split_names[s] for s in rows.split[last]]
        split_of = dict(zip(record_ids, splits, strict=True))
        hashes = zip(record_ids, column.drop_null().to_pylist(), strict=True)
        pairs = near_duplicate_pairs(hashes, bits, labels=splits)
    else:
        words, valid, length = parsed
        last = last[valid]
        found = near_duplicate_rows(words, length, bits, rows.split[last])
        if not len(found):
            return []
        first, second = found // max(1, len(last)), found % max(1, len(last))
        where = np.unique(np.concatenate([first, second]))
        ids = dict(zip(where.tolist(), rows.values("record_id", last[where]), strict=True))
        split_of = {ids[i]: rows.split_names[rows.split[last[i]]] for i in where.tolist()}
        named = ((ids[a], ids[b]) for a, b in zip(first.tolist(), second.tolist(), strict=True))
        pairs = sorted({(min(a, b), max(a, b)) for a, b in named if a != b})
    return [
        _leak("near-duplicate picture", f"{a}~{b}", (split_of[a], split_of[b]), (f"{a}@{split_of[a]}", f"{b}@{split_of[b]}"))  # noqa: E501
        for a, b in pairs
    ]


def _phash_words(rows: _Rows, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(64-bit words of the perceptual hashes that rows `wanted` have, which of them have one, bit
    length), read a part at a time; None unless the hashes are all plain hex of one even length.
    `wanted`: positions among the rows of every part end to end, ascending."""
    words, valid, lengths, start = [np.empty((0, 0), dtype=np.uint64)], [np.empty(0, dtype=bool)], set(), 0
    for part in rows.parts:
        mine = wanted[(wanted >= start) & (wanted < start + part.rows)] - start
        start += part.rows
        column = part.column("image_phash") if len(mine) else None
        if column is None or column.null_count == len(column):
            valid.append(np.zeros(len(mine), dtype=bool))
            continue
        parsed = hex_words(column)
        if parsed is None:
            return None
        part_words, part_valid, length = parsed
        lengths.add(length)
        has = part_valid[mine]
        valid.append(has)
        words.append(take_rows(part_words, (np.cumsum(part_valid) - 1)[mine[has]]))
    if len(lengths) > 1:
        return None
    length = lengths.pop() if lengths else 0
    width = max(1, -(-length // 64))  # 64-bit words per hash
    parts = [w.reshape(-1, width) for w in words]
    joined = np.empty((width, sum(len(w) for w in parts)), dtype=np.uint64)
    for index in range(width):  # each column contiguous, as the search wants them: no copy there
        np.concatenate([w[:, index] for w in parts], out=joined[index])
    return joined.T, np.concatenate(valid), length


def _label_by_source(rows: _Rows) -> dict[str, dict[str, dict[str, int]]]:
    names, state = _states(rows)
    sources = max(1, len(rows.source_names))
    known = rows.source >= 0  # as pandas' value_counts: rows without a source are left out
    combined = (rows.split[known] * sources + rows.source[known]) * len(names) + state[known]
    counts = np.bincount(combined, minlength=len(rows.split_names) * sources * len(names))
    tally: dict[tuple[str, str, str], int] = {}
    for code in np.flatnonzero(counts).tolist():
        split, rest = divmod(code, sources * len(names))
        key = (rows.split_names[split], rows.source_names[rest // len(names)], names[rest % len(names)])
        tally[key] = tally.get(key, 0) + int(counts[code])
    table: dict[str, dict[str, dict[str, int]]] = {}
    for key, n in sorted(tally.items()):
        split_name, source_name, state_name = (str(part) for part in key)
        table.setdefault(split_name, {}).setdefault(source_name, {})[state_name] = n
    return table


def _states(rows: _Rows) -> tuple[list[str], np.ndarray]:
    """covid19 state names ('missing' for none) and the index of each kept row's state in them."""
    names = [*LABEL_STATE_NAMES, "missing"]
    index: np.ndarray = np.arange(len(names))[rows.covid19]  # -1 (none) is the last; out of range raises
    return names, index


def _shortcut_warnings(rows: _Rows) -> list[str]:
    names, state = _states(rows)
    sources = [*rows.source_names, "nan"]  # as pandas: a missing source is one more value, nan
    source = np.where(rows.source < 0, len(sources) - 1, rows.source)
    positive, negative = names.index("positive"), names.index("negative")
    warnings = []
    for split in sorted(range(len(rows.split_names)), key=lambda code: rows.split_names[code]):
        mine = rows.split == split
        if not mine.any():
            continue
        name = rows.split_names[split]
        present = np.unique(source[mine])
        for label, code in (("positive", positive), ("negative", negative)):
            with_state = np.unique(source[mine & (state == code)])
            if len(present) > 1 and len(with_state) == 1:
                warnings.append(
                    f"{name}: every covid19 '{label}' comes from {sources[with_state[0]]}; "
                    "a model can learn the source instead of the label"
                )
        aged = mine & ~np.isnan(rows.age)
        negative_ages, positive_ages = rows.age[aged & (state == negative)], rows.age[aged & (state == positive)]
        if len(negative_ages) and len(positive_ages) and negative_ages.max() < ADULT_AGE <= positive_ages.min():
            warnings.append(f"{name}: covid19 negatives are all pediatric, positives all adult; age is a shortcut")
    return warnings
