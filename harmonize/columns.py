"""Arrow string columns as numpy integer codes and hash words: the columnar helpers of grouping and the guard.

Strings stay in Arrow; only integer arrays (a few bytes per row) come out.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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


def strings(columns: list[pa.ChunkedArray]) -> pa.ChunkedArray:
    """The chunks of a string column of every table as one column (an all-null column may be typed null)."""
    chunks = [chunk for column in columns for chunk in column.chunks]
    chunks = [c if pa.types.is_string(c.type) or pa.types.is_large_string(c.type) else c.cast(pa.string())
              for c in chunks]
    if any(pa.types.is_large_string(c.type) for c in chunks):
        chunks = [c.cast(pa.large_string()) for c in chunks]
    return pa.chunked_array(chunks, type=chunks[0].type if chunks else pa.string())


def encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """An integer code per value (-1: missing) and the distinct values."""
    encoded = pc.dictionary_encode(column).combine_chunks()
    codes: np.ndarray = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary


def fixed_width(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """(valid mask, bytes of the valid values as rows) of a string array whose values all have the same
    length (and missing values none); None otherwise."""
    offsets, data, valid = _string_buffers(chunk)
    lengths = np.diff(offsets)
    width = int(lengths[valid][0]) if valid.any() else 0
    if (lengths != np.where(valid, width, 0)).any():
        return None
    if not len(data) or not width:
        return valid, np.zeros((int(valid.sum()), width), dtype=np.uint8)
    return valid, data[int(offsets[0]) : int(offsets[-1])].reshape(-1, width)


def hex_words(hashes: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(64-bit words of the present values, which values are present, bit length) of hex strings all
    of one even length, parsed in bulk; None for anything else."""
    parts, valid, widths = [], [np.empty(0, dtype=bool)], set()
    for chunk in hashes.chunks:
        fixed = fixed_width(chunk)
        if fixed is None:
            return None
        valid.append(fixed[0])
        if len(fixed[1]):
            parts.append(fixed[1])
            widths.add(fixed[1].shape[1])
    if len(widths) != 1 or min(widths) % 2:
        return None
    try:
        raw = [np.frombuffer(binascii.unhexlify(np.ascontiguousarray(part).data), dtype=np.uint8) for part in parts]
    except binascii.Error:
        return None
    width = widths.pop()
    joined = raw[0] if len(raw) == 1 else np.concatenate(raw)
    return hash_words(joined.reshape(-1, width // 2)), np.concatenate(valid), 4 * width


def take_rows(words: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of `words`, each column contiguous."""
    taken = np.empty((words.shape[1], len(rows)), dtype=words.dtype)
    for index in range(words.shape[1]):
        taken[index] = words[:, index][rows]
    return taken.T


_HASH_SEEDS = ((0x9E3779B97F4A7C15, 29), (0xC2B2AE3D27D4EB4F, 31))  # (multiplier, shift) per hash
_GATHER_BYTES = 1 << 20  # bytes of strings gathered at a time (the index matrix is 8x that)
_MATRIX_BYTES = 256  # longer strings are hashed one by one


def string_hashes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(two independent 64-bit hashes per value as an (n, 2) array, valid mask) of a string column.
    Equal strings hash equal; callers confirm equal hashes (exact values, or the other hash)."""
    hashes, valids = [np.empty((0, 2), dtype=np.uint64)], [np.empty(0, dtype=bool)]
    for chunk in strings([column]).chunks:
        offsets, data, valid = _string_buffers(chunk)
        lengths = np.diff(offsets)
        hashed = np.zeros((len(chunk), 2), dtype=np.uint64)
        for length in np.unique(lengths[valid]).tolist():  # strings of one length as a matrix of bytes
            rows = np.flatnonzero(valid & (lengths == length))
            if length > _MATRIX_BYTES:  # rare long strings: one at a time (the matrix loop is per 8 bytes)
                for row in rows.tolist():
                    digest = hashlib.blake2b(data[offsets[row] : offsets[row + 1]].tobytes(), digest_size=16).digest()
                    hashed[row] = np.frombuffer(digest, dtype=np.uint64)
                continue
            for batch, matrix in _byte_matrices(offsets, data, rows, length):
                for seed, (multiplier, shift) in enumerate(_HASH_SEEDS):
                    mixed = np.full(len(batch), length + seed, dtype=np.uint64)
                    for word in matrix.view(np.uint64).T:
                        mixed ^= word
                        mixed *= np.uint64(multiplier)
                        mixed ^= mixed >> np.uint64(shift)
                    hashed[batch, seed] = mixed
        hashes.append(hashed)
        valids.append(valid)
    return np.concatenate(hashes), np.concatenate(valids)


def _byte_matrices(
    offsets: np.ndarray, data: np.ndarray, rows: np.ndarray, length: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, their bytes as a matrix, rows zero-padded to a multiple of 8 bytes) in batches; strings of
    a multiple of 8 bytes that lie end to end (e.g. a column of hex digests) are one view, not copied."""
    first = int(offsets[rows[0]])
    if length and length % 8 == 0 and np.array_equal(offsets[rows], first + length * np.arange(len(rows))):
        yield rows, data[first : first + length * len(rows)].reshape(-1, length)
        return
    step = max(1, _GATHER_BYTES // max(1, length))
    for start in range(0, len(rows), step):
        batch = rows[start : start + step]
        matrix = np.zeros((len(batch), -(-length // 8) * 8 or 8), dtype=np.uint8)
        matrix[:, :length] = data[offsets[batch, None] + np.arange(length)]
        yield batch, matrix


def _string_buffers(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, bytes, valid mask) of a string array."""
    wide = pa.types.is_large_string(chunk.type)
    n = len(chunk)
    offsets = np.frombuffer(
        chunk.buffers()[1], dtype=np.int64 if wide else np.int32, count=n + 1, offset=chunk.offset * (8 if wide else 4)
    ).astype(np.int64) if n else np.zeros(1, dtype=np.int64)
    values = chunk.buffers()[2]
    data = np.frombuffer(values, dtype=np.uint8) if values is not None else np.empty(0, dtype=np.uint8)
    valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else np.ones(n, dtype=bool)
    return offsets, data, valid


def hashed_codes(columns: Iterable[pa.ChunkedArray]) -> tuple[np.ndarray, int]:
    """An integer code per value of the columns end to end (-1: missing; equal strings, equal codes),
    and how many distinct values: like `encode`, from two 64-bit hashes per value instead of a hash
    table of the strings (a few bytes per value). Each column is hashed and dropped in turn; codes
    number the values in hash order."""
    hashed, valid = [np.empty((0, 2), dtype=np.uint64)], [np.empty(0, dtype=bool)]
    for column in columns:
        hashes, present = string_hashes(column)
        hashed.append(hashes)
        valid.append(present)
    present = np.concatenate(valid)
    both = np.concatenate(hashed)[present]
    one, other = both[:, 0], both[:, 1]
    distinct, inverse = np.unique(one, return_inverse=True)
    representative = np.empty(len(distinct), dtype=np.uint64)
    representative[inverse] = other
    if (representative[inverse] != other).any():  # two values share the first hash: tell them apart by both
        distinct, inverse = np.unique(both, axis=0, return_inverse=True)
    codes = np.full(len(present), -1, dtype=np.int64)
    codes[present] = inverse.reshape(-1)
    return codes, len(distinct)
