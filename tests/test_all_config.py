"""The `all` config, cross-source groups and the stability of assignments."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from datasets import concatenate_datasets, load_dataset
from PIL import Image
from treedigest import tree_digest

from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.guards import verify_splits
from covid_cxr_unified.harmonize.synthetic import write_demo_sources
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.harmonize.synthetic.v7_darwin import write_v7_darwin
from covid_cxr_unified.schema.vocab import Source


def _rows(folder: Path, config: str) -> list[dict]:  # type: ignore[type-arg]
    return list(concatenate_datasets(list(load_dataset(str(folder), config).values())))


def _manifest(folder: Path) -> dict[str, str]:
    lines = (folder / "splits" / "groups.jsonl").read_text().splitlines()
    return {patient: m["split"] for m in map(json.loads, lines) for patient in m["patients"]}


def test_all_config_merges_v7_into_ieee8023(demo_build: Path) -> None:
    ieee, v7, bimcv = (_rows(demo_build, c) for c in ("ieee8023", "v7_darwin", "bimcv"))
    everything = _rows(demo_build, "all")
    ieee_ids = {r["record_id"] for r in ieee}
    merged_v7 = {
        r["record_id"]
        for r in v7
        if any(lk["record_id"] in ieee_ids for lk in r["links"] if lk["relation"] == "same_image")
    }
    assert merged_v7
    assert len(everything) == len(ieee) + len(v7) + len(bimcv) - len(merged_v7)
    sources = {r["source"] for r in everything}
    assert {"ieee8023", "bimcv"} <= sources <= {"ieee8023", "v7_darwin", "bimcv"}
    assert ("v7_darwin" in sources) == (len(merged_v7) < len(v7))
    by_id = {r["record_id"]: r for r in everything}
    assert not merged_v7 & set(by_id)
    for v7_row in (r for r in v7 if r["record_id"] in merged_v7):
        target = next(lk["record_id"] for lk in v7_row["links"] if lk["record_id"] in ieee_ids)
        merged = by_id[target]
        assert v7_row["record_id"] in [m["record_id"] for m in merged["merged_from"]]
        assert {m["counts"] for m in v7_row["masks"]} <= {m["counts"] for m in merged["masks"]}
        assert merged["license_id"] == next(r for r in ieee if r["record_id"] == target)["license_id"]
    loso = [r for r in everything if r["source"] != "bimcv"]
    assert loso and all(r["source"] in ("ieee8023", "v7_darwin") for r in loso)


def test_configs_agree_on_splits(demo_build: Path) -> None:
    split_of = _manifest(demo_build)
    for config in ("ieee8023", "v7_darwin", "bimcv", "all"):
        for split, ds in load_dataset(str(demo_build), config).items():
            assert {split_of[p] for p in ds["patient_id"]} == {split}, config


def _add_resized_copy(root: Path, source_file: str, new_patient: str) -> str:
    """Append a row for another patient whose image is a resized JPEG re-encode of `source_file`."""
    copy_name = f"copy-of-{Path(source_file).stem}.jpg"
    with Image.open(root / "images" / source_file) as img:
        buffer = io.BytesIO()
        img.resize((img.width * 3 // 2, img.height * 3 // 2)).convert("RGB").save(buffer, format="JPEG", quality=70)
    (root / "images" / copy_name).write_bytes(buffer.getvalue())
    metadata = root / "metadata.csv"
    with metadata.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    original = next(r for r in rows[1:] if r[header.index("filename")] == source_file)
    copy = list(original)
    copy[header.index("patientid")], copy[header.index("filename")] = new_patient, copy_name
    with metadata.open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerow(copy)
    return copy_name


def test_cross_source_patient_and_resized_copy_share_a_split(tmp_path: Path) -> None:
    ieee = write_ieee8023(tmp_path / "ieee8023", seed=7)
    v7 = write_v7_darwin(tmp_path / "v7", ieee.root, seed=7)
    _add_resized_copy(ieee.root, "syn-101-0.jpeg", "999")
    out = tmp_path / "out"
    specs = [SourceSpec(Source.IEEE8023, ieee.root), SourceSpec(Source.V7_DARWIN, v7.coco_zip, v7.images_dir)]
    build(specs, BuildOptions(out=out, progress=False))
    report = json.loads((out / "build_report.json").read_text())
    assert report["groups"]["merges"]["near-duplicate picture"] >= 1
    assert report["groups"]["merges"]["cross-source link"] >= 1
    split_of = _manifest(out)
    assert split_of["ieee8023:999"] == split_of["ieee8023:101"]
    v7_patients = [p for p in split_of if p.startswith("v7_darwin:")]
    assert v7_patients and all(split_of[p] == split_of[p.replace("v7_darwin:", "ieee8023:")] for p in v7_patients)
    assert report["guard"]["ok"] and verify_splits(out).ok


def test_adding_unrelated_patients_moves_no_assignment(tmp_path: Path) -> None:
    small = write_ieee8023(tmp_path / "small", seed=9, patients=30).root
    large = write_ieee8023(tmp_path / "large", seed=9, patients=90).root
    for root, out in ((small, "a"), (large, "b")):
        build([SourceSpec(Source.IEEE8023, root)], BuildOptions(out=tmp_path / out, progress=False))
    before, after = _manifest(tmp_path / "a"), _manifest(tmp_path / "b")
    shared = [p for p in before if p.split(":")[1].rstrip("b").isdigit() and int(p.split(":")[1].rstrip("b")) < 130]
    assert len(shared) == 30
    assert {p: before[p] for p in shared} == {p: after[p] for p in shared}
    assert len(after) > len(before)


def test_multi_source_builds_are_byte_identical(tmp_path: Path) -> None:
    specs = write_demo_sources(tmp_path / "sources", seed=1)
    trees = []
    for name in ("a", "b"):
        build(specs, BuildOptions(out=tmp_path / name, progress=False))
        trees.append(tree_digest(tmp_path / name))
    assert trees[0] == trees[1]
    assert any(path.startswith("data/all/") for path in trees[0])
