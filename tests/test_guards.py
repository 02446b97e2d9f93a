"""The split guard on builds, on loaded DatasetDicts and through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset
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


def _per_record_assignment(grouping, options):  # type: ignore[no-untyped-def]
    """A broken assignment: records of one patient alternate between train (0) and test (2)."""
    return (np.arange(len(grouping.record_patient)) % 2 * 2).astype(np.int8)


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


def test_linked_group_leaks_are_named_by_their_smallest_patient_and_need_two_patients() -> None:
    def link(patient: str) -> list[dict[str, str | None]]:
        return [{"record_id": None, "patient_id": patient, "relation": "same_patient"}]

    def rows(records: list[tuple[str, str | None, list[dict[str, str | None]]]]) -> Dataset:
        n = len(records)
        return Dataset.from_dict(
            {
                "record_id": [r[0] for r in records],
                "source": [r[0].split(":")[0] for r in records],
                "patient_id": [r[1] for r in records],
                "links": [r[2] for r in records],
                "image_sha256": [None] * n,
                "image_pixel_sha256": [None] * n,
                "image_phash": [None] * n,
                "covid19": [0] * n,
                "age_years": [50.0] * n,
            }
        )

    # b:p2 and c:p3 both link to 0:x, a patient that has no row: one group of three patients, named 0:x
    train = rows([("b:1", "b:p2", link("0:x")), ("d:1", "d:p9", [])])
    test = rows([("c:1", "c:p3", link("0:x")), ("e:1", "e:p8", link("d:p9")), ("f:1", "f:p7", link(""))])
    report = verify_splits({"train": train, "test": test})
    linked = [leak for leak in report.leaks if leak.kind == "linked patient group"]
    assert [(leak.key, leak.splits, leak.records) for leak in linked] == [
        ("0:x", ("test", "train"), ("b:1@train", "c:1@test")),
        ("d:p9", ("test", "train"), ("d:1@train", "e:1@test")),
    ]
    # a record without a patient links nothing (the union-find of strings failed on it)
    report = verify_splits({"train": rows([("g:1", None, link("h:p1"))]), "test": rows([("h:1", "h:p1", [])])})
    assert report.records == 2 and not [leak for leak in report.leaks if leak.kind == "linked patient group"]


def _write_configs(folder: Path, splits_by_config: dict[str, dict[str, str]]) -> None:
    """Shards of the same four records in several configs, each record in the split given per config."""
    import pyarrow as pa

    from covid_cxr_unified.harmonize.features import FEATURES

    schema = FEATURES.arrow_schema
    r1_phash = f"{(1 << 255) | 0xF0F0:064x}"
    r4_phash = f"{(1 << 255) | 0xF0F0 | 0b101 << 100:064x}"  # 2 bits from r1's: a near-duplicate picture
    records = {
        "ieee8023:r1": ("ieee8023:p1", "a" * 64, "b" * 64, r1_phash),
        "ieee8023:r2": ("ieee8023:p1", "c" * 64, "d" * 64, "f" * 64),
        "ieee8023:r3": ("ieee8023:p2", "e" * 64, "f" * 64, f"{(1 << 200) - 1:064x}"),
        "ieee8023:r4": ("ieee8023:p3", "1" * 64, "2" * 64, r4_phash),
    }
    for config, split_of in splits_by_config.items():
        for split in sorted(set(split_of.values())):
            ids = [r for r in records if split_of[r] == split]
            table = pa.table(
                {
                    "record_id": ids,
                    "source": ["ieee8023"] * len(ids),
                    "patient_id": [records[r][0] for r in ids],
                    "links": pa.array([[] for _ in ids], type=schema.field("links").type),
                    "image_sha256": [records[r][1] for r in ids],
                    "image_pixel_sha256": [records[r][2] for r in ids],
                    "image_phash": [records[r][3] for r in ids],
                    "covid19": pa.array([0] * len(ids), type=schema.field("covid19").type),
                    "age_years": [50.0] * len(ids),
                }
            )
            (folder / "data" / config).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, folder / "data" / config / f"{split}-00000-of-00001.parquet")


def test_leaks_across_configs_are_reported_once_each(tmp_path: Path) -> None:
    placed = {"ieee8023:r1": "train", "ieee8023:r2": "train", "ieee8023:r3": "test", "ieee8023:r4": "validation"}
    _write_configs(tmp_path / "same", {"all": placed, "ieee8023": placed})
    report = verify_splits(tmp_path / "same")
    assert report.records == 4
    assert [(leak.kind, leak.key, leak.splits, leak.records) for leak in report.leaks] == [
        (
            "near-duplicate picture",
            "ieee8023:r1~ieee8023:r4",
            ("train", "validation"),
            ("ieee8023:r1@train", "ieee8023:r4@validation"),
        )
    ]
    assert report.label_by_source["train"] == {"ieee8023": {"positive": 2}}  # not counted once per config
    moved = {**placed, "ieee8023:r2": "test"}  # the per-source config disagrees with `all` about r2
    _write_configs(tmp_path / "moved", {"all": placed, "ieee8023": moved})
    report = verify_splits(tmp_path / "moved", near_bits=None)
    both = ("test", "train")
    assert [(leak.kind, leak.key, leak.splits, leak.records) for leak in report.leaks] == [
        ("record", "ieee8023:r2", both, ("ieee8023:r2@test", "ieee8023:r2@train")),
        ("patient", "ieee8023:p1", both, ("ieee8023:r1@train", "ieee8023:r2@test", "ieee8023:r2@train")),
        ("identical picture", "c" * 64, both, ("ieee8023:r2@test", "ieee8023:r2@train")),
        ("identical picture", "d" * 64, both, ("ieee8023:r2@test", "ieee8023:r2@train")),
    ]
    assert report.records == 4 and report.label_by_source["test"] == {"ieee8023": {"positive": 2}}
