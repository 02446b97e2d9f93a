"""Split groups: components of patients linked by id, links, id maps and (near-)duplicate pictures."""

from __future__ import annotations

import io
import itertools
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import covid_cxr_unified.harmonize.groups as groups_module
from covid_cxr_unified.adapters.pixels import dhash, hamming, picture_hashes, pixel_sha256
from covid_cxr_unified.harmonize.groups import (
    NEAR_DUPLICATE_BITS,
    RecordKeys,
    group_records,
    near_duplicate_pairs,
)
from covid_cxr_unified.harmonize.splits import SplitRatios, assign_split
from covid_cxr_unified.harmonize.synthetic.images import encode, synthetic_array


def _reencoded(img: Image.Image, scale: float, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    size = (max(8, int(img.width * scale)), max(8, int(img.height * scale)))
    img.resize(size).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_threshold_separates_copies_from_distinct_synthetic_pictures() -> None:
    rng = random.Random(11)
    pictures = [Image.open(io.BytesIO(encode(synthetic_array(rng, 96, 104), fmt="PNG", mode="L"))) for _ in range(200)]
    hashes = [dhash(p) for p in pictures]
    distinct = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    false_merges = sum(d <= NEAR_DUPLICATE_BITS for d in distinct)
    assert false_merges == 0, f"{false_merges} of {len(distinct)} distinct pairs within the threshold"
    copies = [hamming(dhash(p), dhash(_reencoded(p, s))) for p in pictures[:40] for s in (0.5, 0.75, 1.6)]
    assert max(copies) <= NEAR_DUPLICATE_BITS


@pytest.mark.realdata
def test_threshold_on_the_real_sample_images(shared_data: Path) -> None:
    files = sorted((shared_data / "ieee8023" / "images-sample").iterdir())
    pictures = [Image.open(f) for f in files]
    hashes = [dhash(p) for p in pictures]
    assert min(hamming(a, b) for a, b in itertools.combinations(hashes, 2)) > 2 * NEAR_DUPLICATE_BITS + 5
    copies = [
        hamming(h, dhash(_reencoded(p, s))) for p, h in zip(pictures, hashes, strict=True) for s in (0.25, 0.5, 1.7)
    ]
    assert max(copies) <= NEAR_DUPLICATE_BITS


def test_pixel_hash_ignores_the_container() -> None:
    array = synthetic_array(random.Random(1), 40, 44)
    as_png = Image.open(io.BytesIO(encode(array, fmt="PNG", mode="L")))
    as_rgb_png = Image.open(io.BytesIO(encode(array, fmt="PNG", mode="RGB")))
    as_jpeg = Image.open(io.BytesIO(encode(array, fmt="JPEG", mode="L")))
    assert pixel_sha256(as_png) == pixel_sha256(as_rgb_png) != pixel_sha256(as_jpeg)


def test_16_bit_pictures_hash_alike_whatever_their_byte_order_or_integer_type() -> None:
    rng = np.random.default_rng(5)
    values = rng.integers(0, 4096, size=(37, 29)).astype(np.uint16)
    little = Image.fromarray(values)  # I;16
    big = Image.frombytes("I;16B", (29, 37), values.astype(">u2").tobytes())
    wide = Image.fromarray(values.astype(np.int32))  # mode I: stretched through floats, not a table
    assert little.mode == "I;16" and wide.mode == "I"
    hashes = picture_hashes(little)
    assert hashes == picture_hashes(big) == picture_hashes(wide) == (pixel_sha256(little), dhash(little))
    assert hashes[0] != pixel_sha256(Image.fromarray(values + 1))


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = random.Random(3)
    hashes = [(f"r{i}", f"{rng.getrandbits(256):064x}") for i in range(60)]
    base = int(hashes[0][1], 16)
    hashes += [(f"c{k}", f"{base ^ (1 << k) ^ (1 << (k + 50)):064x}") for k in range(5)]  # 2 bits from r0
    brute = sorted(
        (min(a, b), max(a, b)) for (a, ha), (b, hb) in itertools.combinations(hashes, 2) if hamming(ha, hb) <= 4
    )
    assert near_duplicate_pairs(hashes, 4) == brute and len(brute) >= 5


def _brute_force(hashes: list[tuple[str, str]], bits: int, labels: list[str] | None) -> list[tuple[str, str]]:
    label_of = dict(zip((key for key, _ in hashes), labels or [""] * len(hashes), strict=True))
    return sorted(
        {
            (min(a, b), max(a, b))
            for (a, ha), (b, hb) in itertools.combinations(hashes, 2)
            if hamming(ha, hb) <= bits and a != b and (labels is None or label_of[a] != label_of[b])
        }
    )


@pytest.mark.parametrize("bits", [3, 4, 14])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("parallel", [False, True])
def test_near_duplicate_pairs_with_labels_bands_and_batches_match_brute_force(
    bits: int, with_labels: bool, parallel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bits 3: 64-bit bands (argsort); 4: 52-bit bands (packed sort); 14: 18-bit bands (counted run
    starts). In parallel: threads over bands and pairs checked in small batches, as for large inputs."""
    if parallel:
        monkeypatch.setattr(groups_module, "_PARALLEL_ROWS", 2)
        monkeypatch.setattr(groups_module._BandSearch, "_PAIRS_PER_BATCH", 7)
    rng = random.Random(bits)
    bases = [rng.getrandbits(256) for _ in range(12)]
    hashes = []
    for i in range(150):  # clusters of close hashes, some far ones: pairs within, around and beyond `bits`
        value = rng.choice(bases)
        for _ in range(rng.randint(0, 2 * bits + 2)):
            value ^= 1 << rng.randrange(256)
        hashes.append((f"r{i}", f"{value:064x}"))
    labels = [rng.choice(["train", "validation", "test"]) for _ in hashes] if with_labels else None
    brute = _brute_force(hashes, bits, labels)
    assert near_duplicate_pairs(hashes, bits, labels=labels) == brute and len(brute) >= 10


def test_components_join_links_id_maps_and_pictures() -> None:
    keys = [
        RecordKeys("ieee8023:a.png", "ieee8023", "ieee8023:1", pixel_sha256="p1"),
        RecordKeys("v7_darwin:a.png", "v7_darwin", "v7_darwin:1", linked_patients=("ieee8023:1",)),
        RecordKeys("ieee8023:b.png", "ieee8023", "ieee8023:2", pixel_sha256="p1"),  # same picture as a.png
        RecordKeys("bimcv:x", "bimcv", "bimcv:sub-1"),
        RecordKeys("bimcv:y", "bimcv", "bimcv:sub-2"),
        RecordKeys("bimcv:z", "bimcv", "bimcv:sub-3"),
    ]
    grouping = group_records(keys, id_map=[("bimcv:sub-1", "bimcv:sub-2")])
    assert grouping.group_of["v7_darwin:1"] == grouping.group_of["ieee8023:2"] == "ieee8023:1"
    assert grouping.group_of["bimcv:sub-2"] == "bimcv:sub-1" and grouping.group_of["bimcv:sub-3"] == "bimcv:sub-3"
    assert grouping.merges == {"cross-source link": 1, "identical pixel": 1, "id map": 1}


def test_assignment_depends_only_on_the_group_key() -> None:
    ratios = SplitRatios()
    before = {f"ieee8023:{i}": assign_split(f"ieee8023:{i}", ratios) for i in range(500)}
    keys = [RecordKeys(f"r{i}", "ieee8023", f"ieee8023:{i}") for i in range(1000)]
    grouping = group_records(keys)
    after = {p: assign_split(grouping.group_of[p], ratios) for p in before}
    assert before == after
    shares = [list(before.values()).count(s) / 500 for s in ("train", "validation", "test")]
    assert abs(shares[0] - 0.8) < 0.06 and abs(shares[1] - 0.1) < 0.04 and abs(shares[2] - 0.1) < 0.04


class UnionFind:
    """The plain union-find of strings that the columnar grouping and the guard replaced."""

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

    def items(self) -> list[str]:
        return list(self._parent)


def _reference_grouping(
    keys: list[RecordKeys], id_map: list[tuple[str, str]], bits: int
) -> tuple[dict[str, str], Counter[str]]:
    """The plain union-find the columnar grouping replaced: unions in order, each counted by kind."""
    uf, merges = UnionFind(), Counter[str]()
    for key in keys:
        uf.find(key.patient_id)
        for other in key.linked_patients:
            merges["cross-source link"] += uf.union(key.patient_id, other)
    for a, b in id_map:
        merges["id map"] += uf.union(a, b)
    for kind, name in (("file_sha256", "identical file"), ("pixel_sha256", "identical pixel")):
        first: dict[str, str] = {}
        for key in keys:
            value = getattr(key, kind)
            if value is not None:
                merges[name] += uf.union(first.setdefault(value, key.patient_id), key.patient_id)
    patient_of = {key.record_id: key.patient_id for key in keys}
    hashes = [(key.record_id, key.phash) for key in keys if key.phash is not None]
    for a, b in near_duplicate_pairs(hashes, bits):
        merges["near-duplicate picture"] += uf.union(patient_of[a], patient_of[b])
    return {p: uf.find(p) for p in uf.items()}, +merges


@pytest.mark.parametrize("seed", range(12))
def test_columnar_grouping_matches_a_plain_union_find(seed: int) -> None:
    rng = random.Random(seed)
    patients = [f"{rng.choice('abc')}:{i}" for i in range(rng.randint(5, 120))]
    bases = [f"{rng.getrandbits(64):016x}" for _ in range(8)]
    keys = []
    for i in range(rng.randint(1, 300)):
        near = rng.random() < 0.5
        phash = None if rng.random() < 0.2 else (rng.choice(bases) if near else f"{rng.getrandbits(64):016x}")
        if phash is not None and near:  # a near copy: flip up to 4 bits
            phash = f"{int(phash, 16) ^ sum(1 << rng.randrange(64) for _ in range(rng.randint(0, 4))):016x}"
        keys.append(
            RecordKeys(
                f"r{i}",
                "x",
                rng.choice(patients),
                linked_patients=tuple(rng.choice([*patients, "z:linked"]) for _ in range(rng.choice([0, 0, 0, 1, 2]))),
                file_sha256=rng.choice([None, None, "f1", "f2", f"u{i}"]),
                pixel_sha256=rng.choice([None, "p1", f"v{i}"]),
                phash=phash,
            )
        )
    id_map = [(rng.choice(patients), rng.choice([*patients, "y:only-in-map"])) for _ in range(rng.randint(0, 5))]
    grouping = group_records(keys, id_map, near_bits=6)
    group_of, merges = _reference_grouping(keys, id_map, 6)
    assert grouping.group_of == group_of and grouping.merges == merges
    assert grouping.patient_count == len(group_of) and grouping.group_count == len(set(group_of.values()))
