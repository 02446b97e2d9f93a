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
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pandas as pd

NEAR_DUPLICATE_BITS = 14
_PARALLEL_ROWS = 50_000  # from this many hashes on, bands are searched in parallel threads


@dataclass(frozen=True)
class RecordKeys:
    """What grouping needs of one record (cheap to keep in memory for millions of records)."""

    record_id: str
    source: str
    patient_id: str
    linked_patients: tuple[str, ...] = ()
    file_sha256: str | None = None
    pixel_sha256: str | None = None
    phash: str | None = None


class UnionFind:
    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, item: str) -> str:
        parent = self._parent.setdefault(item, item)
        if parent != item:
            parent = self._parent[item] = self.find(parent)
        return parent

    def union(self, a: str, b: str) -> bool:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        self._parent[max(root_a, root_b)] = min(root_a, root_b)
        return True

    def items(self) -> Iterable[str]:
        return self._parent.keys()


@dataclass
class Grouping:
    """`group_of[patient_id]` is the group key: the smallest patient id of its component."""

    group_of: dict[str, str]
    merges: Counter[str] = field(default_factory=Counter)  # why components were joined, by kind

    def members(self, keys: Iterable[RecordKeys]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = defaultdict(list)
        for key in keys:
            groups[self.group_of[key.patient_id]].append(key.record_id)
        return groups


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


def hash_words(raw: np.ndarray) -> np.ndarray:
    """Rows of hash bytes as big-endian 64-bit words, most significant first (left-padded); each
    column of words is contiguous."""
    padded = np.ascontiguousarray(raw)
    if raw.shape[1] % 8 or not raw.shape[1]:
        padded = np.zeros((raw.shape[0], -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
        padded[:, padded.shape[1] - raw.shape[1] :] = raw
    big_endian = padded.view(">u8")
    words = np.empty((big_endian.shape[1], len(big_endian)), dtype=np.uint64)
    for index in range(big_endian.shape[1]):
        words[index] = big_endian[:, index]
    return words.T


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

    _PAIRS_PER_BATCH = 1 << 18

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
            starts = np.bincount(value, minlength=1 << (width + label_bits))
            starts = np.cumsum(starts) - starts
            run_start, group_start = starts[run], starts[group]
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


def group_records(
    keys: Iterable[RecordKeys],
    id_map: Iterable[tuple[str, str]] = (),
    near_bits: int | None = NEAR_DUPLICATE_BITS,
) -> Grouping:
    """Connected components of patients; `near_bits=None` turns near-duplicate search off."""
    keys = list(keys)
    uf = UnionFind()
    merges: Counter[str] = Counter()
    for key in keys:
        uf.find(key.patient_id)
        for other in key.linked_patients:
            merges["cross-source link"] += uf.union(key.patient_id, other)
    for a, b in id_map:
        merges["id map"] += uf.union(a, b)
    for kind in ("file_sha256", "pixel_sha256"):
        first_patient: dict[str, str] = {}
        for key in keys:
            value = getattr(key, kind)
            if value is not None:
                merges[f"identical {kind.split('_')[0]}"] += uf.union(
                    first_patient.setdefault(value, key.patient_id), key.patient_id
                )
    if near_bits is not None:
        patient_of = {key.record_id: key.patient_id for key in keys}
        hashes = [(key.record_id, key.phash) for key in keys if key.phash is not None]
        for a, b in near_duplicate_pairs(hashes, near_bits):
            merges["near-duplicate picture"] += uf.union(patient_of[a], patient_of[b])
    group_of = {patient: uf.find(patient) for patient in list(uf.items())}
    return Grouping(group_of=group_of, merges=+merges)
