"""The split guard on builds, on loaded DatasetDicts and through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datasets import DatasetDict, concatenate_datasets, load_dataset
from typer.testing import CliRunner

import covid_cxr_unified.harmonize.build as build_module
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.guards import SplitLeakError, verify_splits
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source


def test_built_folder_passes(demo_build: Path) -> None:
    report = verify_splits(demo_build)
    assert report.ok and report.records > 0
    per_split = {s: sum(sum(c.values()) for c in t.values()) for s, t in report.label_by_source.items()}
    assert sum(per_split.values()) == report.records


def test_resplit_dataset_dict_leak_names_the_patient(demo_build: Path) -> None:
    ds = load_dataset(str(demo_build), "ieee8023")
    patient = ds["train"]["patient_id"][0]
    moved = ds["train"].filter(lambda p: p == patient, input_columns="patient_id").select([0])
    resplit = DatasetDict({"train": ds["train"], "test": concatenate_datasets([ds["test"], moved])})
    report = verify_splits(resplit)
    assert not report.ok
    kinds = {leak.kind for leak in report.leaks}
    assert {"record", "patient", "identical picture"} <= kinds
    with pytest.raises(SplitLeakError, match=patient):
        report.raise_for_leaks()


def test_linked_patients_across_sources_must_share_a_split(demo_build: Path) -> None:
    ieee = load_dataset(str(demo_build), "ieee8023")
    v7 = load_dataset(str(demo_build), "v7_darwin")
    linked = [row for row in v7["train"] if row["links"]]
    assert linked
    target = linked[0]["links"][0]["patient_id"]
    ieee_rows = concatenate_datasets(list(ieee.values()))
    others = ieee_rows.filter(lambda p: p == target, input_columns="patient_id")
    assert others.num_rows > 0
    report = verify_splits({"train": v7["train"], "test": others})
    linked_leaks = [leak for leak in report.leaks if leak.kind == "linked patient group"]
    assert linked_leaks and all(leak.splits == ("test", "train") for leak in linked_leaks)
    assert any(r.startswith(linked[0]["record_id"]) for leak in linked_leaks for r in leak.records)


def test_build_refuses_a_leaking_assignment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_ieee8023(tmp_path / "src", seed=2, patients=30).root
    monkeypatch.setattr(build_module, "_assign_splits", _per_record_assignment)
    out = tmp_path / "out"
    with pytest.raises(SplitLeakError, match="split leak: "):
        build([SourceSpec(Source.IEEE8023, root)], BuildOptions(out=out, progress=False))
    assert not out.exists()


def _per_record_assignment(keys, grouping, options):  # type: ignore[no-untyped-def]
    """A broken assignment: records of one patient alternate between train and test."""
    return {key.record_id: ("train", "test")[index % 2] for index, key in enumerate(keys)}


def test_cli_verify_passes_and_fails(demo_build: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(demo_build), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"] is True
    tampered = tmp_path / "tampered"
    shutil.copytree(demo_build, tampered)
    test_shard = next((tampered / "data" / "ieee8023").glob("test-*.parquet"))
    train_shard = next((tampered / "data" / "ieee8023").glob("train-*.parquet"))
    pq.write_table(pq.read_table(train_shard).slice(0, 1), test_shard)  # a train record also in test
    bad = runner.invoke(app, ["verify", str(tampered)])
    assert bad.exit_code == 6 and "leak: record ieee8023:" in bad.stderr


def test_shortcut_warnings_name_the_source() -> None:
    from datasets import Dataset

    rows = {
        "record_id": ["a:1", "b:1", "a:2", "b:2"],
        "source": ["a", "b", "a", "b"],
        "patient_id": ["a:p1", "b:p1", "a:p2", "b:p2"],
        "links": [[], [], [], []],
        "image_sha256": [None] * 4,
        "image_pixel_sha256": [None] * 4,
        "image_phash": [None] * 4,
        "covid19": [0, 1, 0, 1],  # positives all from a, negatives all from b
        "age_years": [60.0, 5.0, 70.0, 8.0],
    }
    report = verify_splits({"train": Dataset.from_dict(rows)})
    assert report.ok
    assert any("every covid19 'positive' comes from a" in w for w in report.warnings)
    assert any("negatives are all pediatric" in w for w in report.warnings)
