"""The build: sources -> validated records -> Parquet shards per config and split -> card + report.

Three streaming passes. Image bytes live only inside the unit that reads them; the adapters keep
their discovery indexes on disk (`adapters.disk_index`, under `staging/index`); what grows with the
number of records is columnar: Arrow columns and integer arrays of pass 2 and the guard.
1. each adapter is discovered, its items are cut into work units (row ranges, image ranges, subjects,
   archives) and every unit is validated, filtered by the license policy and spooled to its own
   Parquet shard — in this process, a process pool (`num_proc`) or on Dask (`engine="dask"`);
2. the key columns of the spools (ids, links, picture hashes) are read back, records are grouped
   (patients, cross-source links, id map, duplicate pictures) on integer codes, and each group gets
   a split by a keyed hash of its stable key;
3. the spools are routed into `data/<source>/<split>-*.parquet` and the `all` config, where an image
   several sources describe becomes one record; then the split guard checks the written folder and a
   leaking build is refused.

Crash safety: everything is written to `.<out>.partial` beside the output and swapped in with one
atomic rename exchange (Linux `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, where a crash in
between leaves no output rather than a partial one). A build killed before the swap leaves the
previous output untouched; its finished units stay in the staging folder and the next build with the
same inputs, options and code reuses them (`resume=True`, the default).

Determinism: units are merged in unit order, never completion order, so any `num_proc` or engine
gives the same bytes. The fingerprint is a content hash of the inputs and the code version.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter, AdapterReport
from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable
from covid_cxr_unified.adapters.limits import (
    DEFAULT_MAX_ARCHIVE_MEMBERS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_BYTES,
)
from covid_cxr_unified.harmonize.card import ATTRIBUTION_HEADER, attribution_lines, render_card, render_license_file
from covid_cxr_unified.harmonize.clib import give_back_freed_memory, libc
from covid_cxr_unified.harmonize.croissant import write_croissant
from covid_cxr_unified.harmonize.engine import (
    Engine,
    RunSettings,
    UnitJob,
    UnitResult,
    UnitStats,
    checkpoint,
    code_version,
    run_jobs,
    unit_resume_key,
)
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.features import FEATURES, canonical_json
from covid_cxr_unified.harmonize.groups import NEAR_DUPLICATE_BITS, Grouping, KeyColumns, group_records
from covid_cxr_unified.harmonize.guards import GuardReport, verify_splits
from covid_cxr_unified.harmonize.license_policy import LicensePolicy
from covid_cxr_unified.harmonize.processes import imap_ordered
from covid_cxr_unified.harmonize.report import write_report
from covid_cxr_unified.harmonize.shards import DEFAULT_SHARD_BYTES, ShardWriter, shard_rows
from covid_cxr_unified.harmonize.splits import DEFAULT_SPLIT_KEY, SPLITS, SplitRatios, assign_split
from covid_cxr_unified.harmonize.visuals import render_card_figures
from covid_cxr_unified.schema.record import SCHEMA_VERSION
from covid_cxr_unified.schema.vocab import Source

DEFAULT_OUT = Path("covid_cxr_unified")
_MANIFEST_GROUPS = 4096  # groups.jsonl is written this many groups at a time
_ROW_BATCH = 2_000  # rows read at once where rows become Python objects
BUILD_MARKER = "build_report.json"
ALL_CONFIG = "all"


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
    num_proc: int = 1  # worker processes for the units (1: this process)
    engine: Engine = Engine.LOCAL
    scheduler: str | None = None  # Dask scheduler address; None: a LocalCluster of num_proc workers
    resume: bool = True  # reuse the finished units of an interrupted build with the same inputs and code


@dataclass
class ConfigResult:
    name: str
    split_counts: dict[str, int]
    split_bytes: dict[str, int]  # Parquet bytes on disk
    shards: dict[str, list[str]]  # split -> shard globs relative to the build folder
    licenses: Counter[str]
    report: AdapterReport | None = None  # None for the `all` config
    sha256: dict[str, str] = field(default_factory=dict)  # its own shards: path -> sha256, as written

    def nonempty_splits(self) -> list[str]:
        return [split for split in SPLITS if self.split_counts[split]]


@dataclass
class BuildResult:
    out: Path
    configs: list[ConfigResult]
    fingerprint: str
    guard: GuardReport
    grouping: Grouping
    # Seconds per step and unit counts: kept out of the build folder, which is byte-identical across runs.
    timings: dict[str, float] = field(default_factory=dict)
    units: UnitStats = field(default_factory=UnitStats)


@dataclass
class _Spooled:
    """Pass-1 output of one source (its adapter, with the discovery index, is gone by then)."""

    source: str
    report: AdapterReport
    spools: list[Path] = field(default_factory=list)  # one shard per unit with records, in unit order
    spool_rows: list[int] = field(default_factory=list)  # rows of each spool
    rows: int = 0
    image_bytes: array[int] = field(default_factory=lambda: array("q"))  # per record, -1: no image
    licenses: Counter[str] = field(default_factory=Counter)


@dataclass
class _Plan:
    """Pass 2's decisions, as arrays and the few merges: what pass 3 needs to route the spools."""

    splits: dict[str, np.ndarray]  # source -> split index (into SPLITS) of each spooled record, in spool order
    merges: dict[str, list[str]]  # primary record -> records of other sources that fold into it (`all` config)
    involved: set[str]  # sources with a primary or folded record


def make_adapter(
    spec: SourceSpec, options: BuildOptions, related: dict[Source, Path], workdir: Path | None = None
) -> Adapter:
    return adapter_class(spec.source.value)(
        spec.path,
        images=spec.images,
        metadata_only=options.metadata_only,
        max_image_pixels=options.max_image_pixels,
        max_json_bytes=options.max_json_bytes,
        max_archive_members=options.max_archive_members,
        related=related,
        workdir=workdir,
        num_proc=options.num_proc,
        progress=options.progress,
    )


def build(specs: Sequence[SourceSpec], options: BuildOptions) -> BuildResult:
    """Build every source into `options.out`, replacing a previous build only when this one succeeds."""
    if not specs:
        raise BuildError("nothing to build: give at least one source, e.g. --ieee8023 PATH")
    if options.num_proc < 1:
        raise BuildError(f"num_proc must be at least 1, not {options.num_proc}")
    out = options.out.resolve()
    _check_replaceable(out)
    id_map = _read_id_map(options.id_map) if options.id_map else []
    staging = out.parent / f".{out.name}.partial"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(out.parent / f".{out.name}.lock", out):
            _prepare_staging(staging, options.resume)
            try:
                result = _build_in(staging, specs, options, id_map)
            except Exception:
                shutil.rmtree(staging / "data", ignore_errors=True)  # finished unit spools stay, for a rerun
                raise
            started = time.perf_counter()
            checkpoint("before-swap")
            _swap_in(staging, out)
            result.timings["swap in"] = time.perf_counter() - started
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise BuildError(f"cannot write the build at {out}: {exc.strerror or exc}{where}") from exc
    result.out = out
    return result


@contextlib.contextmanager
def _exclusive(lock: Path, out: Path) -> Iterator[None]:
    """One build at a time per output folder (the lock file stays; it is empty and hidden)."""
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build is writing {out}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_staging(staging: Path, resume: bool) -> None:
    """An empty staging folder; with `resume`, the unit spools of an interrupted build are kept."""
    if staging.is_dir() and resume:
        for child in staging.iterdir():
            if child.name == "spool":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    else:
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        give_back_freed_memory()  # each step starts from what is live, not from the peaks before
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started


def _accounting(reports: Sequence[AdapterReport]) -> str:
    """'ieee8023: 13 items = 0 records + 4 excluded + 9 quarantined (image missing 9)' per source."""
    parts = []
    for r in reports:
        reasons = ", ".join(f"{reason} {n}" for reason, n in r.quarantined.most_common(3))
        parts.append(
            f"{r.source}: {r.input_items} items = {r.records} records + {sum(r.excluded.values())} "
            f"excluded + {sum(r.quarantined.values())} quarantined" + (f" ({reasons})" if reasons else "")
        )
    return "; ".join(parts)


def _build_in(
    staging: Path, specs: Sequence[SourceSpec], options: BuildOptions, id_map: list[tuple[str, str]]
) -> BuildResult:
    timer = _Timer()
    spooled, stats, inputs = _pass_one(staging, specs, options, id_map, timer)
    shutil.rmtree(staging / "index", ignore_errors=True)  # the adapters' discovery indexes
    if not any(s.rows for s in spooled):
        raise BuildError(f"nothing to build: no source gave a record ({_accounting([s.report for s in spooled])})")
    with timer.step("pass 2: groups and splits"):
        keys = _SpoolColumns([spool for s in spooled for spool in s.spools])
        grouping = group_records(keys, id_map, options.near_duplicate_bits)
        give_back_freed_memory()
        split = _assign_splits(grouping, options)
        record_ids = keys.column("record_id")
        _write_manifest(staging / "splits" / "groups.jsonl", record_ids, grouping, split)
        plan = _plan(spooled, keys, record_ids, split)
        del record_ids
    checkpoint("before-route")
    with timer.step("pass 3: route shards"):
        configs = _write_configs(spooled, plan, staging, options)
        _write_attribution(staging / "ATTRIBUTION.md", spooled)
    shutil.rmtree(staging / "spool")
    checkpoint("before-guard")
    with timer.step("split guard"):
        guard = verify_splits(staging, options.near_duplicate_bits)
        guard.raise_for_leaks()
    fingerprint = _fingerprint(inputs)
    with timer.step("report"):
        write_report(staging, configs, fingerprint, guard, grouping)
    bar = tqdm(total=len(configs), desc="card figures", unit=" configs", disable=not options.progress)
    with timer.step("card figures"), bar:
        calls = [(_figures, staging, c.name, c.shards) for c in configs]
        figures = {}
        for config, drawn in zip(configs, imap_ordered(calls, options.num_proc), strict=True):
            figures[config.name] = drawn
            bar.update()
    with timer.step("card, croissant, licenses"):
        (staging / "README.md").write_text(render_card(configs, fingerprint, guard, figures), encoding="utf-8")
        written = {path: digest for c in configs for path, digest in c.sha256.items()}
        data_files = {c.name: c.shards for c in configs}
        write_croissant(staging, data_files=data_files, sha256=written)
        (staging / "LICENSE.md").write_text(render_license_file(configs), encoding="utf-8")
    return BuildResult(
        out=staging,
        configs=configs,
        fingerprint=fingerprint,
        guard=guard,
        grouping=grouping,
        timings=timer.timings,
        units=stats,
    )


# --- pass 1: units -> validate, filter, spool --------------------------------------------------------


def _pass_one(
    staging: Path, specs: Sequence[SourceSpec], options: BuildOptions, id_map: list[tuple[str, str]], timer: _Timer
) -> tuple[list[_Spooled], UnitStats, list[str]]:
    """Discover every source and run its units. The adapters, with their discovery indexes (the
    larger part of a build's memory), are dropped on return: later passes need only their reports."""
    paths = {spec.source: spec.path for spec in specs}
    # Discovery indexes live in the staging folder, which every worker (Dask included) can read.
    workdir = staging / "index"
    adapters = [make_adapter(spec, options, paths, workdir) for spec in sorted(specs, key=lambda s: s.source)]
    with timer.step("discover"):
        for adapter in tqdm(adapters, desc="discover", unit=" sources", disable=not options.progress):
            adapter.discover()
    with timer.step("pass 1: units"):
        return _run_units(adapters, staging, options, id_map)


def _options_digest(options: BuildOptions, id_map: list[tuple[str, str]]) -> str:
    """Every option that changes the build's bytes (not out, progress, num_proc, engine or resume)."""
    chosen = {
        "metadata_only": options.metadata_only,
        "ratios": [options.ratios.train, options.ratios.validation, options.ratios.test],
        "split_key": hashlib.sha256(options.split_key.encode()).hexdigest(),
        "license_policy": options.license_policy.value,
        "id_map": id_map,
        "near_duplicate_bits": options.near_duplicate_bits,
        "max_shard_bytes": options.max_shard_bytes,
        "max_image_pixels": options.max_image_pixels,
        "max_json_bytes": options.max_json_bytes,
        "max_archive_members": options.max_archive_members,
    }
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def _run_units(
    adapters: list[Adapter], staging: Path, options: BuildOptions, id_map: list[tuple[str, str]]
) -> tuple[list[_Spooled], UnitStats, list[str]]:
    """Run every unit of every source and merge the results in unit order. Also returns the lines the
    fingerprint hashes: code version, options, each source's table checksum, each unit's image digest."""
    checksums = {adapter.name.value: adapter.source_checksum() for adapter in adapters}
    inputs = [f"code {code_version()} schema {SCHEMA_VERSION}", f"options {_options_digest(options, id_map)}"]
    inputs += [f"source {name} {checksum}" for name, checksum in sorted(checksums.items())]
    context = "\n".join(inputs)
    jobs: list[UnitJob] = []
    units: dict[str, list[UnitJob]] = {}
    for adapter in adapters:
        name = adapter.name.value
        folder = staging / "spool" / name
        folder.mkdir(parents=True, exist_ok=True)
        units[name] = [
            UnitJob(name, unit, str(folder), unit_resume_key(context, name, unit, adapter.unit_checksum(unit)))
            for unit in adapter.units()
        ]
        jobs += units[name]
    _remove_stale_spools(staging / "spool", units)
    stats = UnitStats()
    settings = RunSettings(
        policy=options.license_policy,
        num_proc=options.num_proc,
        engine=Engine(options.engine),
        scheduler=options.scheduler,
        progress=options.progress,
    )
    results = run_jobs({a.name.value: a for a in adapters}, jobs, settings, stats)
    spooled = []
    for adapter in adapters:
        name = adapter.name.value
        one = _Spooled(source=name, report=adapter.report)
        for job in units[name]:
            result = results[(name, job.unit.index)]
            _merge(one, result)
            adapter.absorb(result.delta)
            inputs.append(f"unit {name} {job.unit.key} {result.delta.digest}")
        adapter.finish()
        spooled.append(one)
    return spooled, stats, inputs


def _figures(staging: Path, name: str, shards: dict[str, list[str]]) -> Any:
    return render_card_figures(staging, name, shards=shards)


def _merge(spooled: _Spooled, result: UnitResult) -> None:
    if result.spool is not None:
        spooled.spools.append(result.spool)
        spooled.spool_rows.append(result.rows)
    spooled.rows += result.rows
    spooled.image_bytes.extend(result.image_bytes)
    spooled.licenses.update(result.licenses)


def _remove_stale_spools(spool: Path, units: dict[str, list[UnitJob]]) -> None:
    """Spool files of sources or units this build does not have (an earlier build of other inputs)."""
    for folder in spool.iterdir() if spool.is_dir() else ():
        if folder.name not in units:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        known = {f"{job.unit.index:05d}" for job in units[folder.name]}
        for path in folder.iterdir():
            if path.name[:5] not in known:
                path.unlink()


def _spool_batches(spools: list[Path]) -> Iterator[tuple[int, pa.Table]]:
    """(position of its first row among the spools' rows, table) row group by row group: bounded by
    the writer's row-group limits (shards.ROW_GROUP_*)."""
    start = 0
    for spool in spools:
        parquet = pq.ParquetFile(spool)
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group)
            yield start, table
            start += table.num_rows


# --- pass 2: groups and splits ---------------------------------------------------------------------


@dataclass(frozen=True)
class _SpoolColumns:
    """Columns of every spooled record, source by source in unit order, read from the spools when
    asked for: a step holds only the columns it works on."""

    spools: list[Path]

    def column(self, name: str) -> pa.ChunkedArray:
        columns = [pq.ParquetFile(spool).read(columns=[name]).column(name) for spool in self.spools]
        return pa.chunked_array([chunk for column in columns for chunk in column.chunks], type=columns[0].type)


def _assign_splits(grouping: Grouping, options: BuildOptions) -> np.ndarray:
    """The split index (into SPLITS) of every record: its group's, by a keyed hash of the group key."""
    roots, record_root = np.unique(grouping.root[grouping.record_patient], return_inverse=True)
    names = [assign_split(grouping.group_key(int(root)), options.ratios, options.split_key) for root in roots]
    of_root = np.asarray([SPLITS.index(name) for name in names], dtype=np.int8)
    split: np.ndarray = of_root[record_root.reshape(-1)]
    return split


def _write_manifest(path: Path, record_ids: pa.ChunkedArray, grouping: Grouping, split: np.ndarray) -> None:
    """The realized assignment as data: one line per group (by key) with its patients, records and split."""
    roots = grouping.root[grouping.record_patient]
    by_id = np.empty(len(record_ids), dtype=np.int64)
    by_id[np.asarray(pc.array_sort_indices(record_ids))] = np.arange(len(record_ids))
    order = np.lexsort((by_id, roots))  # by group key (patients are sorted), then by record id
    starts = [*np.flatnonzero(np.r_[True, roots[order][1:] != roots[order][:-1]]).tolist(), len(order)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for first in range(0, len(starts) - 1, _MANIFEST_GROUPS):  # a block of groups at a time
            bounds = starts[first : first + _MANIFEST_GROUPS + 1]
            rows = order[bounds[0] : bounds[-1]]
            ids = record_ids.take(pa.array(rows)).to_pylist()
            patients = grouping.patients.take(pa.array(grouping.record_patient[rows])).to_pylist()
            for start, stop in pairwise(bounds):
                a, b = start - bounds[0], stop - bounds[0]
                line = {
                    "group": grouping.group_key(int(roots[rows[a]])),
                    "split": SPLITS[split[rows[a]]],
                    "patients": sorted(set(patients[a:b])),
                    "records": ids[a:b],
                }
                handle.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")


def _plan(spooled: list[_Spooled], keys: KeyColumns, record_ids: pa.ChunkedArray, split: np.ndarray) -> _Plan:
    ends = np.cumsum([s.rows for s in spooled]).tolist()
    splits = {s.source: split[end - s.rows : end] for s, end in zip(spooled, ends, strict=True)}
    merges = _merge_plan(keys.column("links"), record_ids)
    folded = {r for rs in merges.values() for r in rs}
    touched = pc.is_in(record_ids, value_set=pa.array([*merges, *folded], pa.string()))
    involved = set(pc.unique(keys.column("source").filter(touched)).to_pylist())
    return _Plan(splits, merges, involved)


def _merge_plan(links: pa.ChunkedArray, record_ids: pa.ChunkedArray) -> dict[str, list[str]]:
    """primary record -> the records of other sources that show the same image and fold into it: a
    record's `same_image` link targets present in the build, the smallest of which is its primary,
    unless that one itself links on (no chains)."""
    combined = links.combine_chunks()
    flat = pc.list_flatten(combined)
    if not pa.types.is_struct(flat.type):
        return {}
    same = pc.fill_null(pc.equal(flat.field("relation"), "same_image"), False)
    linking = record_ids.take(pc.list_parent_indices(combined).filter(same))
    targets = flat.field("record_id").filter(same)
    found = record_ids.filter(pc.is_in(record_ids, value_set=pc.unique(targets)))  # hashes the targets only
    present = pc.fill_null(pc.is_in(targets, value_set=found.combine_chunks()), False)
    primary_of: dict[str, str] = {}
    for record_id, target in zip(linking.filter(present).to_pylist(), targets.filter(present).to_pylist(), strict=True):
        primary_of[record_id] = min(primary_of.get(record_id, target), target)
    linkers = set(linking.to_pylist())
    plan: dict[str, list[str]] = defaultdict(list)
    for record_id, primary in primary_of.items():
        if primary not in linkers:
            plan[primary].append(record_id)
    return {primary: sorted(folded) for primary, folded in plan.items()}


# --- pass 3: route spools into configs ------------------------------------------------------------


def _split_writers(staging: Path, config: str, options: BuildOptions) -> dict[str, ShardWriter]:
    return {split: ShardWriter(staging / "data" / config, split, options.max_shard_bytes) for split in SPLITS}


def _route(table: pa.Table, split: np.ndarray, writers: dict[str, ShardWriter]) -> None:
    """Each row of `table` to the writer of its split (`split`: one index into SPLITS per row)."""
    for index, writer in enumerate(writers.values()):
        writer.write_table(table.filter(pa.array(split == index)))


@dataclass(frozen=True)
class _SplitShards:
    """The shards of one split of a config, as written."""

    rows: int = 0
    bytes: int = 0
    paths: list[str] = field(default_factory=list)  # relative to the build folder
    sha256: dict[str, str] = field(default_factory=dict)  # path -> sha256

    def __add__(self, other: _SplitShards) -> _SplitShards:
        return _SplitShards(
            self.rows + other.rows, self.bytes + other.bytes, self.paths + other.paths, self.sha256 | other.sha256
        )


def _closed(writer: ShardWriter, staging: Path) -> _SplitShards:
    paths = writer.close()
    named = {path: path.relative_to(staging).as_posix() for path in paths}
    sha256 = {named[path]: digest for path, digest in writer.sha256.items()}
    return _SplitShards(writer.rows, sum(path.stat().st_size for path in paths), list(named.values()), sha256)


def _config_result(
    name: str, splits: dict[str, _SplitShards], licenses: Counter[str], report: AdapterReport | None = None
) -> ConfigResult:
    return ConfigResult(
        name,
        {split: splits[split].rows for split in SPLITS},
        {split: splits[split].bytes for split in SPLITS},
        {split: splits[split].paths for split in SPLITS},
        licenses,
        report,
        {path: digest for split in SPLITS for path, digest in splits[split].sha256.items()},
    )


@dataclass(frozen=True)
class _Stretch:
    """Records first..stop of a source, in spool order, that hold exactly one of its train shards
    (planned from the records' image bytes). Each stretch is written on its own, in any process: its
    train shard, and its validation and test rows into segments, which one call per split then
    writes into shards (those rows lie among all the spools: reading every spool again for them would
    double the reads)."""

    config: str
    index: int
    first: int
    stop: int
    train_shards: int  # of the config; 0: it has no train rows (a single stretch then holds every record)

    @property
    def train_path(self) -> str:
        return f"data/{self.config}/train-{self.index:05d}-of-{self.train_shards:05d}.parquet"

    def segment(self, staging: Path, split: str) -> Path:
        return staging / "segments" / self.config / f"{split}-{self.index:05d}"


@dataclass(frozen=True)
class _Written:
    """A written stretch: its train shard, and its validation and test segments (split -> file)."""

    train: _SplitShards
    segments: dict[str, Path]


def _stretches(spooled: _Spooled, split: np.ndarray, options: BuildOptions) -> list[_Stretch]:
    """A stretch per train shard of a source config: the shards one ShardWriter makes of its train records."""
    image_bytes = np.frombuffer(spooled.image_bytes, dtype=np.int64)
    train = np.flatnonzero(split == SPLITS.index("train"))
    counts = shard_rows(image_bytes[train], options.max_shard_bytes)
    firsts = np.cumsum([0, *counts])[1:-1]  # among the train records, where shards 1.. start
    cuts = [0, *train[firsts].tolist(), len(split)]
    return [_Stretch(spooled.source, k, cuts[k], cuts[k + 1], len(counts)) for k in range(len(cuts) - 1)]


def _write_stretch(
    spools: list[Path], spool_rows: list[int], split: np.ndarray, stretch: _Stretch, staging: Path
) -> _Written:
    scratch = staging / f"{stretch.train_path}.parts"
    writers = {"train": ShardWriter.one_file(scratch, "train")}
    for name in SPLITS[1:]:
        writers[name] = ShardWriter.one_file(stretch.segment(staging, name), name, spool=True)
    for start, table in _spool_rows_between(spools, spool_rows, stretch.first, stretch.stop):
        _route(table, split[start : start + table.num_rows], writers)
    train = _closed(writers["train"], scratch)
    if train.paths:  # its one file, under the planned name
        (written,) = train.paths
        (scratch / written).rename(staging / stretch.train_path)
        scratch.rmdir()
        train = _SplitShards(train.rows, train.bytes, [stretch.train_path], {stretch.train_path: train.sha256[written]})
    segments = {name: path for name in SPLITS[1:] for path in writers[name].close()}
    give_back_freed_memory()
    return _Written(train, segments)


def _spool_rows_between(
    spools: list[Path], spool_rows: list[int], first: int, stop: int
) -> Iterator[tuple[int, pa.Table]]:
    """(position of its first row, its rows within first..stop) of each spool row group that has some,
    in spool order; the other spools and row groups are not read."""
    start = 0
    for spool, rows in zip(spools, spool_rows, strict=True):
        if start < stop and first < start + rows:
            parquet = pq.ParquetFile(spool)
            for group in range(parquet.metadata.num_row_groups):
                n = parquet.metadata.row_group(group).num_rows
                a, b = max(first, start), min(stop, start + n)
                if a < b:
                    yield a, parquet.read_row_group(group).slice(a - start, b - a)
                start += n
        else:
            start += rows


def _write_split(segments: list[Path], config: str, split: str, staging: Path, options: BuildOptions) -> _SplitShards:
    """The validation or test split of a source config, from its segments in stretch order."""
    writer = ShardWriter(staging / "data" / config, split, options.max_shard_bytes)
    for _, table in _spool_batches(segments):
        writer.write_table(table)
    return _closed(writer, staging)


def _folded_rows(spooled: list[_Spooled], folded: set[str], scratch: Path) -> DiskTable:
    """The rows (a few columns) of the records that fold into a primary, by record id, on disk: their
    masks can be large and there is one per annotated image."""
    columns = ["record_id", "source", "patient_id", "masks", "provenance"]
    wanted = pa.array(sorted(folded), pa.string())
    rows = DiskIndex(scratch, name="folded").table("rows")
    for s in spooled:
        for spool in s.spools:
            for batch in pq.ParquetFile(spool).iter_batches(batch_size=_ROW_BATCH, columns=columns):
                hit = batch.filter(pc.is_in(batch.column("record_id"), value_set=wanted))
                rows.update((row["record_id"], row) for row in hit.to_pylist())
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


def _merge_batch(
    table: pa.Table, plan: dict[str, list[str]], folded: set[str], extra: DiskTable
) -> tuple[pa.Table, np.ndarray]:
    """The batch without folded records, its primaries merged, and the batch rows it kept; only merged
    rows become Python objects."""
    ids = table.column("record_id").to_pylist()
    kept = [i for i, rid in enumerate(ids) if rid not in folded]
    merging = [i for i in kept if ids[i] in plan]
    if not merging:
        return table.take(pa.array(kept, type=pa.int64())).cast(FEATURES.arrow_schema), np.asarray(kept, dtype=np.int64)
    plain = [i for i in kept if ids[i] not in plan]
    merged = [_merged(row, [extra[r] for r in plan[row["record_id"]]]) for row in table.take(merging).to_pylist()]
    combined = pa.concat_tables(
        [
            table.take(pa.array(plain, type=pa.int64())).cast(FEATURES.arrow_schema),
            pa.Table.from_pylist(merged, schema=FEATURES.arrow_schema),
        ]
    )
    position = {i: k for k, i in enumerate(plain + merging)}
    return combined.take(pa.array([position[i] for i in kept], type=pa.int64())), np.asarray(kept, dtype=np.int64)


def _write_all_shards(
    spooled: list[_Spooled], plan: _Plan, staging: Path, options: BuildOptions
) -> tuple[dict[str, _SplitShards], Counter[str]]:
    """The `all` config's own shards: the sources with merged images, merged (runs in any process)."""
    folded = {r for rs in plan.merges.values() for r in rs}
    involved = [s for s in spooled if s.source in plan.involved]
    extra = _folded_rows(involved, folded, staging / "spool")
    writers = _split_writers(staging, ALL_CONFIG, options)
    licenses: Counter[str] = Counter()
    for s in involved:
        for start, table in _spool_batches(s.spools):
            rows, kept = _merge_batch(table, plan.merges, folded, extra)
            licenses.update(rows.column("license_id").to_pylist())
            if rows.num_rows:
                _route(rows, plan.splits[s.source][start + kept], writers)
    return {split: _closed(writer, staging) for split, writer in writers.items()}, licenses


def _write_configs(spooled: list[_Spooled], plan: _Plan, staging: Path, options: BuildOptions) -> list[ConfigResult]:
    """Every config, `num_proc` processes at once: first the stretches of every source config (see
    `_Stretch`), then the `all` config's own shards and the source configs' validation and test splits."""
    stretches = [(s, stretch) for s in spooled for stretch in _stretches(s, plan.splits[s.source], options)]
    later = [(s, name) for s in spooled for name in SPLITS[1:]]
    involved = sum(s.rows for s in spooled if s.source in plan.involved)
    later_rows = [int((plan.splits[s.source] == SPLITS.index(name)).sum()) for s, name in later]
    total = sum(s.rows for s in spooled) + involved + sum(later_rows)
    with tqdm(total=total, desc="route shards", unit=" records", disable=not options.progress) as bar:
        calls: list[tuple[Any, ...]] = [
            (_write_stretch, s.spools, s.spool_rows, plan.splits[s.source], t, staging) for s, t in stretches
        ]
        done = _run_counted(calls, [t.stop - t.first for _, t in stretches], options.num_proc, bar)
        written = {s.source: [w for (owner, _), w in zip(stretches, done, strict=True) if owner is s] for s in spooled}
        calls = [(_write_all_shards, spooled, plan, staging, options)]
        for s, name in later:
            segments = [w.segments[name] for w in written[s.source] if name in w.segments]
            calls.append((_write_split, segments, s.source, name, staging, options))
        (all_splits, licenses), *closed = _run_counted(calls, [involved, *later_rows], options.num_proc, bar)
    shutil.rmtree(staging / "segments", ignore_errors=True)
    configs = []
    for s in spooled:
        train = sum((w.train for w in written[s.source]), _SplitShards())
        mine = {name: shards for (owner, name), shards in zip(later, closed, strict=True) if owner is s}
        configs.append(_config_result(s.source, {"train": train, **mine}, s.licenses, s.report))
    for config in configs:  # the `all` config lists the shards of the sources without merged images
        if config.name not in plan.involved:
            licenses.update(config.licenses)
            for split in SPLITS:
                listed = _SplitShards(config.split_counts[split], config.split_bytes[split], config.shards[split])
                all_splits[split] += listed
    return [*configs, _config_result(ALL_CONFIG, all_splits, licenses)]


def _run_counted(calls: list[tuple[Any, ...]], records: list[int], num_proc: int, bar: tqdm[Any]) -> list[Any]:
    """The results of the calls (see `imap_ordered`); the bar moves on by each call's records as it ends."""
    results = []
    for count, result in zip(records, imap_ordered(calls, num_proc), strict=True):
        results.append(result)
        bar.update(count)
    return results


def _write_attribution(path: Path, spooled: list[_Spooled]) -> None:
    """ATTRIBUTION.md: one credit line per record, by record id. SQLite sorts them on disk (within its
    small page cache), so the credits never sit in memory together."""
    columns = ["record_id", "license_id", "attribution"]
    scratch = path.parent / ".credits.sqlite"
    with contextlib.closing(sqlite3.connect(scratch)) as db:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE credit (record_id TEXT, license_id TEXT, attribution TEXT)")
        for spool in (spool for s in spooled for spool in s.spools):
            for batch in pq.ParquetFile(spool).iter_batches(batch_size=_ROW_BATCH, columns=columns):
                ids, licenses, credits = (batch.column(i).to_pylist() for i in range(3))
                rows = zip(ids, licenses, (credit or "" for credit in credits), strict=True)
                db.executemany("INSERT INTO credit VALUES (?, ?, ?)", rows)
        with path.open("w", encoding="utf-8") as handle:
            handle.write(ATTRIBUTION_HEADER)
            handle.writelines(attribution_lines(db.execute(f"SELECT * FROM credit ORDER BY {', '.join(columns)}")))
    scratch.unlink()


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


def _fingerprint(inputs: list[str]) -> str:
    """A content hash of the inputs and the code: code version, options, each source's tables (or
    verified archive sha1 list) and, per unit, the sha256 of every image read (hashed once, as read)."""
    return hashlib.sha256("".join(f"{line}\n" for line in inputs).encode(errors="surrogateescape")).hexdigest()


def _check_replaceable(out: Path) -> None:
    if out.exists() and not (out / BUILD_MARKER).is_file():
        if out.is_dir() and not any(out.iterdir()):
            return
        raise BuildError(f"{out} exists and is not a covid-cxr build; choose another --out or remove it")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(libc(), "renameat2", None)
    if renameat2 is None:
        return False
    return bool(renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0)


def _swap_in(staging: Path, out: Path) -> None:
    """Make `staging` the output in one step; the previous output is removed only afterwards."""
    previous = out.parent / f".{out.name}.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if out.exists() and _exchange(staging, out):
        checkpoint("after-swap")
        shutil.rmtree(staging, ignore_errors=True)  # the previous build, now at the staging path
        return
    if out.exists():  # no atomic exchange here: a crash between the renames leaves no output, not a partial one
        out.replace(previous)
        checkpoint("mid-swap")
    staging.replace(out)
    checkpoint("after-swap")
    shutil.rmtree(previous, ignore_errors=True)
