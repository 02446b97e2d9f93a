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
from collections.abc import Iterable
from dataclasses import dataclass, field

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


def near_duplicate_pairs(hashes: Iterable[tuple[str, str]], bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[str, str]]:
    """Pairs of ids whose equally long hex hashes differ in at most `bits` bits.

    Pigeonhole: split the hash into bits+1 bands; two hashes within `bits` bits agree exactly on at
    least one band, so only ids sharing a band are compared.
    """
    listed = list(hashes)
    if not listed:
        return []
    length = 4 * len(listed[0][1])
    items = [(key, int(value, 16)) for key, value in listed]
    bands = bits + 1
    widths = [length // bands + (1 if i < length % bands else 0) for i in range(bands)]
    pairs: set[tuple[str, str]] = set()
    offset = 0
    for width in widths:
        buckets: dict[int, list[tuple[str, int]]] = defaultdict(list)
        for key, value in items:
            buckets[(value >> offset) & ((1 << width) - 1)].append((key, value))
        for bucket in buckets.values():
            for i, (key_a, value_a) in enumerate(bucket):
                for key_b, value_b in bucket[i + 1 :]:
                    if key_a != key_b and (value_a ^ value_b).bit_count() <= bits:
                        pairs.add((min(key_a, key_b), max(key_a, key_b)))
        offset += width
    return sorted(pairs)


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
