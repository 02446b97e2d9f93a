"""End to end: sources -> build folder -> `datasets.load_dataset` offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import ClassLabel, Image, Json, List, concatenate_datasets, load_dataset
from treedigest import tree_digest

from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source


def _build(src: Path, out: Path, **options: object) -> None:
    build([SourceSpec(Source.IEEE8023, src)], BuildOptions(out=out, progress=False, **options))  # type: ignore[arg-type]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_ieee8023(tmp_path / "src", seed=5, patients=60).root


def test_build_loads_by_bare_name_offline(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _build(source, work / "covid_cxr_unified")
    monkeypatch.chdir(work)
    ds = load_dataset("covid_cxr_unified", "ieee8023")
    report = json.loads((work / "covid_cxr_unified" / "build_report.json").read_text())["sources"]["ieee8023"]
    assert {s: ds[s].num_rows for s in SPLITS} == report["splits"]
    assert sum(report["splits"].values()) == report["records"]
    features = ds["train"].features
    assert isinstance(features["view"], ClassLabel) and isinstance(features["covid19"], ClassLabel)
    assert isinstance(features["image"], Image) and isinstance(features["raw"], Json)
    assert isinstance(features["masks"], List) and isinstance(features["findings"], List)
    row = ds["train"][0]
    assert row["image"].size == (row["width"], row["height"])
    assert isinstance(row["raw"], dict) and row["raw"]["filename"] == row["record_id"].split(":", 1)[1]


def test_patients_never_straddle_splits(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(source, out)
    ds = load_dataset(str(out), "ieee8023")
    split_of: dict[str, str] = {}
    for split in SPLITS:
        for pid in ds[split]["patient_id"]:
            assert split_of.setdefault(pid, split) == split
    assert len({*split_of.values()}) == 3
    manifest = [json.loads(line) for line in (out / "splits" / "groups.jsonl").read_text().splitlines()]
    assert {p: m["split"] for m in manifest for p in m["patients"]} == split_of


def test_none_stays_none_after_loading(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(source, out)
    rows = load_dataset(str(out), "ieee8023", split="train+validation+test")
    blank_age = [r for r in rows if r["raw"]["age"] == ""]
    assert blank_age and all(r["age_years"] is None for r in blank_age)
    blank_icu = [r for r in rows if r["raw"]["went_icu"] == ""]
    assert blank_icu and all(r["went_icu"] is None for r in blank_icu)


def test_two_builds_are_byte_identical(source: Path, tmp_path: Path) -> None:
    _build(source, tmp_path / "a")
    _build(source, tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_rebuild_with_new_content_is_not_served_stale(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = write_ieee8023(tmp_path / "s1", seed=1).root
    second = write_ieee8023(tmp_path / "s2", seed=2).root
    _build(first, out)
    before = load_dataset(str(out), "ieee8023", split="train")["image_sha256"]
    _build(second, out)
    after = load_dataset(str(out), "ieee8023", split="train")["image_sha256"]
    assert before != after


def test_metadata_only_build_has_no_image_bytes(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(source, out, metadata_only=True)
    ds = load_dataset(str(out), "ieee8023", split="train")
    assert ds.num_rows > 0 and set(ds["image"]) == {None}


def test_build_refuses_to_replace_a_foreign_folder(source: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(BuildError, match="not a covid-cxr build"):
        _build(source, foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_nothing_to_build_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="nothing to build"):
        build([], BuildOptions(out=tmp_path / "out", progress=False))


def test_card_declares_configs_counts_and_fingerprint(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _build(source, out)
    card = (out / "README.md").read_text()
    report = json.loads((out / "build_report.json").read_text())
    assert card.startswith("---\n") and "config_name: ieee8023" in card
    assert f"build_fingerprint: {report['fingerprint']}" in card
    for split, n in report["sources"]["ieee8023"]["splits"].items():
        assert f"name: {split}" in card and f"num_examples: {n}" in card
    assert "## Licensing Information" in card and "LicenseRef-unknown" in card


@pytest.mark.realdata
def test_real_images_sample_decode_after_load(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = SourceSpec(Source.IEEE8023, shared_data / "ieee8023", shared_data / "ieee8023" / "images-sample")
    build([spec], BuildOptions(out=out, progress=False))
    rows = concatenate_datasets(list(load_dataset(str(out), "ieee8023").values()))
    assert rows.num_rows == 27
    sample = shared_data / "ieee8023" / "images-sample"
    for row in rows.cast_column("image", Image(decode=False)):
        assert row["image"]["bytes"] == (sample / row["image_path"]).read_bytes()
    modes = {img.mode for img in rows["image"]}
    assert {"L", "RGB", "RGBA"} <= modes
    report = json.loads((out / "build_report.json").read_text())["sources"]["ieee8023"]
    assert report["reconciles"] and report["input_items"] == 950


def test_a_build_without_records_says_why(tmp_path: Path) -> None:
    root = write_ieee8023(tmp_path / "src", seed=1, patients=3).root
    spec = SourceSpec(Source.IEEE8023, root, images=tmp_path / "no-images-here")
    with pytest.raises(
        BuildError, match=r"nothing to build: no source gave a record \(ieee8023: \d+ items = 0 records"
    ):
        build([spec], BuildOptions(out=tmp_path / "out", progress=False))
    assert not (tmp_path / "out").exists()


def test_a_source_without_records_is_reported_not_declared(tmp_path: Path) -> None:
    from covid_cxr_unified.harmonize.synthetic.bimcv import write_bimcv

    ieee = write_ieee8023(tmp_path / "ieee", seed=1, patients=6).root
    bimcv = write_bimcv(tmp_path / "bimcv", seed=0).root
    out = tmp_path / "out"
    specs = [SourceSpec(Source.IEEE8023, ieee, images=tmp_path / "nowhere"), SourceSpec(Source.BIMCV, bimcv)]
    build(specs, BuildOptions(out=out, progress=False))
    report = json.loads((out / "build_report.json").read_text())
    assert report["sources"]["ieee8023"]["records"] == 0 and report["sources"]["ieee8023"]["reconciles"]
    card = (out / "README.md").read_text()
    assert "config_name: ieee8023" not in card and "config_name: bimcv" in card
    assert load_dataset(str(out), "bimcv")["train"].num_rows > 0
