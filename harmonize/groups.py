"""Split groups: records that must share a split are the connected components of their patients.

Patients are linked by (1) being the same namespaced patient, (2) cross-source links carried by the
records (V7 <-> ieee8023 by filename and PatientID), (3) an explicit id map, and (4) showing the same
picture: identical file bytes, identical decoded pixels, or a perceptual hash (256-bit dHash) within
`NEAR_DUPLICATE_BITS` bits — which catches re-encoded and resized copies.

Threshold: 14 of 256 bits. Measured (tests/test_groups.py): JPEG (quality 60) re-encodes resized to
0.25-1.7x stay within 11 bits for the 28 real ieee8023 sample images and within 10 for synthetic
fixture pictures, while distinct real images are at least 39 bits apart and 200 distinct synthetic
pictures at least 20: no false merge on either. A false merge would only join two patients' groups
(coarser splits, never a leak); the build report counts merges by kind.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from covid_cxr_unified.harmonize.columns import hash_words, hashed_codes, hex_words, strings

NEAR_DUPLICATE_BITS = 14
_PARALLEL_ROWS = 500_000  # from this many hashes on, bands are searched in parallel threads (a workspace each)


@dataclass(frozen=True)
class RecordKeys:
    """What grouping needs of one record, for callers that hold records (`key_table` makes the columns)."""

    record_id: str
    source: str
    patient_id: str
    linked_patients: tuple[str, ...] = ()
    file_sha256: str | None = None
    pixel_sha256: str | None = None
    phash: str | None = None


@dataclass
class Grouping:
    """Patients (every patient id of the records, their links and the id map, sorted) and, per patient,
    the index of its group key: the smallest patient id of its component. Arrays, not dicts: a few
    bytes per record."""

    patients: pa.Array
    root: np.ndarray  # per patient: index into `patients` of its group key
    record_patient: np.ndarray  # per record (in key-table order): index into `patients`
    merges: Counter[str] = field(default_factory=Counter)  # why components were joined, by kind

    @property
    def patient_count(self) -> int:
        return len(self.patients)

    @property
    def group_count(self) -> int:
        return int(np.count_nonzero(self.root == np.arange(len(self.root))))

    @property
    def group_of(self) -> dict[str, str]:
        """patient id -> group key, as a dict (for small builds and tests)."""
        return dict(zip(self.patients.to_pylist(), self.patients.take(self.root).to_pylist(), strict=True))

    def group_key(self, root: int) -> str:
        key: str = self.patients[root].as_py()
        return key


def near_duplicate_pairs(
    hashes: Iterable[tuple[str, str]],
    bits: int = NEAR_DUPLICATE_BITS,
    labels: Sequence[object] | None = None,
) -> list[tuple[str, str]]:
    """Sorted (a, b) pairs of ids whose hex hashes differ in at most `bits` bits; with `labels` (one
    per hash, e.g. its split), only pairs whose labels differ. Shorter hashes count as zero-padded
    on the left.
    """
    listed = list(hashes)
    if len(listed) < 2:
        return []
    ids = np.array([key for key, _ in listed], dtype=object)
    digits = max(len(value) for _, value in listed)
    digits += digits % 2
    raw = np.frombuffer(bytes.fromhex("".join(v.rjust(digits, "0") for _, v in listed)), dtype=np.uint8)
    words = hash_words(raw.reshape(len(listed), -1))
    codes = pd.factorize(np.asarray(labels, dtype=object))[0] if labels is not None else None
    pairs = near_duplicate_rows(words, 4 * digits, bits, codes)
    named = {
        (min(ids[a], ids[b]), max(ids[a], ids[b]))
        for a, b in zip((pairs // len(listed)).tolist(), (pairs % len(listed)).tolist(), strict=True)
        if ids[a] != ids[b]
    }
    return sorted(named)


def near_duplicate_rows(
    words: np.ndarray, length: int, bits: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """Sorted codes a * n + b (a < b) of the row pairs of `words` (n hashes of `length` bits as
    big-endian 64-bit words, see `hash_words`) that differ in at most `bits` bits; with integer
    `labels`, only pairs whose labels differ.

    Pigeonhole: split the hash into bits+1 bands; two hashes within `bits` bits agree exactly on at
    least one band, so only rows sharing a band value are compared. Per band one sort of packed
    (band, label, row) integers puts rows with equal band values in runs, sorted by label inside; every
    row is paired with the rows of its run that come before it (with labels: that have a smaller
    label) at once (numpy). A candidate pair is first tested on one 64-bit word outside the band (which
    alone must be within `bits`), then on the whole hash.
    """
    n = len(words)
    if n < 2:
        return np.empty(0, dtype=np.int64)
    search = _BandSearch(words, bits, _by_frequency(labels) if labels is not None else None)
    bands = min(bits + 1, length)
    widths = [length // bands + (1 if i < length % bands else 0) for i in range(bands)]
    offsets = np.cumsum([0, *widths[:-1]]).tolist()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    lanes = min(len(widths), cores, 4) if n >= _PARALLEL_ROWS else 1

    def lane(index: int) -> list[np.ndarray]:
        workspace = _Workspace(n)  # each lane reuses its buffers from band to band
        return [search.pairs(offsets[i], widths[i], workspace) for i in range(index, len(widths), lanes)]

    if lanes > 1:  # numpy releases the GIL in sorts, ufuncs and gathers: bands in parallel
        with ThreadPoolExecutor(lanes) as pool:
            found = [pairs for done in pool.map(lane, range(lanes)) for pairs in done]
    else:
        found = lane(0)
    pairs: np.ndarray = np.unique(np.concatenate([np.empty(0, dtype=np.int64), *found]))
    return pairs


def _by_frequency(labels: np.ndarray) -> np.ndarray:
    """Integer labels recoded 0, 1, ... from the most frequent (ties: smallest label first).

    Rows of the most frequent label then start their runs and have no partners of their own.
    """
    shifted = np.asarray(labels, dtype=np.int64)
    shifted = shifted - shifted.min()
    counts = np.bincount(shifted)
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    recoded: np.ndarray = rank[shifted]
    return recoded


class _Workspace:
    """Buffers of one row each, reused for every band (fresh memory is slow to come by)."""

    def __init__(self, n: int) -> None:
        self.key, self.order, self.sample, self.spare = (np.empty(n, dtype=np.uint64) for _ in range(4))


class _BandSearch:
    """Close pairs among rows that share one band of bits (see `near_duplicate_rows`)."""

    _PAIRS_PER_BATCH = 1 << 16  # 1 << 18: slower (larger temporaries) and 15 MB more at 140k hashes

    def __init__(self, words: np.ndarray, bits: int, label: np.ndarray | None) -> None:
        n = len(words)
        self.words, self.bits, self.label, self.n = words, bits, label, n
        self.columns = [np.ascontiguousarray(words[:, i]) for i in range(words.shape[1])]
        self.row_bits = max(1, (n - 1).bit_length())
        self.label_bits = int(label.max()).bit_length() if label is not None else 0
        self.rows = np.arange(n, dtype=np.uint64)
        self.shifted_label = label.astype(np.uint64) << np.uint64(self.row_bits) if label is not None else None

    def pairs(self, offset: int, width: int, workspace: _Workspace) -> np.ndarray:
        """Codes a * n + b (a < b) of the close pairs with equal bits offset..offset+width (counted from
        the least significant end)."""
        columns, bits = self.columns, self.bits
        word, shift = len(columns) - 1 - offset // 64, offset % 64
        key = np.right_shift(columns[word], np.uint64(shift), out=workspace.key)
        if shift + width > 64:
            key |= np.left_shift(columns[word - 1], np.uint64(64 - shift), out=workspace.spare)
        key &= np.uint64((1 << width) - 1)
        order, right_rows, partners, run_start = self._runs(key, width, workspace)
        outside = [i for i in range(len(columns)) if i not in (word, word - 1)]
        # cheap rejection on one word outside the band: almost every random candidate differs in > bits there
        sample = np.take(columns[outside[0]], order, out=workspace.sample, mode="clip") if outside else None
        found = [np.empty(0, dtype=np.int64)]
        ends, batch = np.cumsum(partners), self._PAIRS_PER_BATCH
        cuts = np.searchsorted(ends, np.arange(batch, ends[-1] if len(ends) else 0, batch))
        bounds = sorted({0, len(partners), *cuts.tolist()})
        for start, stop in pairwise(bounds):  # batches: small arrays, memory reused
            counts = partners[start:stop]
            right = np.repeat(right_rows[start:stop], counts)
            left = np.arange(len(right)) - np.repeat(np.cumsum(counts) - counts - run_start[start:stop], counts)
            if sample is not None:
                near = np.bitwise_count(sample[left] ^ sample[right]) <= bits
                left, right = left[near], right[near]
            a, b = order[left], order[right]
            close = np.bitwise_count(self.words[a] ^ self.words[b]).sum(axis=1, dtype=np.int64) <= bits
            a, b = a[close], b[close]
            found.append(np.minimum(a, b) * self.n + np.maximum(a, b))
        return np.concatenate(found)

    def _runs(
        self, key: np.ndarray, width: int, workspace: _Workspace
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """`order` (rows sorted by key, then label), and the positions in it of the rows that have
        partners (rows before them with an equal key and, with labels, a smaller label), how many, and
        where those start."""
        n, label, row_bits, label_bits = self.n, self.label, self.row_bits, self.label_bits
        if width + label_bits + row_bits > 64:  # wide bands: argsort (slower)
            order: np.ndarray = np.lexsort((label, key)) if label is not None else np.argsort(key, kind="stable")
            run_start = _run_starts(key[order])
            upto = np.arange(n) if label is None else _run_starts(key[order], label[order])
            partners = upto - run_start
            right_rows = np.flatnonzero(partners)
            return order, right_rows, partners[right_rows], run_start[right_rows]
        # one sort of packed (key, label, row) integers: much faster than an argsort
        packed = np.left_shift(key, np.uint64(label_bits + row_bits), out=key)
        packed |= self.rows
        if self.shifted_label is not None:
            packed |= self.shifted_label
        packed.sort()
        order = np.bitwise_and(packed, np.uint64((1 << row_bits) - 1), out=workspace.order).view(np.int64)
        value = np.right_shift(packed, np.uint64(row_bits), out=workspace.spare).view(np.int64)
        if label is None:  # partners: every row before it in its run
            run_start = _run_starts(value)
            partners = np.arange(n) - run_start
            right_rows = np.flatnonzero(partners)
            return order, right_rows, partners[right_rows], run_start[right_rows]
        # partners: the rows of its run with a smaller label (rows of label 0 have none)
        right_rows = np.flatnonzero(value & ((1 << label_bits) - 1))
        group = value[right_rows]
        run = group >> label_bits << label_bits
        if width + label_bits <= max(20, n.bit_length() + 2):  # where (key, label) values start: count them
            ends = np.bincount(value, minlength=1 << (width + label_bits))
            np.cumsum(ends, out=ends)  # in place: a table of 2^19 counts is 4 MB
            run_start, group_start = (np.where(v > 0, ends[v - 1], 0) for v in (run, group))
        else:
            run_start, group_start = np.searchsorted(value, run), np.searchsorted(value, group)
        return order, right_rows, group_start - run_start, run_start


def _run_starts(*ordered: np.ndarray) -> np.ndarray:
    """For each position of sorted keys (one or more arrays), where its run of equal keys starts."""
    head = np.zeros(len(ordered[0]), dtype=bool)
    head[:1] = True
    for values in ordered:
        head[1:] |= values[1:] != values[:-1]
    starts: np.ndarray = np.flatnonzero(head)[np.cumsum(head) - 1]
    return starts


KEY_COLUMNS = ("record_id", "source", "patient_id", "links", "image_sha256", "image_pixel_sha256", "image_phash")


@runtime_checkable
class KeyColumns(Protocol):
    """Where grouping reads `KEY_COLUMNS`, one at a time: a `pa.Table`, or the build's spools."""

    def column(self, name: str) -> pa.ChunkedArray: ...

_LINKS = pa.list_(pa.struct([("record_id", pa.string()), ("patient_id", pa.string()), ("relation", pa.string())]))


def key_table(keys: Iterable[RecordKeys]) -> pa.Table:
    """RecordKeys as the columns `group_records` reads (the build reads them from its spools)."""
    listed = list(keys)
    return pa.table(
        {
            "record_id": pa.array([k.record_id for k in listed], pa.string()),
            "source": pa.array([k.source for k in listed], pa.string()),
            "patient_id": pa.array([k.patient_id for k in listed], pa.string()),
            "links": pa.array(
                [[{"record_id": None, "patient_id": p, "relation": None} for p in k.linked_patients] for k in listed],
                _LINKS,
            ),
            "image_sha256": pa.array([k.file_sha256 for k in listed], pa.string()),
            "image_pixel_sha256": pa.array([k.pixel_sha256 for k in listed], pa.string()),
            "image_phash": pa.array([k.phash for k in listed], pa.string()),
        }
    )


def group_records(
    keys: KeyColumns | Iterable[RecordKeys],
    id_map: Iterable[tuple[str, str]] = (),
    near_bits: int | None = NEAR_DUPLICATE_BITS,
) -> Grouping:
    """Connected components of patients; `near_bits=None` turns near-duplicate search off. `keys` holds
    `KEY_COLUMNS` of every record; the work is on integer codes of its columns."""
    table = keys if isinstance(keys, KeyColumns) else key_table(keys)
    pairs = list(id_map)
    id_a, id_b = (pa.array([pair[side] for pair in pairs], pa.string()) for side in (0, 1))
    link_rows, linked = patient_links(table.column("links"))
    record_patients = strings([table.column("patient_id")])
    everything = pa.chunked_array([*record_patients.chunks, linked, id_a, id_b], type=record_patients.type)
    patients = pc.unique(everything.drop_null()).sort()

    def code(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        found: np.ndarray = pc.index_in(values, value_set=patients).to_numpy(zero_copy_only=False).astype(np.int64)
        return found

    record_patient = code(record_patients)
    edges = {
        "cross-source link": (record_patient[link_rows], code(linked)),
        "id map": (code(id_a), code(id_b)),
        "identical file": _same_value_edges(table.column("image_sha256"), record_patient),
        "identical pixel": _same_value_edges(table.column("image_pixel_sha256"), record_patient),
    }
    if near_bits is not None:
        edges["near-duplicate picture"] = _near_duplicate_edges(table, record_patient, near_bits)
    root = np.arange(len(patients), dtype=np.int64)
    merges: Counter[str] = Counter()
    for kind, (a, b) in edges.items():  # in this order: each merge is counted under the first kind that made it
        before = np.count_nonzero(root == np.arange(len(root)))
        root = join_components(root, a, b)
        merges[kind] = int(before - np.count_nonzero(root == np.arange(len(root))))
    return Grouping(patients=patients, root=root, record_patient=record_patient, merges=+merges)


def patient_links(links: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """(record row, linked patient id) of every link that names a patient."""
    rows, named, start = [np.empty(0, dtype=np.int64)], [pa.array([], pa.string())], 0
    for chunk in links.chunks:
        if pa.types.is_list(chunk.type) and pa.types.is_struct(chunk.type.value_type):
            patient = pc.list_flatten(chunk).field("patient_id")
            present = pc.fill_null(pc.not_equal(patient, ""), False)
            parent = pc.list_parent_indices(chunk).filter(present).to_numpy(zero_copy_only=False)
            rows.append(parent.astype(np.int64) + start)
            named.append(patient.filter(present).cast(pa.string()))
        start += len(chunk)
    return np.concatenate(rows), pa.concat_arrays(named)


def _same_value_edges(column: pa.ChunkedArray, record_patient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patient pairs of consecutive records with the same (present) value."""
    codes, _ = hashed_codes([column])
    rows = np.flatnonzero(codes >= 0)
    ordered = rows[np.argsort(codes[rows], kind="stable")]
    same = codes[ordered[1:]] == codes[ordered[:-1]]
    return record_patient[ordered[:-1][same]], record_patient[ordered[1:][same]]


def _near_duplicate_edges(table: KeyColumns, record_patient: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient pairs of records whose perceptual hashes differ in at most `bits` bits."""
    column = strings([table.column("image_phash")])
    parsed = hex_words(column)
    if parsed is None:  # hashes not all of one even length, or not plain hex: the general (slower) path
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        hashes = zip(rows.tolist(), column.drop_null().to_pylist(), strict=True)
        named = near_duplicate_pairs(((str(r), h) for r, h in hashes), bits)
        found = np.asarray([(int(a), int(b)) for a, b in named], dtype=np.int64).reshape(-1, 2)
        return record_patient[found[:, 0]], record_patient[found[:, 1]]
    words, valid, length = parsed
    rows = np.flatnonzero(valid)
    pairs = near_duplicate_rows(words, length, bits)
    return record_patient[rows[pairs // max(1, len(rows))]], record_patient[rows[pairs % max(1, len(rows))]]


def join_components(root: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Components after adding edges a-b: per node, the smallest node of its component (`root` holds
    that for the edges so far). Roots hook onto smaller roots, then paths are halved until flat."""
    root = root.copy()
    while True:
        ra, rb = root[a], root[b]
        apart = ra != rb
        if not apart.any():
            return root
        np.minimum.at(root, np.maximum(ra, rb)[apart], np.minimum(ra, rb)[apart])
        while True:
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
