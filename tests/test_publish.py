"""The publish gate, against a fake Hub API (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.license_policy import LicensePolicy
from covid_cxr_unified.harmonize.publish import PublishRefusedError, publish
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source


class FakeHub:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> None:
        self.calls.append(("upload_folder", kwargs))


def test_refuses_a_build_with_bimcv_records(demo_build: Path) -> None:
    hub = FakeHub()
    with pytest.raises(PublishRefusedError, match=r"LicenseRef-BIMCV-COVID19-RUA: \d+"):
        publish(demo_build, "org/name", api=hub)
    assert hub.calls == []


def test_refuses_unknown_licenses_and_uploads_a_filtered_build(tmp_path: Path) -> None:
    root = write_ieee8023(tmp_path / "src", seed=4).root
    spec = SourceSpec(Source.IEEE8023, root)
    build([spec], BuildOptions(out=tmp_path / "mixed", progress=False))
    with pytest.raises(PublishRefusedError, match="image license LicenseRef-unknown"):
        publish(tmp_path / "mixed", "org/name", api=FakeHub())
    options = BuildOptions(out=tmp_path / "open", license_policy=LicensePolicy.REDISTRIBUTABLE, progress=False)
    build([spec], options)
    hub = FakeHub()
    assert publish(tmp_path / "open", "org/name", api=hub) == "org/name"
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[1][1]["folder_path"] == str(tmp_path / "open")
    attribution = (tmp_path / "open" / "ATTRIBUTION.md").read_text()
    assert "10.0000/synthetic." in attribution and "LicenseRef-unknown" not in attribution


def test_refuses_a_folder_that_is_no_build(tmp_path: Path) -> None:
    with pytest.raises(PublishRefusedError, match="not a covid-cxr build"):
        publish(tmp_path, "org/name", api=FakeHub())
