"""Determinism: builds are byte-identical whatever the number of processes; the fingerprint is a
content hash of the inputs and the code version (not of paths, file times or scheduling)."""

from __future__ import annotations

import json
import os
import shutil
from array import array
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from treedigest import tree_digest

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter, AdapterReport
from covid_cxr_unified.harmonize import build as build_module
from covid_cxr_unified.harmonize.build import BuildOptions, BuildResult, SourceSpec, build
from covid_cxr_unified.harmonize.shards import ShardWriter
from covid_cxr_unified.harmonize.synthetic.bimcv import write_bimcv
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[SourceSpec]:
    monkeypatch.setattr(Adapter, "unit_items", 4)
    ieee = write_ieee8023(tmp_path / "src" / "ieee8023", seed=4, patients=16).root
    bimcv = write_bimcv(tmp_path / "src" / "bimcv", seed=4, archives=True).root
    return [SourceSpec(Source.IEEE8023, ieee), SourceSpec(Source.BIMCV, bimcv)]


def _build(specs: list[SourceSpec], out: Path, **options: object) -> BuildResult:
    return build(specs, BuildOptions(out=out, progress=False, **options))  # type: ignore[arg-type]


def test_builds_with_1_and_2_processes_are_byte_identical(sources: list[SourceSpec], tmp_path: Path) -> None:
    one = _build(sources, tmp_path / "one")
    two = _build(sources, tmp_path / "two", num_proc=2)
    assert one.units.processed > 4
    assert tree_digest(tmp_path / "one") == tree_digest(tmp_path / "two")
    assert one.fingerprint == two.fingerprint
    card = (tmp_path / "one" / "README.md").read_text()
    assert f"build_fingerprint: {one.fingerprint}" in card
    assert json.loads((tmp_path / "one" / "build_report.json").read_text())["fingerprint"] == one.fingerprint


def test_source_shards_are_those_one_writer_per_split_writes(sources: list[SourceSpec], tmp_path: Path) -> None:
    """Pass 3 plans each source config's shards from the records' image bytes and writes them one by
    one, in any process: the files must be those of one ShardWriter fed the whole split."""
    limit = 5_000
    result = _build(sources, tmp_path / "out", num_proc=2, max_shard_bytes=limit)
    several = 0
    for config in (c for c in result.configs if c.name != "all"):
        for split, shards in config.shards.items():
            paths = [tmp_path / "out" / shard for shard in shards]
            several += len(paths) > 2
            writer = ShardWriter(tmp_path / "again" / config.name, split, limit)
            for path in paths:
                writer.write_table(pq.read_table(path))
            again = writer.close()
            assert [p.name for p in again] == [p.name for p in paths]
            assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    assert several


def test_each_stretch_holds_one_train_shard_and_every_record_is_in_one_stretch() -> None:
    spooled = build_module._Spooled("bimcv", AdapterReport("bimcv"), rows=9, image_bytes=array("q", [5] * 9))
    options = BuildOptions(out=Path("unused"), max_shard_bytes=10)  # two 5-byte images fill a shard
    split = np.asarray([1, 0, 2, 0, 0, 1, 0, 2, 2], dtype=np.int8)  # train (0): records 1, 3, 4, 6
    stretches = build_module._stretches(spooled, split, options)
    assert [(s.first, s.stop, s.index, s.train_shards) for s in stretches] == [(0, 4, 0, 2), (4, 9, 1, 2)]
    no_train = build_module._stretches(spooled, np.ones(9, dtype=np.int8), options)
    assert [(s.first, s.stop, s.train_shards) for s in no_train] == [(0, 9, 0)]


def test_fingerprint_ignores_paths_and_file_times(sources: list[SourceSpec], tmp_path: Path) -> None:
    first = _build(sources, tmp_path / "first")
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "src", moved)
    for path in moved.rglob("*"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    specs = [
        SourceSpec(Source.IEEE8023, moved / "ieee8023"),
        SourceSpec(Source.BIMCV, moved / "bimcv"),
    ]
    second = _build(specs, tmp_path / "second")
    assert second.fingerprint == first.fingerprint
    assert tree_digest(tmp_path / "first") == tree_digest(tmp_path / "second")


def test_fingerprint_follows_image_bytes_and_tables(sources: list[SourceSpec], tmp_path: Path) -> None:
    base = _build(sources, tmp_path / "base").fingerprint
    ieee = sources[0].path
    image = sorted((ieee / "images").glob("*.png"))[0]
    original = image.read_bytes()
    image.write_bytes(original + b"\0")  # same pixels, other bytes (PNG ignores trailing data)
    assert _build(sources, tmp_path / "image").fingerprint != base
    image.write_bytes(original)
    assert _build(sources, tmp_path / "restored").fingerprint == base
    metadata = ieee / "metadata.csv"
    metadata.write_bytes(metadata.read_bytes() + b"\n")
    assert _build(sources, tmp_path / "table").fingerprint != base


def test_fingerprint_follows_the_code_version(
    sources: list[SourceSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _build(sources, tmp_path / "before").fingerprint
    monkeypatch.setattr(build_module, "code_version", lambda: "0.0.0+other")
    assert _build(sources, tmp_path / "after").fingerprint != before


@pytest.mark.parametrize("name", ["export.zip", ".export.zip", "metadata.png"])
def test_a_source_given_as_one_file_is_hashed_whatever_its_name(tmp_path: Path, name: str) -> None:
    export = tmp_path / name
    export.write_bytes(b"first")
    adapter = adapter_class("v7_darwin")(export)
    before = adapter.source_checksum()
    export.write_bytes(b"second")
    assert adapter.source_checksum() != before


def test_a_source_folder_is_hashed_without_its_images_and_hidden_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / ".cache").mkdir()
    (tmp_path / "image-1.json").write_text("a\n")  # a Darwin JSON folder: the base adapter's checksum
    adapter = adapter_class("v7_darwin")(tmp_path)
    before = adapter.source_checksum()
    (tmp_path / "images" / "x.png").write_bytes(b"new")
    (tmp_path / ".cache" / "x.json").write_bytes(b"new")
    assert adapter.source_checksum() == before
    (tmp_path / "image-1.json").write_text("b\n")
    assert adapter.source_checksum() != before
