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

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

NEAR_DUPLICATE_BITS = 14


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
    per hash, e.g. its split), only pairs whose labels differ.

    Pigeonhole: split the hash into bits+1 bands; two hashes within `bits` bits agree exactly on at
    least one band, so only ids sharing a band value are compared — per band, every pair inside a run
    of equal band values at once (numpy). Shorter hashes count as zero-padded on the left.
    """
    listed = list(hashes)
    if len(listed) < 2:
        return []
    ids = np.array([key for key, _ in listed], dtype=object)
    digits = max(len(value) for _, value in listed)
    digits += digits % 2
    raw = np.frombuffer(bytes.fromhex("".join(v.rjust(digits, "0") for _, v in listed)), dtype=np.uint8)
    words = _words(raw.reshape(len(listed), -1))
    codes = pd.factorize(np.asarray(labels, dtype=object))[0] if labels is not None else None
    length = 4 * digits
    bands = min(bits + 1, length)
    found: list[np.ndarray] = []
    offset = 0
    for width in (length // bands + (1 if i < length % bands else 0) for i in range(bands)):
        a, b = _same_band_pairs(_band(words, offset, width))
        offset += width
        if codes is not None:
            apart = codes[a] != codes[b]
            a, b = a[apart], b[apart]
        close = np.bitwise_count(words[a] ^ words[b]).sum(axis=1) <= bits
        found.append(np.stack([np.minimum(a[close], b[close]), np.maximum(a[close], b[close])], axis=1))
    pairs = np.unique(np.concatenate(found), axis=0)
    named = {(min(ids[a], ids[b]), max(ids[a], ids[b])) for a, b in pairs if ids[a] != ids[b]}
    return sorted(named)


def _words(raw: np.ndarray) -> np.ndarray:
    """Rows of hash bytes as big-endian 64-bit words, most significant first (left-padded)."""
    padded = np.zeros((raw.shape[0], -(-raw.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, padded.shape[1] - raw.shape[1] :] = raw
    words: np.ndarray = padded.view(">u8").astype(np.uint64)
    return words


def _band(words: np.ndarray, offset: int, width: int) -> np.ndarray:
    """Bits offset..offset+width (from the least significant end) of every row."""
    word, shift = words.shape[1] - 1 - offset // 64, offset % 64
    key = words[:, word] >> np.uint64(shift)
    if shift + width > 64:
        key |= words[:, word - 1] << np.uint64(64 - shift)
    key &= np.uint64((1 << width) - 1)
    band: np.ndarray = key
    return band


def _same_band_pairs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (a, b) of every pair with an equal key."""
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    starts, lengths = starts[lengths > 1], lengths[lengths > 1]
    position = np.repeat(starts, lengths) + _within(lengths)
    rank = _within(lengths)  # members of its run before it: its partners
    right = np.repeat(position, rank)
    left = right - _within(rank) - 1
    return order[left], order[right]


def _within(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in `lengths`, concatenated."""
    counts: np.ndarray = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return counts


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
