"""ShardWriter: row groups and shards close at the documented limits, whether rows come one by one
or as Arrow tables read back from a spool."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covid_cxr_unified.harmonize import shards
from covid_cxr_unified.harmonize.features import FEATURES
from covid_cxr_unified.harmonize.shards import ShardWriter


def _rows(n: int, image_size: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        size = image_size(i)
        image = None if size is None else {"bytes": bytes([i % 256]) * size, "path": None}
        rows.append({"record_id": f"t:{i:06d}", "source": "ieee8023", "image": image})
    return rows


def _row_groups(paths: list[Path]) -> list[list[int]]:
    return [[pq.ParquetFile(p).metadata.row_group(g).num_rows for g in range(pq.ParquetFile(p).num_row_groups)]
            for p in paths]


def _image_bytes(path: Path) -> int:
    images = pq.read_table(path, columns=["image"]).column("image").to_pylist()
    return sum(len(image["bytes"]) for image in images if image is not None)


def _write_rows(folder: Path, rows: list[dict[str, Any]], max_shard_bytes: int = 2**40) -> list[Path]:
    writer = ShardWriter(folder, "train", max_shard_bytes)
    for row in rows:
        writer.write(row)
    return writer.close()


def test_metadata_rows_fill_large_row_groups(tmp_path: Path) -> None:
    paths = _write_rows(tmp_path, _rows(2 * shards.ROW_GROUP_ROWS + 7, lambda i: None))
    assert _row_groups(paths) == [[shards.ROW_GROUP_ROWS, shards.ROW_GROUP_ROWS, 7]]
    assert pq.read_table(paths[0]).num_rows == 2 * shards.ROW_GROUP_ROWS + 7


def test_rows_with_images_close_a_row_group_at_100_rows_or_at_the_byte_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write_rows(tmp_path / "a", _rows(250, lambda i: 10))
    assert _row_groups(paths) == [[100, 100, 50]]
    monkeypatch.setattr(shards, "ROW_GROUP_IMAGE_BYTES", 95)
    paths = _write_rows(tmp_path / "b", _rows(25, lambda i: 10))
    assert _row_groups(paths) == [[10, 10, 5]]


def test_a_shard_closes_at_its_row_group_limit(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "train", max_row_groups=2)
    for row in _rows(5 * shards.ROW_GROUP_IMAGE_ROWS + 3, lambda i: 10):
        writer.write(row)
    paths = writer.close()
    assert [p.name for p in paths] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert _row_groups(paths) == [[100, 100], [100, 100], [100, 3]]


def test_tables_are_cut_exactly_where_single_rows_would_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shards, "ROW_GROUP_IMAGE_ROWS", 20)  # so that both shard limits are reached
    chooser = random.Random(7)
    sizes = [None if chooser.random() < 0.3 else chooser.randint(1, 60) for _ in range(700)]
    rows = _rows(len(sizes), lambda i: sizes[i])
    writer = ShardWriter(tmp_path / "rows", "train", 1_800, max_row_groups=3)
    for row in rows:
        writer.write(row)
    one_by_one = writer.close()
    assert len(one_by_one) > 5  # the shard limits were reached several times
    payloads = [_image_bytes(p) for p in one_by_one[:-1]]
    assert min(payloads) < 1_800 <= max(payloads)  # shards closed by each limit
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    writer = ShardWriter(tmp_path / "tables", "train", 1_800, max_row_groups=3)
    start = 0
    while start < table.num_rows:
        step = chooser.randint(1, 150)
        writer.write_table(table.slice(start, step))
        start += step
    from_tables = writer.close()
    assert writer.rows == len(rows)
    assert [p.name for p in from_tables] == [p.name for p in one_by_one]
    assert [p.read_bytes() for p in from_tables] == [p.read_bytes() for p in one_by_one]
    planned = shards.shard_rows(np.asarray([-1 if size is None else size for size in sizes]), 1_800, 3)
    assert planned == [pq.ParquetFile(p).metadata.num_rows for p in one_by_one]


def test_planned_shards_follow_the_default_limits() -> None:
    many = np.full(2 * 64 * shards.ROW_GROUP_IMAGE_ROWS + 5, 10)  # small images: 64 row groups a shard
    assert shards.shard_rows(many) == [6_400, 6_400, 5]
    large = np.full(40, 10 * 1024 * 1024)  # 10 MB images: 26 fill 256 MB
    assert shards.shard_rows(large) == [26, 14]
    assert shards.shard_rows(np.full(1_200, -1)) == [1_200] and shards.shard_rows(np.empty(0, dtype=np.int64)) == []


def test_footers_keep_statistics_of_filterable_columns_only(tmp_path: Path) -> None:
    rows = [{**row, "raw": '{"a": 1}', "provenance": "{}", "license_id": "CC-BY-4.0"} for row in _rows(3, lambda i: 5)]
    (path,) = _write_rows(tmp_path, rows)
    group = pq.ParquetFile(path).metadata.row_group(0)
    with_statistics = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if group.column(i).statistics is not None and group.column(i).statistics.has_min_max
    }
    assert {"record_id", "source", "license_id"} <= with_statistics
    assert not with_statistics & {"raw", "provenance", "image.bytes"}
    assert set(shards._leaf_columns()) >= shards._NO_STATISTICS  # every name is a real column
