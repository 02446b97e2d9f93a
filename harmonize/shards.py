"""Streaming Parquet shard writer: bounded memory, HF-compatible names and schema metadata."""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from covid_cxr_unified.harmonize.features import FEATURES

DEFAULT_SHARD_BYTES = 256 * 1024 * 1024
_ROW_GROUP_ROWS = 100
# Image bytes are PNG/JPEG, already compressed: stored as they are, without dictionary or statistics
# (zstd, dictionaries and min/max over megabyte blobs cost CPU and gain nothing).
_STORED_AS_IS = frozenset({"image.bytes"})


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
        "write_statistics": columns,
    }


class ShardWriter:
    """Writes `<prefix>-XXXXX-of-NNNNN.parquet` shards of at most ~`max_shard_bytes` image bytes.

    Rows are buffered per row group; a shard is closed when its payload passes the limit. Shard
    names get their final `-of-N` only at `close()`, when N is known.
    """

    def __init__(
        self, folder: Path, prefix: str, max_shard_bytes: int = DEFAULT_SHARD_BYTES, *, spool: bool = False
    ) -> None:
        self.folder = folder
        self._options = writer_options(spool)
        self.prefix = prefix
        self.max_shard_bytes = max_shard_bytes
        self.rows = 0
        self._schema: pa.Schema = FEATURES.arrow_schema
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._shard_bytes = 0
        self._paths: list[Path] = []

    def write(self, row: dict[str, Any]) -> None:
        """Append one row as `record_to_row` makes it: already in FEATURES' Arrow form (image as
        {bytes, path}, class labels as ints, JSON as text), so `datasets`' per-row encoding is skipped."""
        self._buffer.append(row)
        image = row.get("image")
        self._shard_bytes += len(image["bytes"]) if image else 0
        self.rows += 1
        if len(self._buffer) >= _ROW_GROUP_ROWS:
            self._flush()
        if self._shard_bytes >= self.max_shard_bytes:
            self._flush()
            self._close_shard()

    def write_table(self, table: pa.Table) -> None:
        """Append rows that are already encoded with FEATURES (e.g. read back from a spool shard)."""
        if table.num_rows == 0:
            return
        self._flush()
        self._shard_writer().write_table(table.cast(self._schema))
        self.rows += table.num_rows
        image_bytes = pc.binary_length(pc.struct_field(table.column("image"), "bytes"))
        self._shard_bytes += pc.sum(image_bytes).as_py() or 0  # without copying the bytes into Python
        if self._shard_bytes >= self.max_shard_bytes:
            self._close_shard()

    def _shard_writer(self) -> pq.ParquetWriter:
        """The open shard, opening the next one if none is open."""
        if self._writer is None:
            path = self.folder / f"{self.prefix}-{len(self._paths):05d}.parquet.partial"
            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(path, self._schema, **self._options)
            self._paths.append(path)
        return self._writer

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._shard_writer().write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
        self._buffer = []

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._shard_bytes = 0

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
        return final


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
