"""Streaming Parquet shard writer: bounded memory, HF-compatible names and schema metadata."""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from covid_cxr_unified.harmonize.features import FEATURES

DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
# A row group closes at whichever comes first: 100 rows with an image (readers and the Hub's viewer
# page image datasets by row group), 16 MiB of image bytes (two full-size 16-bit PNGs: the writer, the
# router and the card's sampler each hold a few row groups, so this bounds their memory), or 500 rows
# (metadata-only rows of 2-5 KB: ~2 MB per open row group, a few per writer; each row group costs a
# fixed ~3 ms of encoding, so much smaller ones would dominate).
ROW_GROUP_ROWS = 500
ROW_GROUP_IMAGE_ROWS = 100
ROW_GROUP_IMAGE_BYTES = 16 * 1024 * 1024
# A shard also closes at 64 row groups (6,400 small images, 32,000 metadata-only rows): an open
# writer holds ~75 KB of footer per row group, and serializing it at close takes as much again, so a
# shard of small images that the byte limit alone would close only after hundreds of row groups
# cost tens of MB. Readers decode the whole footer on opening a shard, too.
MAX_SHARD_ROW_GROUPS = 64
# Image bytes are PNG/JPEG, already compressed: stored as they are, without dictionary or statistics
# (zstd, dictionaries and min/max over megabyte blobs cost CPU and gain nothing).
_STORED_AS_IS = frozenset({"image.bytes"})
# Nor min/max statistics of JSON and mask run lengths: no reader filters on them, and a row group's min
# and max of the source rows alone cost ~4 KB of footer, which the writer holds until the shard closes.
_NO_STATISTICS = frozenset({"raw", "provenance", "merged_from", "masks.list.element.counts"})


@functools.cache
def _leaf_columns() -> tuple[str, ...]:
    buffer = io.BytesIO()
    pq.write_table(FEATURES.arrow_schema.empty_table(), buffer)
    schema = pq.ParquetFile(io.BytesIO(buffer.getvalue())).schema
    return tuple(schema.column(i).path for i in range(len(schema)))


def writer_options(spool: bool = False) -> dict[str, Any]:
    """Parquet writer settings: zstd except for image bytes; a spool (read once, then deleted) is
    written uncompressed."""
    if spool:
        return {"compression": "none", "use_dictionary": False, "write_statistics": False}
    columns = [c for c in _leaf_columns() if c not in _STORED_AS_IS]
    return {
        "compression": {c: "zstd" if c in columns else "none" for c in _leaf_columns()},
        "use_dictionary": columns,
        "write_statistics": [c for c in columns if c not in _NO_STATISTICS],
    }


@dataclass(frozen=True)
class _Size:
    """What a row group holds so far."""

    rows: int = 0
    image_rows: int = 0
    image_bytes: int = 0

    def __add__(self, other: _Size) -> _Size:
        return _Size(self.rows + other.rows, self.image_rows + other.image_rows, self.image_bytes + other.image_bytes)

    def full(self) -> bool:
        return (
            self.rows >= ROW_GROUP_ROWS
            or self.image_rows >= ROW_GROUP_IMAGE_ROWS
            or self.image_bytes >= ROW_GROUP_IMAGE_BYTES
        )


def row_image_bytes(row: dict[str, Any]) -> int:
    """The image bytes of a row as `record_to_row` makes it, -1 when it has none."""
    image = row.get("image")
    return len(image["bytes"]) if image and image["bytes"] is not None else -1


class _Cutter:
    """Where row groups and shards close, from the image bytes of each row alone: the writer's rules,
    also used to plan shards before they are written (`shard_rows`)."""

    def __init__(self, max_shard_bytes: int, max_row_groups: int) -> None:
        self.max_shard_bytes = max_shard_bytes
        self.max_row_groups = max_row_groups
        self.group = _Size()
        self.shard_bytes = 0
        self.shard_groups = 0

    def rows_until_full(self, has_image: np.ndarray, image_bytes: np.ndarray) -> int:
        """How many of these rows go in before the row group or the shard is full (the row that fills
        it included), or all of them."""
        full = (
            (self.group.rows + np.arange(1, len(has_image) + 1) >= ROW_GROUP_ROWS)
            | (self.group.image_rows + np.cumsum(has_image) >= ROW_GROUP_IMAGE_ROWS)
            | (self.group.image_bytes + np.cumsum(image_bytes) >= ROW_GROUP_IMAGE_BYTES)
            | (self.shard_bytes + np.cumsum(image_bytes) >= self.max_shard_bytes)
        )
        return int(np.argmax(full)) + 1 if full.any() else len(has_image)

    def add(self, size: _Size) -> tuple[bool, bool]:
        """Count rows in: (whether the row group closes, whether the shard closes)."""
        self.group += size
        self.shard_bytes += size.image_bytes
        close_group = self.group.full() or self.shard_bytes >= self.max_shard_bytes
        if close_group:
            self.group = _Size()
            self.shard_groups += 1
        close_shard = self.shard_bytes >= self.max_shard_bytes or self.shard_groups >= self.max_row_groups
        if close_shard:
            self.shard_bytes = self.shard_groups = 0
        return close_group, close_shard


def shard_rows(
    image_bytes: np.ndarray, max_shard_bytes: int = DEFAULT_SHARD_BYTES, max_row_groups: int = MAX_SHARD_ROW_GROUPS
) -> list[int]:
    """The rows of each shard that a ShardWriter writes for rows with these image bytes (-1: none)."""
    cutter = _Cutter(max_shard_bytes, max_row_groups)
    has_image, sizes = image_bytes >= 0, np.maximum(image_bytes, 0)
    counts, start, first = [], 0, 0
    while start < len(sizes):
        window = slice(start, start + ROW_GROUP_ROWS)  # no row group holds more rows
        stop = start + cutter.rows_until_full(has_image[window], sizes[window])
        size = _Size(stop - start, int(has_image[start:stop].sum()), int(sizes[start:stop].sum()))
        if cutter.add(size)[1]:
            counts.append(stop - first)
            first = stop
        start = stop
    if first < len(sizes):
        counts.append(len(sizes) - first)
    return counts


class ShardWriter:
    """Writes `<prefix>-XXXXX-of-NNNNN.parquet` shards of at most ~`max_shard_bytes` image bytes and
    `max_row_groups` row groups.

    Rows are buffered up to one row group (see ROW_GROUP_*); a shard is closed when its payload
    passes the byte limit or it holds `max_row_groups` row groups. Shard names get their final `-of-N`
    only at `close()`, when N is known.
    """

    def __init__(
        self,
        folder: Path,
        prefix: str,
        max_shard_bytes: int = DEFAULT_SHARD_BYTES,
        *,
        max_row_groups: int = MAX_SHARD_ROW_GROUPS,
        spool: bool = False,
    ) -> None:
        self.folder = folder
        self._options = writer_options(spool)
        self.prefix = prefix
        self._cutter = _Cutter(max_shard_bytes, max_row_groups)
        self.rows = 0
        self._schema: pa.Schema = FEATURES.arrow_schema
        self._rows: list[dict[str, Any]] = []  # rows from `write`, not yet a table
        self._tables: list[pa.Table] = []  # the row group being gathered
        self._writer: pq.ParquetWriter | None = None
        self._paths: list[Path] = []
        # A shard's sha256 is taken as it closes, while its bytes are still in the page cache (the
        # Croissant file lists them); spools need none.
        self._hash = not spool
        self._digests: list[str] = []
        self.sha256: dict[Path, str] = {}  # final shard path -> sha256 of its bytes, set by `close()`

    @classmethod
    def one_file(cls, folder: Path, prefix: str, *, spool: bool = False) -> ShardWriter:
        """A writer of a single shard, however large (a unit's spool, a planned shard): no shard limits."""
        return cls(folder, prefix, 2**62, max_row_groups=2**62, spool=spool)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as `record_to_row` makes it: already in FEATURES' Arrow form (image as
        {bytes, path}, class labels as ints, JSON as text), so `datasets`' per-row encoding is skipped."""
        self._rows.append(row)
        size = row_image_bytes(row)
        self._added(_Size(1, int(size >= 0), max(size, 0)))

    def write_table(self, table: pa.Table) -> None:
        """Append rows that are already encoded with FEATURES (e.g. read back from a spool shard); row
        groups and shards close exactly where `write`, row by row, would close them."""
        lengths = pc.binary_length(pc.struct_field(table.column("image"), "bytes"))
        has_image = lengths.is_valid().to_numpy(zero_copy_only=False)
        image_bytes = lengths.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        start = 0
        while start < table.num_rows:
            stop = start + self._cutter.rows_until_full(has_image[start:], image_bytes[start:])
            self._take_rows()
            self._tables.append(table.slice(start, stop - start).cast(self._schema))
            size = _Size(stop - start, int(has_image[start:stop].sum()), int(image_bytes[start:stop].sum()))
            self._added(size)
            start = stop

    def _added(self, size: _Size) -> None:
        self.rows += size.rows
        close_group, close_shard = self._cutter.add(size)
        if close_group:
            self._flush()
        if close_shard:
            self._close_shard()

    def _take_rows(self) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def _shard_writer(self) -> pq.ParquetWriter:
        """The open shard, opening the next one if none is open."""
        if self._writer is None:
            path = self.folder / f"{self.prefix}-{len(self._paths):05d}.parquet.partial"
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self._schema, **self._options)
            self._paths.append(path)
        return self._writer

    def _flush(self) -> None:
        self._take_rows()
        if self._tables:
            group = pa.concat_tables(self._tables)
            self._shard_writer().write_table(group, row_group_size=max(group.num_rows, 1))
        self._tables = []

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if self._hash:
                self._digests.append(sha256_file(self._paths[-1]))

    def close(self) -> list[Path]:
        """Finish and rename the shards. An empty split gets none: `datasets` cannot read an empty
        Parquet shard, so the card declares only splits that have rows."""
        self._flush()
        self._close_shard()
        total = len(self._paths)
        final = []
        for index, partial in enumerate(self._paths):
            path = self.folder / f"{self.prefix}-{index:05d}-of-{total:05d}.parquet"
            partial.rename(path)
            final.append(path)
        if self._hash:
            self.sha256 = dict(zip(final, self._digests, strict=True))
        return final


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read a chunk at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
