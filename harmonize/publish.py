"""The publish gate: only a build whose every record and mask may be redistributed goes to the Hub."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.license_policy import license_grants


class PublishRefusedError(HarmonizeError):
    exit_code = 7


class HubApi(Protocol):
    """The two `huggingface_hub.HfApi` calls the gate makes (a fake in tests)."""

    def create_repo(self, repo_id: str, *, repo_type: str, private: bool, exist_ok: bool) -> Any: ...

    def upload_folder(self, *, folder_path: str, repo_id: str, repo_type: str, commit_message: str) -> Any: ...


def redistribution_problems(build_dir: Path) -> Counter[str]:
    """Records (by image license) and masks (by annotation license) that forbid redistribution."""
    shards = sorted((build_dir / "data").glob("*/*.parquet"))
    if not shards or not (build_dir / "README.md").is_file():
        raise PublishRefusedError(f"{build_dir} is not a covid-cxr build (no README.md and data/ shards)")
    problems: Counter[str] = Counter()
    seen: set[str] = set()
    for shard in shards:
        table = pq.read_table(shard, columns=["record_id", "license_id", "masks"])
        for row in table.to_pylist():
            if row["record_id"] in seen:
                continue
            seen.add(row["record_id"])
            if not license_grants(row["license_id"], "redistribution"):
                problems[f"image license {row['license_id']}"] += 1
            for mask in row["masks"] or ():
                if not license_grants(mask["annotation_license_id"], "redistribution"):
                    problems[f"annotation license {mask['annotation_license_id']}"] += 1
    return problems


def publish(build_dir: Path, repo_id: str, *, private: bool = False, api: HubApi | None = None) -> str:
    """Upload the build as a Hub dataset repo, after the gate. Returns the repo id."""
    problems = redistribution_problems(build_dir)
    if problems:
        listed = ", ".join(f"{what}: {n}" for what, n in sorted(problems.items()))
        raise PublishRefusedError(
            f"refusing to publish {build_dir}: records forbid redistribution ({listed}); "
            "rebuild with --license-policy redistributable"
        )
    if not (build_dir / "ATTRIBUTION.md").is_file():
        raise PublishRefusedError(f"refusing to publish {build_dir}: ATTRIBUTION.md is missing")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(build_dir), repo_id=repo_id, repo_type="dataset", commit_message="covid-cxr-unified build"
    )
    return repo_id
