"""License policies: on the real ieee8023 licenses, image vs annotation licenses, loaded datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.license_policy import LicensePolicy, filter_by_license, permits
from covid_cxr_unified.schema.vocab import Source

# What each raw ieee8023 license spelling permits, stated here independently of the package's tables.
GRANTS = {
    "CC BY-NC-SA": {"research"},
    "CC BY-NC-SA 4.0": {"research"},
    "CC BY-NC-ND": {"research"},
    "CC BY-NC-ND 4.0": {"research"},
    "CC BY 3.0": {"research", "commercial"},
    "CC BY 4.0": {"research", "commercial"},
    "CC BY": {"research", "commercial"},
    "CC BY-SA": {"research", "commercial"},
    "Apache 2.0": {"research", "commercial"},
    "listed as authorized for everyone": {"research"},
    "": set(),
    " ": set(),
}
REDISTRIBUTABLE = {raw for raw in GRANTS if raw.strip() and raw != "listed as authorized for everyone"}


def _in_scope_licenses(metadata: Path) -> list[str]:
    with metadata.open(encoding="utf-8", newline="") as handle:
        return [
            row["license"]
            for row in csv.DictReader(handle)
            if row["modality"] == "X-ray" and row["folder"] == "images" and row["finding"] not in ("todo", "Unknown")
        ]


@pytest.mark.realdata
@pytest.mark.parametrize("policy", list(LicensePolicy))
def test_each_policy_keeps_exactly_the_expected_real_records(
    shared_data: Path, tmp_path: Path, policy: LicensePolicy
) -> None:
    metadata = shared_data / "ieee8023" / "metadata.csv"
    licenses = _in_scope_licenses(metadata)
    expected = {
        LicensePolicy.ANY: len(licenses),
        LicensePolicy.RESEARCH: sum("research" in GRANTS[raw] for raw in licenses),
        LicensePolicy.REDISTRIBUTABLE: sum(raw in REDISTRIBUTABLE for raw in licenses),
        LicensePolicy.COMMERCIAL: sum("commercial" in GRANTS[raw] for raw in licenses),
    }[policy]
    out = tmp_path / "out"
    options = BuildOptions(out=out, metadata_only=True, license_policy=policy, progress=False)
    build([SourceSpec(Source.IEEE8023, metadata)], options)
    report = json.loads((out / "build_report.json").read_text())["sources"]["ieee8023"]
    assert report["records"] == expected
    assert report["excluded"].get(f"license policy '{policy.value}': not granted", 0) == len(licenses) - expected
    assert report["reconciles"]
    kept = concatenate_datasets(list(load_dataset(str(out), "ieee8023").values()))
    assert filter_by_license(kept, policy).num_rows == kept.num_rows == expected
    assert 0 < expected <= 782


def test_a_nc_image_with_cc_by_masks_is_not_commercial() -> None:
    mask = {"annotation_license_id": "CC-BY-4.0"}
    assert permits(LicensePolicy.COMMERCIAL, "CC-BY-4.0", ["CC-BY-4.0"])
    assert not permits(LicensePolicy.COMMERCIAL, "CC-BY-NC-SA-4.0", ["CC-BY-4.0"])
    assert not permits(LicensePolicy.COMMERCIAL, "CC-BY-4.0", ["LicenseRef-unknown"])
    assert not permits(LicensePolicy.RESEARCH, "LicenseRef-unknown", [])
    assert permits(LicensePolicy.ANY, "LicenseRef-unknown", [])
    rows = Dataset.from_list(
        [
            {"record_id": "a", "license_id": "CC-BY-4.0", "masks": [mask]},
            {"record_id": "b", "license_id": "CC-BY-NC-SA-4.0", "masks": [mask]},
            {"record_id": "c", "license_id": "Apache-2.0", "masks": []},
        ]
    )
    assert filter_by_license(rows, "commercial")["record_id"] == ["a", "c"]
    both = filter_by_license(DatasetDict({"train": rows, "test": rows}), LicensePolicy.RESEARCH)
    assert both["train"].num_rows == both["test"].num_rows == 3


def test_unknown_policy_is_a_typed_error() -> None:
    with pytest.raises(HarmonizeError, match="unknown license policy 'open'"):
        filter_by_license(Dataset.from_list([{"license_id": "x", "masks": []}]), "open")
