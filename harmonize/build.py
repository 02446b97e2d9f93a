"""The build: sources -> validated records -> Parquet shards per config and split -> card + report."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import DEFAULT_MAX_IMAGE_PIXELS, Adapter, AdapterReport
from covid_cxr_unified.harmonize import __version__
from covid_cxr_unified.harmonize.card import render_card, render_license_file
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.features import record_to_row
from covid_cxr_unified.harmonize.report import write_report
from covid_cxr_unified.harmonize.shards import DEFAULT_SHARD_BYTES, ShardWriter, file_sha256
from covid_cxr_unified.harmonize.splits import DEFAULT_SPLIT_KEY, SPLITS, SplitRatios, assign_split
from covid_cxr_unified.schema.record import SCHEMA_VERSION
from covid_cxr_unified.schema.vocab import Source

DEFAULT_OUT = Path("covid_cxr_unified")
BUILD_MARKER = "build_report.json"


@dataclass(frozen=True)
class SourceSpec:
    source: Source
    path: Path
    images: Path | None = None


@dataclass(frozen=True)
class BuildOptions:
    out: Path = DEFAULT_OUT
    metadata_only: bool = False
    ratios: SplitRatios = field(default_factory=SplitRatios)
    split_key: str = DEFAULT_SPLIT_KEY
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    progress: bool = True


@dataclass
class ConfigResult:
    name: str
    split_counts: dict[str, int]
    split_bytes: dict[str, int]  # Parquet bytes on disk
    shards: dict[str, list[str]]  # split -> shard paths relative to the build folder
    report: AdapterReport
    licenses: Counter[str]

    def nonempty_splits(self) -> list[str]:
        return [split for split in SPLITS if self.split_counts[split]]


@dataclass
class BuildResult:
    out: Path
    configs: list[ConfigResult]
    fingerprint: str


def make_adapter(spec: SourceSpec, options: BuildOptions, related: dict[Source, Path]) -> Adapter:
    return adapter_class(spec.source.value)(
        spec.path,
        images=spec.images,
        metadata_only=options.metadata_only,
        max_image_pixels=options.max_image_pixels,
        related=related,
    )


def build(specs: Sequence[SourceSpec], options: BuildOptions) -> BuildResult:
    """Build every source into `options.out`, replacing a previous build only when this one succeeds."""
    if not specs:
        raise BuildError("nothing to build: give at least one source, e.g. --ieee8023 PATH")
    out = options.out.resolve()
    _check_replaceable(out)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        paths = {spec.source: spec.path for spec in specs}
        configs = [
            _build_config(make_adapter(spec, options, paths), staging, options)
            for spec in sorted(specs, key=lambda s: s.source)
        ]
        fingerprint = _fingerprint(staging, configs)
        write_report(staging, configs, fingerprint)
        (staging / "README.md").write_text(render_card(configs, fingerprint), encoding="utf-8")
        (staging / "LICENSE.md").write_text(render_license_file(configs), encoding="utf-8")
        _swap_in(staging, out)
    except OSError as exc:
        raise BuildError(f"cannot write the build at {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out=out, configs=configs, fingerprint=fingerprint)


def _build_config(adapter: Adapter, staging: Path, options: BuildOptions) -> ConfigResult:
    name = adapter.name.value
    folder = staging / "data" / name
    writers = {split: ShardWriter(folder, split, options.max_shard_bytes) for split in SPLITS}
    groups: dict[str, list[str]] = defaultdict(list)
    assignment: dict[str, str] = {}
    licenses: Counter[str] = Counter()
    for emitted in adapter.run(progress=options.progress):
        group = emitted.record.patient.patient_id
        split = assignment.setdefault(group, assign_split(group, options.ratios, options.split_key))
        writers[split].write(record_to_row(emitted.record, emitted.image_bytes))
        groups[group].append(emitted.record.record_id)
        licenses[emitted.record.license.license_id] += 1
    shards = {split: [p.relative_to(staging).as_posix() for p in writer.close()] for split, writer in writers.items()}
    _write_manifest(staging / "splits" / f"{name}.jsonl", groups, assignment)
    return ConfigResult(
        name=name,
        split_counts={split: writers[split].rows for split in SPLITS},
        split_bytes={split: sum((staging / p).stat().st_size for p in shards[split]) for split in SPLITS},
        shards=shards,
        report=adapter.report,
        licenses=licenses,
    )


def _write_manifest(path: Path, groups: dict[str, list[str]], assignment: dict[str, str]) -> None:
    """The realized assignment as data: one line per group with its members and split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for group in sorted(groups):
            line = {"group": group, "split": assignment[group], "records": sorted(groups[group])}
            handle.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")


def _fingerprint(staging: Path, configs: list[ConfigResult]) -> str:
    digest = hashlib.sha256(f"covid-cxr-unified {__version__} schema {SCHEMA_VERSION}\n".encode())
    for config in configs:
        for split in SPLITS:
            for shard in config.shards[split]:
                digest.update(f"{shard} {file_sha256(staging / shard)}\n".encode())
    return digest.hexdigest()


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out / BUILD_MARKER).is_file():
        if out.is_dir() and not any(out.iterdir()):
            return
        raise BuildError(f"{out} exists and is not a covid-cxr build; choose another --out or remove it")


def _swap_in(staging: Path, out: Path) -> None:
    previous = out.parent / f".{out.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists():
        out.replace(previous)
    staging.replace(out)
    shutil.rmtree(previous, ignore_errors=True)
