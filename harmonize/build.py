"""The build: sources -> validated records -> Parquet shards per config and split -> card + report.

Three streaming passes; image bytes live only inside the unit that reads them, while the light
per-record keys (ids, links, hashes) are kept in memory and grow with the number of records:
1. each adapter is discovered, its items are cut into work units (row ranges, image ranges, subjects,
   archives) and every unit is validated, filtered by the license policy and spooled to its own
   Parquet shard — in this process, a process pool (`num_proc`) or on Dask (`engine="dask"`) — while
   the few keys grouping needs (ids, links, picture hashes) come back to be merged in unit order;
2. records are grouped (patients, cross-source links, id map, duplicate pictures) and each group gets
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
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter, AdapterReport
from covid_cxr_unified.adapters.limits import (
    DEFAULT_MAX_ARCHIVE_MEMBERS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_BYTES,
)
from covid_cxr_unified.harmonize.card import render_attribution, render_card, render_license_file
from covid_cxr_unified.harmonize.croissant import write_croissant
from covid_cxr_unified.harmonize.engine import (
    Engine,
    RunSettings,
    UnitJob,
    UnitResult,
    UnitStats,
    checkpoint,
    code_version,
    map_ordered,
    run_jobs,
    unit_resume_key,
)
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.features import FEATURES, canonical_json
from covid_cxr_unified.harmonize.groups import NEAR_DUPLICATE_BITS, Grouping, RecordKeys, group_records
from covid_cxr_unified.harmonize.guards import GuardReport, verify_splits
from covid_cxr_unified.harmonize.license_policy import LicensePolicy
from covid_cxr_unified.harmonize.report import write_report
from covid_cxr_unified.harmonize.shards import DEFAULT_SHARD_BYTES, ShardWriter
from covid_cxr_unified.harmonize.splits import DEFAULT_SPLIT_KEY, SPLITS, SplitRatios, assign_split
from covid_cxr_unified.harmonize.visuals import render_card_figures
from covid_cxr_unified.schema.record import SCHEMA_VERSION
from covid_cxr_unified.schema.vocab import Source

DEFAULT_OUT = Path("covid_cxr_unified")
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
    keys: list[RecordKeys] = field(default_factory=list)
    same_image: dict[str, tuple[str, ...]] = field(default_factory=dict)
    licenses: Counter[str] = field(default_factory=Counter)
    credits: list[tuple[str, str, str]] = field(default_factory=list)  # record_id, license_id, attribution


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
    keys = [key for s in spooled for key in s.keys]
    if not keys:
        raise BuildError(f"nothing to build: no source gave a record ({_accounting([s.report for s in spooled])})")
    with timer.step("pass 2: groups and splits"):
        grouping = group_records(keys, id_map, options.near_duplicate_bits)
        split_of = _assign_splits(keys, grouping, options)
        _write_manifest(staging / "splits" / "groups.jsonl", keys, grouping, split_of)
    checkpoint("before-route")
    with timer.step("pass 3: route shards"):
        configs = _write_configs(spooled, split_of, staging, options)
    shutil.rmtree(staging / "spool")
    checkpoint("before-guard")
    with timer.step("split guard"):
        guard = verify_splits(staging, options.near_duplicate_bits)
        guard.raise_for_leaks()
    fingerprint = _fingerprint(inputs)
    with timer.step("report"):
        write_report(staging, configs, fingerprint, guard, grouping)
    with timer.step("card figures"):
        calls = [(_figures, staging, c.name, c.shards) for c in configs]
        figures = dict(zip([c.name for c in configs], map_ordered(calls, options.num_proc), strict=True))
    with timer.step("card, croissant, licenses"):
        (staging / "README.md").write_text(render_card(configs, fingerprint, guard, figures), encoding="utf-8")
        write_croissant(staging, data_files={c.name: c.shards for c in configs})
        (staging / "LICENSE.md").write_text(render_license_file(configs), encoding="utf-8")
        credits = sorted(credit for s in spooled for credit in s.credits)
        (staging / "ATTRIBUTION.md").write_text(render_attribution(credits), encoding="utf-8")
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
    spooled.keys += result.keys
    spooled.same_image.update(result.same_image)
    spooled.licenses.update(result.licenses)
    spooled.credits += result.credits


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


def _spool_batches(spools: list[Path]) -> Iterator[pa.Table]:
    """Row group by row group: bounded by the writer's row-group limits (shards.ROW_GROUP_*)."""
    for spool in spools:
        parquet = pq.ParquetFile(spool)
        for group in range(parquet.metadata.num_row_groups):
            yield parquet.read_row_group(group)


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
    name = spooled.source
    writers = _split_writers(staging, name, options)
    with tqdm(total=len(spooled.keys), desc=f"route {name}", unit=" records", disable=not options.progress) as bar:
        for table in _spool_batches(spooled.spools):
            _route(table, split_of, writers)
            bar.update(table.num_rows)
    counts, sizes, shards = _close(writers, staging)
    return ConfigResult(name, counts, sizes, shards, spooled.licenses, spooled.report)


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
        if not any(k.record_id in secondaries for k in s.keys):
            continue
        for spool in s.spools:
            for row in pq.read_table(spool, columns=columns).to_pylist():
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


def _merge_batch(
    table: pa.Table, plan: dict[str, list[str]], secondaries: set[str], extra: dict[str, dict[str, Any]]
) -> pa.Table:
    """The batch without secondary records, its primaries merged; only merged rows become Python objects."""
    ids = table.column("record_id").to_pylist()
    kept = [i for i, rid in enumerate(ids) if rid not in secondaries]
    merging = [i for i in kept if ids[i] in plan]
    if not merging:
        return table.take(pa.array(kept, type=pa.int64())).cast(FEATURES.arrow_schema)
    plain = [i for i in kept if ids[i] not in plan]
    merged = [_merged(row, [extra[r] for r in plan[row["record_id"]]]) for row in table.take(merging).to_pylist()]
    combined = pa.concat_tables(
        [
            table.take(pa.array(plain, type=pa.int64())).cast(FEATURES.arrow_schema),
            pa.Table.from_pylist(merged, schema=FEATURES.arrow_schema),
        ]
    )
    position = {i: k for k, i in enumerate(plain + merging)}
    return combined.take(pa.array([position[i] for i in kept], type=pa.int64()))


_AllShards = tuple[dict[str, int], dict[str, int], dict[str, list[str]], Counter[str], set[str]]


def _write_all_shards(
    spooled: list[_Spooled], split_of: dict[str, str], staging: Path, options: BuildOptions
) -> _AllShards:
    """The `all` config's own shards: the sources with merged images, merged (runs in any process)."""
    plan = _merge_plan(spooled)
    secondaries = {r for rs in plan.values() for r in rs}
    involved = {k.source for s in spooled for k in s.keys if k.record_id in plan or k.record_id in secondaries}
    extra = _secondary_rows(spooled, secondaries)
    writers = _split_writers(staging, ALL_CONFIG, options)
    licenses: Counter[str] = Counter()
    for s in spooled:
        if s.source not in involved:
            continue
        for table in _spool_batches(s.spools):
            rows = _merge_batch(table, plan, secondaries, extra)
            licenses.update(rows.column("license_id").to_pylist())
            if rows.num_rows:
                _route(rows, split_of, writers)
    counts, sizes, shards = _close(writers, staging)
    return counts, sizes, shards, licenses, involved


def _write_configs(
    spooled: list[_Spooled], split_of: dict[str, str], staging: Path, options: BuildOptions
) -> list[ConfigResult]:
    """Every config; with num_proc > 1 the configs are written by that many processes at once."""
    calls: list[tuple[Any, ...]] = [(_write_source_config, s, split_of, staging, options) for s in spooled]
    calls.append((_write_all_shards, spooled, split_of, staging, options))
    *configs, all_shards = map_ordered(calls, options.num_proc)
    counts, sizes, shards, licenses, involved = all_shards
    for config in configs:
        if config.name not in involved:
            licenses.update(config.licenses)
            for split in SPLITS:
                counts[split] += config.split_counts[split]
                sizes[split] += config.split_bytes[split]
                shards[split] += config.shards[split]
    return [*configs, ConfigResult(ALL_CONFIG, counts, sizes, shards, licenses)]


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
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError, TypeError):
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
