"""The Croissant JSON-LD file of a build: structure, every shard with its sha256, determinism."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from covid_cxr_unified.harmonize import croissant
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.croissant import (
    CONFORMS_TO,
    CONTEXT,
    croissant_jsonld,
    croissant_text,
    write_croissant,
)
from covid_cxr_unified.harmonize.data_files import build_data_files, card_data_files
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.harmonize.synthetic.v7_darwin import write_v7_darwin
from covid_cxr_unified.schema.vocab import Source


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_ieee8023(tmp_path / "src", seed=7, patients=40).root


def _build(source: Path, out: Path) -> Path:
    build([SourceSpec(Source.IEEE8023, source)], BuildOptions(out=out, progress=False))
    return out


def _shards(out: Path) -> list[Path]:
    return sorted((out / "data").rglob("*.parquet"))


def _by_type(document: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [d for d in document["distribution"] if d["@type"] == kind]


def test_document_describes_the_build(source: Path, tmp_path: Path) -> None:
    out = _build(source, tmp_path / "out")
    document = croissant_jsonld(out, url="https://huggingface.co/datasets/org/covid_cxr_unified")
    assert document["@context"] == CONTEXT
    for term in ("cr", "sc", "dct", "citeAs", "recordSet", "field", "fileSet", "includes", "extract", "source"):
        assert term in document["@context"]
    assert document["@type"] == "sc:Dataset" and document["conformsTo"] == CONFORMS_TO
    for key in ("name", "description", "license", "url", "version", "citeAs", "distribution", "recordSet"):
        assert document[key], key
    assert "cohen2020covid" in document["citeAs"]  # the ieee8023 BibTeX
    report = json.loads((out / "build_report.json").read_text())
    assert document["identifier"] == report["fingerprint"]

    files = _by_type(document, "cr:FileObject")
    shards = _shards(out)
    files.sort(key=lambda f: f["contentUrl"])
    assert [f["contentUrl"] for f in files] == [p.relative_to(out).as_posix() for p in shards]
    for entry, path in zip(files, shards, strict=True):
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["contentSize"] == f"{path.stat().st_size} B"
        assert entry["encodingFormat"] == "application/x-parquet"
    card = card_data_files(out)
    assert card is not None and set(card) == set(report["configs"])
    filesets = {f["@id"]: f for f in _by_type(document, "cr:FileSet")}
    assert set(filesets) == {f"parquet-files-for-config-{config}" for config in card}
    for config, per_split in card.items():
        fileset = filesets[f"parquet-files-for-config-{config}"]
        assert fileset["encodingFormat"] == "application/x-parquet"
        listed = [p.relative_to(out).as_posix() for p in shards]
        expected = [
            path for split in SPLITS for pattern in per_split.get(split, []) for path in fnmatch.filter(listed, pattern)
        ]
        assert fileset["includes"] == expected and expected
        assert set(expected) <= {f["contentUrl"] for f in files}


def test_a_config_may_include_another_configs_shards(source: Path, tmp_path: Path) -> None:
    out = _build(source, tmp_path / "out")
    shared = {split: [f"data/ieee8023/{split}-*.parquet"] for split in SPLITS}
    document = croissant_jsonld(out, data_files={"ieee8023": shared, "everything": shared})
    files = _by_type(document, "cr:FileObject")
    assert len(files) == len({f["@id"] for f in files}) == len(_shards(out))  # each shard once
    filesets = {f["@id"]: f["includes"] for f in _by_type(document, "cr:FileSet")}
    assert filesets["parquet-files-for-config-everything"] == filesets["parquet-files-for-config-ieee8023"]
    assert [r["@id"] for r in document["recordSet"]] == ["splits", "ieee8023", "everything"]


def test_record_sets_name_real_columns_and_resolve(source: Path, tmp_path: Path) -> None:
    out = _build(source, tmp_path / "out")
    document = croissant_jsonld(out)
    ids = [d["@id"] for d in document["distribution"]]
    splits_set, *config_sets = document["recordSet"]
    (config_set,) = [r for r in config_sets if r["@id"] == "ieee8023"]
    assert splits_set["dataType"] == "cr:Split"
    assert [row["splits/name"] for row in splits_set["data"]] == [
        s for s in SPLITS if any(p.name.startswith(f"{s}-") for p in _shards(out))
    ]
    assert config_set["@id"] == "ieee8023" and config_set["key"] == {"@id": "ieee8023/record_id"}
    fields = {f["name"]: f for f in config_set["field"]}
    columns = set(pq.read_schema(_shards(out)[0]).names)
    field_ids = [f["@id"] for s in document["recordSet"] for f in s["field"]]
    field_ids += [sub["@id"] for s in document["recordSet"] for f in s["field"] for sub in f.get("subField", [])]
    assert len(field_ids) == len(set(field_ids)) == len(set(field_ids) | set(ids)) - len(ids)
    for name, field in fields.items():
        assert field["@type"] == "cr:Field"
        if name == "split":
            continue
        assert name in columns
        for leaf in field.get("subField", [field]):
            assert leaf["dataType"].startswith("sc:")
            assert leaf["source"]["fileSet"]["@id"] in ids
            assert leaf["source"]["extract"] == {"column": name}
    for name, data_type in {
        "record_id": "sc:Text",
        "age_years": "sc:Float",
        "bits_stored": "sc:Integer",
        "image": "sc:ImageObject",
        "view": "sc:Integer",
        "covid19": "sc:Integer",
        "license_research": "sc:Boolean",
    }.items():
        assert fields[name]["dataType"] == data_type, name
    assert fields["image"]["source"]["transform"] == {"jsonPath": "bytes"}
    assert "0 = PA" in fields["view"]["description"] and "1 = negative" in fields["covid19"]["description"]
    masks = fields["masks"]
    assert masks["repeated"] is True and "dataType" not in masks
    assert {f["name"]: f["dataType"] for f in masks["subField"]} == {
        "label": "sc:Text",
        "finding": "sc:Text",
        "counts": "sc:Text",
        "area": "sc:Integer",
        "annotation_source": "sc:Text",
        "annotation_id": "sc:Text",
        "annotation_license_id": "sc:Text",
        "annotation_attribution": "sc:Text",
    }
    assert all(f["source"]["extract"] == {"column": "masks"} for f in masks["subField"])
    assert "size, bbox" in masks["description"]  # fixed-length list members are named, not typed
    assert fields["view_disagreements"]["repeated"] is True and fields["view_disagreements"]["dataType"] == "sc:Text"
    split = fields["split"]
    assert split["references"] == {"field": {"@id": "splits/name"}}
    pattern = re.compile(split["source"]["transform"]["regex"])
    for path in _shards(out):
        match = pattern.match(str(path))
        assert match and match.group(1) == path.name.split("-")[0]


def test_a_build_lists_each_shards_sha256_as_written_without_reading_it_again(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_again(path: Path) -> str:
        raise AssertionError(f"{path} was read again to hash it")

    monkeypatch.setattr(croissant, "sha256_file", read_again)
    v7 = write_v7_darwin(tmp_path / "v7", source, seed=7)
    out = tmp_path / "out"
    specs = [SourceSpec(Source.IEEE8023, source), SourceSpec(Source.V7_DARWIN, v7.coco_json)]
    build(specs, BuildOptions(out=out, progress=False))
    files = _by_type(json.loads((out / "croissant.json").read_text(encoding="utf-8")), "cr:FileObject")
    shards = _shards(out)
    assert any("/all/" in path.as_posix() for path in shards)  # the all config's own shards too
    assert {f["contentUrl"]: f["sha256"] for f in files} == {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest() for path in shards
    }


def test_file_is_deterministic_and_valid_json(source: Path, tmp_path: Path) -> None:
    first = write_croissant(_build(source, tmp_path / "a"))
    second = write_croissant(_build(source, tmp_path / "b"))
    assert first.name == "croissant.json"
    assert first.read_bytes() == second.read_bytes()
    document = json.loads(first.read_text(encoding="utf-8"))
    assert croissant_text(document) == first.read_text(encoding="utf-8")
    assert list(document)[:5] == ["@context", "@type", "name", "description", "conformsTo"]


def test_mlcroissant_reads_every_record_and_mask(source: Path, tmp_path: Path) -> None:
    """Optional: when mlcroissant is installed, it must load the file and find every row and mask."""
    mlc = pytest.importorskip("mlcroissant")
    v7 = write_v7_darwin(tmp_path / "v7", source, seed=7)
    out = tmp_path / "out"
    specs = [SourceSpec(Source.IEEE8023, source), SourceSpec(Source.V7_DARWIN, v7.coco_json)]
    build(specs, BuildOptions(out=out, progress=False))
    dataset = mlc.Dataset(jsonld=str(write_croissant(out)))
    expected = json.loads((out / "build_report.json").read_text())["configs"]
    card = card_data_files(out)
    assert card is not None and {"ieee8023", "v7_darwin", "all"} <= set(card)
    masks_seen: Counter[str] = Counter()
    for config in card:
        splits: Counter[str] = Counter()
        labels: Counter[str] = Counter()
        for record in dataset.records(record_set=config):
            splits[_text(record[f"{config}/split"])] += 1
            labels.update(_text(m[f"{config}/masks/label"]) for m in record[f"{config}/masks"])
        assert splits == {s: n for s, n in expected[config].items() if n}
        stored = Counter(
            m["label"]
            for p in {p for paths in build_data_files(out)[config].values() for p in paths}
            for row in pq.read_table(p, columns=["masks"]).column("masks").to_pylist()
            for m in row
        )
        assert labels == stored
        masks_seen.update(labels)
    assert masks_seen["lung"] > 0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
