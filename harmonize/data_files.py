"""Which Parquet shards make up each config and split of a build folder.

A config's shards need not lie in its own folder: the `all` config can list another config's shards
(e.g. `data/bimcv/train-*.parquet`) instead of copying them. The card's YAML (`configs[].data_files`)
is the authority; during a build, before the card exists, the build passes the same globs itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from covid_cxr_unified.harmonize.errors import SourceFormatError
from covid_cxr_unified.harmonize.splits import SPLITS

# config -> split -> shard globs relative to the build folder (as in the card's `data_files`)
DataFiles = Mapping[str, Mapping[str, Sequence[str]]]


def card_data_files(build_dir: Path) -> dict[str, dict[str, list[str]]] | None:
    """The `configs[].data_files` of the build's README.md YAML, or None without a card."""
    card = build_dir / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return None
    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError as exc:
        raise SourceFormatError(f"cannot read the YAML header of {card}: {exc}") from exc
    result: dict[str, dict[str, list[str]]] = {}
    for config in header.get("configs") or []:
        per_split: dict[str, list[str]] = {}
        for entry in config.get("data_files") or []:
            paths = entry["path"]
            per_split.setdefault(str(entry["split"]), []).extend([paths] if isinstance(paths, str) else paths)
        result[str(config["config_name"])] = per_split
    return result


def folder_data_files(build_dir: Path) -> dict[str, dict[str, list[str]]]:
    """`data/<config>/<split>-*.parquet` for every config folder that has shards."""
    result: dict[str, dict[str, list[str]]] = {}
    data = build_dir / "data"
    for folder in sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []:
        per_split = {
            split: [f"data/{folder.name}/{split}-*.parquet"]
            for split in SPLITS
            if any(folder.glob(f"{split}-*.parquet"))
        }
        if per_split:
            result[folder.name] = per_split
    return result


def build_data_files(build_dir: Path, data_files: DataFiles | None = None) -> dict[str, dict[str, list[Path]]]:
    """config -> split -> shard files, in split order, from `data_files` when given, else from the
    card's YAML, else from the config folders. Globs are resolved against `build_dir`; each split's
    files are in glob order, sorted within a glob, without repeats."""
    globs = data_files if data_files is not None else card_data_files(build_dir)
    if globs is None:
        globs = folder_data_files(build_dir)
    return {config: resolve_split_files(build_dir, per_split) for config, per_split in globs.items()}


def resolve_split_files(build_dir: Path, per_split: Mapping[str, Sequence[str]]) -> dict[str, list[Path]]:
    """split -> existing shard files for one config (splits without files are left out)."""
    result: dict[str, list[Path]] = {}
    for split in sorted(per_split, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s)):
        files: list[Path] = []
        for pattern in per_split[split]:
            for path in sorted(build_dir.glob(pattern)):
                if path.is_file() and path not in files:
                    files.append(path)
        if files:
            result[split] = files
    return result
