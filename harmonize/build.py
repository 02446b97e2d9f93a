"""The build: sources -> validated records -> Parquet shards per config and split -> card + report.

Three streaming passes with bounded memory:
1. each adapter's records are validated, filtered by the license policy and spooled to Parquet, while
   the few keys grouping needs (ids, links, picture hashes) are kept in memory;
2. records are grouped (patients, cross-source links, id map, duplicate pictures) and each group gets
   a split by a keyed hash of its stable key;
3. the spools are routed into `data/<source>/<split>-*.parquet` and the `all` config, where an image
   several sources describe becomes one record; then the split guard checks the written folder and a
   leaking build is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter, AdapterReport
from covid_cxr_unified.adapters.limits import (
    DEFAULT_MAX_ARCHIVE_MEMBERS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_BYTES,
)
from covid_cxr_unified.harmonize import __version__
from covid_cxr_unified.harmonize.card import render_attribution, render_card, render_license_file
from covid_cxr_unified.harmonize.croissant import write_croissant
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.features import FEATURES, canonical_json, record_to_row
from covid_cxr_unified.harmonize.groups import NEAR_DUPLICATE_BITS, Grouping, RecordKeys, group_records
from covid_cxr_unified.harmonize.guards import GuardReport, verify_splits
from covid_cxr_unified.harmonize.license_policy import LicensePolicy, record_permitted
from covid_cxr_unified.harmonize.report import write_report
from covid_cxr_unified.harmonize.shards import DEFAULT_SHARD_BYTES, ShardWriter, file_sha256
from covid_cxr_unified.harmonize.splits import DEFAULT_SPLIT_KEY, SPLITS, SplitRatios, assign_split
from covid_cxr_unified.harmonize.visuals import render_card_figures
from covid_cxr_unified.schema.record import SCHEMA_VERSION, Record
from covid_cxr_unified.schema.vocab import Source

DEFAULT_OUT = Path("covid_cxr_unified")
BUILD_MARKER = "build_report.json"
ALL_CONFIG = "all"
_BATCH_ROWS = 100


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
    license_policy: LicensePolicy = LicensePolicy.ANY
    id_map: Path | None = None
    near_duplicate_bits: int | None = NEAR_DUPLICATE_BITS
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS
    progress: bool = True


@dataclass
class ConfigResult:
    name: str
    split_counts: dict[str, int]
    split_bytes: dict[str, int]  # Parquet bytes on disk
    shards: dict[str, list[str]]  # split -> shard globs relative to the build folder
    licenses: Counter[str]
    report: AdapterReport | None = None  # None for the `all` config

    def nonempty_splits(self) -> list[str]:
        return [split for split in SPLITS if self.split_counts[split]]


@dataclass
class BuildResult:
    out: Path
    configs: list[ConfigResult]
    fingerprint: str
    guard: GuardReport
    grouping: Grouping


@dataclass
class _Spooled:
    """Pass-1 output of one source."""

    adapter: Adapter
    spool: Path
    keys: list[RecordKeys] = field(default_factory=list)
    same_image: dict[str, tuple[str, ...]] = field(default_factory=dict)
    licenses: Counter[str] = field(default_factory=Counter)
    credits: list[tuple[str, str, str]] = field(default_factory=list)  # record_id, license_id, attribution


def make_adapter(spec: SourceSpec, options: BuildOptions, related: dict[Source, Path]) -> Adapter:
    return adapter_class(spec.source.value)(
        spec.path,
        images=spec.images,
        metadata_only=options.metadata_only,
        max_image_pixels=options.max_image_pixels,
        max_json_bytes=options.max_json_bytes,
        max_archive_members=options.max_archive_members,
        related=related,
    )


def build(specs: Sequence[SourceSpec], options: BuildOptions) -> BuildResult:
    """Build every source into `options.out`, replacing a previous build only when this one succeeds."""
    if not specs:
        raise BuildError("nothing to build: give at least one source, e.g. --ieee8023 PATH")
    out = options.out.resolve()
    _check_replaceable(out)
    id_map = _read_id_map(options.id_map) if options.id_map else []
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        result = _build_in(staging, specs, options, id_map)
        _swap_in(staging, out)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise BuildError(f"cannot write the build at {out}: {exc.strerror or exc}{where}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.out = out
    return result


def _build_in(
    staging: Path, specs: Sequence[SourceSpec], options: BuildOptions, id_map: list[tuple[str, str]]
) -> BuildResult:
    paths = {spec.source: spec.path for spec in specs}
    spooled = [
        _spool_source(make_adapter(spec, options, paths), staging, options)
        for spec in sorted(specs, key=lambda s: s.source)
    ]
    keys = [key for s in spooled for key in s.keys]
    grouping = group_records(keys, id_map, options.near_duplicate_bits)
    split_of = _assign_splits(keys, grouping, options)
    _write_manifest(staging / "splits" / "groups.jsonl", keys, grouping, split_of)
    configs = [_write_source_config(s, split_of, staging, options) for s in spooled]
    configs.append(_write_all_config(spooled, configs, split_of, staging, options))
    shutil.rmtree(staging / "spool")
    guard = verify_splits(staging, options.near_duplicate_bits)
    guard.raise_for_leaks()
    fingerprint = _fingerprint(staging, configs)
    write_report(staging, configs, fingerprint, guard, grouping)
    figures = {c.name: render_card_figures(staging, c.name, shards=c.shards) for c in configs}
    (staging / "README.md").write_text(render_card(configs, fingerprint, guard, figures), encoding="utf-8")
    write_croissant(staging, data_files={c.name: c.shards for c in configs})
    (staging / "LICENSE.md").write_text(render_license_file(configs), encoding="utf-8")
    credits = sorted(credit for s in spooled for credit in s.credits)
    (staging / "ATTRIBUTION.md").write_text(render_attribution(credits), encoding="utf-8")
    return BuildResult(out=staging, configs=configs, fingerprint=fingerprint, guard=guard, grouping=grouping)


# --- pass 1: validate, filter, spool ---------------------------------------------------------------


def _policy_filter(policy: LicensePolicy) -> Any:
    if policy is LicensePolicy.ANY:
        return None

    def exclude(record: Record) -> str | None:
        return None if record_permitted(record, policy) else f"license policy '{policy.value}': not granted"

    return exclude


def _spool_source(adapter: Adapter, staging: Path, options: BuildOptions) -> _Spooled:
    name = adapter.name.value
    writer = ShardWriter(staging / "spool", name, max_shard_bytes=2**62)
    spooled = _Spooled(adapter=adapter, spool=staging / "spool")
    for emitted in adapter.run(progress=options.progress, exclude=_policy_filter(options.license_policy)):
        record = emitted.record
        writer.write(record_to_row(record, emitted.image_bytes))
        spooled.keys.append(_keys_of(record))
        same = tuple(link.record_id for link in record.links if link.relation == "same_image")
        if same:
            spooled.same_image[record.record_id] = same
        spooled.licenses[record.license.license_id] += 1
        spooled.credits.append((record.record_id, record.license.license_id, record.license.attribution or ""))
    paths = writer.close()
    spooled.spool = paths[0] if paths else staging / "spool" / f"{name}-empty"
    return spooled


def _keys_of(record: Record) -> RecordKeys:
    image = record.image
    return RecordKeys(
        record_id=record.record_id,
        source=record.source.value,
        patient_id=record.patient.patient_id,
        linked_patients=tuple(link.patient_id for link in record.links if link.patient_id),
        file_sha256=None if image is None else image.sha256,
        pixel_sha256=None if image is None else image.pixel_sha256,
        phash=None if image is None else image.perceptual_hash,
    )


def _spool_batches(spool: Path) -> Iterator[pa.Table]:
    if not spool.is_file():
        return
    for batch in pq.ParquetFile(spool).iter_batches(batch_size=_BATCH_ROWS):
        yield pa.Table.from_batches([batch])


# --- pass 2: groups and splits ---------------------------------------------------------------------


def _assign_splits(keys: list[RecordKeys], grouping: Grouping, options: BuildOptions) -> dict[str, str]:
    split_of_group: dict[str, str] = {}
    split_of: dict[str, str] = {}
    for key in keys:
        group = grouping.group_of[key.patient_id]
        if group not in split_of_group:
            split_of_group[group] = assign_split(group, options.ratios, options.split_key)
        split_of[key.record_id] = split_of_group[group]
    return split_of


def _write_manifest(path: Path, keys: list[RecordKeys], grouping: Grouping, split_of: dict[str, str]) -> None:
    """The realized assignment as data: one line per group with its patients, records and split."""
    patients: dict[str, set[str]] = defaultdict(set)
    for key in keys:
        patients[grouping.group_of[key.patient_id]].add(key.patient_id)
    members = grouping.members(keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for group in sorted(members):
            line = {
                "group": group,
                "split": split_of[members[group][0]],
                "patients": sorted(patients[group]),
                "records": sorted(members[group]),
            }
            handle.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")


# --- pass 3: route spools into configs ------------------------------------------------------------


def _split_writers(staging: Path, config: str, options: BuildOptions) -> dict[str, ShardWriter]:
    return {split: ShardWriter(staging / "data" / config, split, options.max_shard_bytes) for split in SPLITS}


def _route(table: pa.Table, split_of: dict[str, str], writers: dict[str, ShardWriter]) -> None:
    splits = [split_of[rid] for rid in table.column("record_id").to_pylist()]
    for split, writer in writers.items():
        writer.write_table(table.filter(pa.array([s == split for s in splits])))


def _close(
    writers: dict[str, ShardWriter], staging: Path
) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    shards = {split: [p.relative_to(staging).as_posix() for p in w.close()] for split, w in writers.items()}
    counts = {split: writers[split].rows for split in SPLITS}
    sizes = {split: sum((staging / p).stat().st_size for p in shards[split]) for split in SPLITS}
    return counts, sizes, shards


def _write_source_config(
    spooled: _Spooled, split_of: dict[str, str], staging: Path, options: BuildOptions
) -> ConfigResult:
    name = spooled.adapter.name.value
    writers = _split_writers(staging, name, options)
    for table in _spool_batches(spooled.spool):
        _route(table, split_of, writers)
    counts, sizes, shards = _close(writers, staging)
    return ConfigResult(name, counts, sizes, shards, spooled.licenses, spooled.adapter.report)


def _merge_plan(spooled: list[_Spooled]) -> dict[str, list[str]]:
    """primary record -> the records of other sources that show the same image and fold into it."""
    present = {key.record_id for s in spooled for key in s.keys}
    linking = {record_id for s in spooled for record_id in s.same_image}
    plan: dict[str, list[str]] = defaultdict(list)
    for s in spooled:
        for record_id, targets in s.same_image.items():
            primary = min((t for t in targets if t in present), default=None)
            if primary is not None and primary not in linking:  # no chains: a primary links nowhere
                plan[primary].append(record_id)
    return {primary: sorted(secondaries) for primary, secondaries in plan.items()}


def _secondary_rows(spooled: list[_Spooled], secondaries: set[str]) -> dict[str, dict[str, Any]]:
    columns = ["record_id", "source", "patient_id", "masks", "provenance"]
    rows: dict[str, dict[str, Any]] = {}
    for s in spooled:
        if not s.spool.is_file() or not any(k.record_id in secondaries for k in s.keys):
            continue
        for row in pq.read_table(s.spool, columns=columns).to_pylist():
            if row["record_id"] in secondaries:
                rows[row["record_id"]] = row
    return rows


def _merged(row: dict[str, Any], secondaries: list[dict[str, Any]]) -> dict[str, Any]:
    merged = dict(row)
    merged["masks"] = [*(row["masks"] or []), *(m for s in secondaries for m in s["masks"] or [])]
    merged["links"] = [
        *(row["links"] or []),
        *({"record_id": s["record_id"], "patient_id": s["patient_id"], "relation": "same_image"} for s in secondaries),
    ]
    merged["merged_from"] = canonical_json(
        [
            {"record_id": s["record_id"], "source": s["source"], "provenance": json.loads(s["provenance"])}
            for s in secondaries
        ]
    )
    return merged


def _write_all_config(
    spooled: list[_Spooled],
    configs: list[ConfigResult],
    split_of: dict[str, str],
    staging: Path,
    options: BuildOptions,
) -> ConfigResult:
    """Every source in one config. Sources without merged images are referenced, not copied."""
    plan = _merge_plan(spooled)
    secondaries = {r for rs in plan.values() for r in rs}
    involved = {k.source for s in spooled for k in s.keys if k.record_id in plan or k.record_id in secondaries}
    extra = _secondary_rows(spooled, secondaries)
    writers = _split_writers(staging, ALL_CONFIG, options)
    licenses: Counter[str] = Counter()
    for s in spooled:
        if s.adapter.name.value not in involved:
            continue
        for table in _spool_batches(s.spool):
            rows = [
                _merged(row, [extra[r] for r in plan[row["record_id"]]]) if row["record_id"] in plan else row
                for row in table.to_pylist()
                if row["record_id"] not in secondaries
            ]
            licenses.update(row["license_id"] for row in rows)
            if rows:
                _route(pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema), split_of, writers)
    counts, sizes, shards = _close(writers, staging)
    for config in configs:
        if config.name not in involved:
            licenses.update(config.licenses)
            for split in SPLITS:
                counts[split] += config.split_counts[split]
                sizes[split] += config.split_bytes[split]
                shards[split] += config.shards[split]
    return ConfigResult(ALL_CONFIG, counts, sizes, shards, licenses)


# --- the rest ----------------------------------------------------------------------------------------


def _read_id_map(path: Path) -> list[tuple[str, str]]:
    """A CSV of `patient_id_a,patient_id_b` pairs that are the same person (namespaced ids)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read id map {path}: {exc}") from exc
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not all(cell.strip() for cell in row):
            raise BuildError(f"id map {path} line {number}: expected patient_id_a,patient_id_b")
        pairs.append((row[0].strip(), row[1].strip()))
    return pairs


def _fingerprint(staging: Path, configs: list[ConfigResult]) -> str:
    digest = hashlib.sha256(f"covid-cxr-unified {__version__} schema {SCHEMA_VERSION}\n".encode())
    shards = sorted({shard for config in configs for split in SPLITS for shard in config.shards[split]})
    for shard in shards:
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
