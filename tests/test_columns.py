"""Hashed codes of string columns: the same partition of values as a dictionary encoding."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from covid_cxr_unified.harmonize import columns
from covid_cxr_unified.harmonize.columns import encode, hashed_codes, string_hashes


def _partition(codes: np.ndarray) -> list[tuple[int, ...]]:
    """Which positions share a code (missing values apart), independent of how codes are numbered."""
    groups: dict[int, list[int]] = {}
    for position, code in enumerate(codes.tolist()):
        groups.setdefault(code, []).append(position)
    return sorted(tuple(group) for code, group in groups.items() if code >= 0)


def _random_strings(rng: np.random.Generator, n: int) -> list[str | None]:
    alphabet = list("ab\u00e9\u4e2d\x00 ")  # few letters: many repeats, equal lengths, NUL and non-ASCII
    values: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.1:
            values.append(None)
        else:
            values.append("".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))))
    return values


@pytest.mark.parametrize("seed", range(6))
def test_hashed_codes_partition_values_as_a_dictionary_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = _random_strings(rng, 600)
    long = "x" * (3 << 20)  # longer than one gather batch
    values[5], values[77] = long, long
    values[9] = long + "y"
    values[20], values[21], values[22] = "z" * 200, "z" * 199 + "y", "z" * 200  # one matrix of 200 bytes
    plain = pa.array(values[:300], pa.string())
    column_a = pa.chunked_array([plain.slice(0, 100), plain.slice(100)])  # chunks with non-zero offsets
    column_b = pa.chunked_array([pa.array(values[300:], pa.large_string())])
    codes, distinct = hashed_codes([column_a, column_b])
    expected, names = encode(pa.chunked_array([*column_a.chunks, *column_b.cast(pa.string()).chunks]))
    assert _partition(codes) == _partition(expected)
    assert distinct == len(names)
    assert np.array_equal(codes < 0, np.asarray([v is None for v in values]))


def test_a_shared_first_hash_is_told_apart_by_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct values whose first hashes collide still get distinct codes."""

    def colliding(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        hashes, valid = string_hashes(column)
        hashes[:, 0] = 0
        return hashes, valid

    monkeypatch.setattr(columns, "string_hashes", colliding)
    codes, distinct = hashed_codes([pa.chunked_array([["a", "b", "a", None, "c", "b"]])])
    assert distinct == 3
    assert _partition(codes) == [(0, 2), (1, 5), (4,)]
    assert codes[3] == -1


def test_string_hashes_depend_on_every_byte_and_the_length() -> None:
    values = ["", "\x00", "\x00" * 8, "a" * 8, "a" * 8 + "b", "b" + "a" * 8, "aaaaaaab", "c" * 300, "c" * 299 + "d"]
    hashes, valid = string_hashes(pa.chunked_array([values]))
    assert valid.all()
    for seed in (0, 1):
        assert len(set(hashes[:, seed].tolist())) == len(values)
    assert not np.array_equal(hashes[:, 0], hashes[:, 1])
