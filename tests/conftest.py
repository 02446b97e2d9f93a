"""Shared test fixtures: the real files in ../shared/data, and the synthetic sources."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real source files. Skipped only when the folder is absent; in CI its absence fails."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder {SHARED_DATA} is missing in CI")
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reaches the network or the user's HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo build of every synthetic source (read-only: copy it before changing anything)."""
    from covid_cxr_unified.harmonize.build import BuildOptions, build
    from covid_cxr_unified.harmonize.synthetic import write_demo_sources

    root = tmp_path_factory.mktemp("demo")
    specs = write_demo_sources(root / "sources", seed=0)
    build(specs, BuildOptions(out=root / "covid_cxr_unified", progress=False))
    return root / "covid_cxr_unified"
