"""Arrow string columns as numpy integer codes and hash words: the columnar helpers of grouping and the guard.

Strings stay in Arrow; only integer arrays (a few bytes per row) come out.
"""

from __future__ import annotations

import binascii

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
    n = len(chunk)
    offsets = np.frombuffer(
        chunk.buffers()[1],
        dtype=np.int64 if pa.types.is_large_string(chunk.type) else np.int32,
        count=n + 1,
        offset=chunk.offset * (8 if pa.types.is_large_string(chunk.type) else 4),
    ) if n else np.zeros(1, dtype=np.int32)
    valid = chunk.is_valid().to_numpy(zero_copy_only=False) if chunk.null_count else np.ones(n, dtype=bool)
    lengths = np.diff(offsets)
    width = int(lengths[valid][0]) if valid.any() else 0
    if (lengths != np.where(valid, width, 0)).any():
        return None
    data = chunk.buffers()[2]
    if data is None or not width:
        return valid, np.zeros((int(valid.sum()), width), dtype=np.uint8)
    values = np.frombuffer(data, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
    return valid, values.reshape(-1, width)



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
