"""Running the work units of every source: in this process, in a process pool, or on a Dask cluster.

A unit (see `adapters.base.WorkUnit`) is processed on a copy of its discovered adapter and writes one
spool shard `spool/<source>/<index>.parquet` plus its manifest `<index>.json` (record keys, links,
licenses, counts, a digest of the image bytes it read). The manifest is written last, atomically: a
unit is finished iff its manifest exists, so an interrupted build resumes from the finished units
whose `resume_key` (code version, options, the content hash of every source's tables and the unit's
own input checksum) still matches. Results are merged in unit order, never in completion order, so
the output does not depend on scheduling.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import pickle
import signal
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from tqdm import tqdm

from covid_cxr_unified.adapters.base import Adapter, AdapterReport, ItemNote, UnitDelta, WorkUnit
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.features import record_to_row
from covid_cxr_unified.harmonize.license_policy import LicensePolicy, record_permitted
from covid_cxr_unified.harmonize.shards import ShardWriter, row_image_bytes
from covid_cxr_unified.schema.record import Record

KILL_ENV = "COVID_CXR_UNIFIED_KILL_AT"  # test hook: SIGKILL the build at the named checkpoint
MANIFEST_VERSION = 3  # 2: keys and credits are read from the spool, not listed here; 3: image_bytes


class Engine(StrEnum):
    LOCAL = "local"  # this process (num_proc 1) or a local process pool
    DASK = "dask"


def checkpoint(name: str) -> None:
    """Crash-safety tests name a checkpoint in KILL_ENV; the build kills itself there, uncatchably."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class UnitJob:
    source: str
    unit: WorkUnit
    folder: str  # spool folder of the source
    resume_key: str

    @property
    def manifest(self) -> Path:
        return Path(self.folder) / f"{self.unit.index:05d}.json"


@dataclass
class UnitResult:
    """A finished unit, as read back from its manifest."""

    spool: Path | None  # the unit's records; pass 2 reads grouping keys and credits from its columns
    rows: int
    image_bytes: array[int]  # per row: the bytes of its image, -1 for none (8 bytes each, not a Python int)
    licenses: Counter[str]
    delta: UnitDelta
    resumed: bool = False


@dataclass
class UnitStats:
    processed: int = 0
    resumed: int = 0
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)


# --- one unit ----------------------------------------------------------------------------------------


def _policy_filter(policy: LicensePolicy) -> Callable[[Record], str | None] | None:
    if policy is LicensePolicy.ANY:
        return None

    def exclude(record: Record) -> str | None:
        return None if record_permitted(record, policy) else f"license policy '{policy.value}': not granted"

    return exclude


def run_unit_job(
    adapter: Adapter, job: UnitJob, policy: LicensePolicy, tick: Callable[[], object] | None = None
) -> dict[str, Any]:
    """Process one unit into its spool shard and manifest; return the manifest. Runs in any process."""
    folder = Path(job.folder)
    worker = adapter.unit_worker()
    writer = ShardWriter.one_file(folder, f"{job.unit.index:05d}", spool=True)
    licenses: Counter[str] = Counter()
    image_bytes = []  # per row, so that pass 3 can plan the shards without reading the images
    for emitted in worker.run_unit(job.unit, _policy_filter(policy), tick):
        row = record_to_row(emitted.record, emitted.image_bytes)
        writer.write(row)
        image_bytes.append(row_image_bytes(row))
        licenses[emitted.record.license.license_id] += 1
    paths = writer.close()
    delta = worker.delta()
    manifest = {
        "version": MANIFEST_VERSION,
        "unit": job.unit.key,
        "resume_key": job.resume_key,
        "spool": paths[0].name if paths else None,
        "rows": writer.rows,
        "image_bytes": image_bytes,
        "licenses": dict(licenses),
        "report": _report_json(delta.report),
        "state": {name: _state_json(value) for name, value in delta.state.items()},
        "digest": delta.digest,
    }
    partial = job.manifest.with_suffix(".json.partial")
    partial.write_text(json.dumps(manifest, sort_keys=True), encoding="ascii")  # \\u-escapes any surrogate
    partial.replace(job.manifest)
    return manifest


def _report_json(report: AdapterReport) -> dict[str, Any]:
    return {
        "input_items": report.input_items,
        "records": report.records,
        "excluded": dict(report.excluded),
        "quarantined": dict(report.quarantined),
        "unmapped": {name: dict(counter) for name, counter in report.unmapped.items()},
        "flags": dict(report.flags),
        "excluded_items": [vars(note) for note in report.excluded_items],
        "quarantined_items": [vars(note) for note in report.quarantined_items],
        "notes": report.notes,
    }


def _report_from_json(source: str, data: dict[str, Any]) -> AdapterReport:
    return AdapterReport(
        source=source,
        input_items=data["input_items"],
        records=data["records"],
        excluded=Counter(data["excluded"]),
        quarantined=Counter(data["quarantined"]),
        unmapped={name: Counter(counts) for name, counts in data["unmapped"].items()},
        flags=Counter(data["flags"]),
        excluded_items=[ItemNote(**note) for note in data["excluded_items"]],
        quarantined_items=[ItemNote(**note) for note in data["quarantined_items"]],
        notes=data["notes"],
    )


def _state_json(value: Any) -> Any:
    if isinstance(value, set):
        return sorted(value)
    if isinstance(value, Counter):
        return dict(value)
    return value


def _result(job: UnitJob, manifest: dict[str, Any], resumed: bool) -> UnitResult:
    return UnitResult(
        spool=None if manifest["spool"] is None else Path(job.folder) / manifest["spool"],
        rows=manifest["rows"],
        image_bytes=array("q", manifest["image_bytes"]),
        licenses=Counter(manifest["licenses"]),
        delta=UnitDelta(_report_from_json(job.source, manifest["report"]), manifest["state"], manifest["digest"]),
        resumed=resumed,
    )


def finished(job: UnitJob) -> dict[str, Any] | None:
    """The manifest of a unit finished by an earlier, interrupted build with the same inputs and code."""
    try:
        manifest: dict[str, Any] = json.loads(job.manifest.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != MANIFEST_VERSION or manifest.get("resume_key") != job.resume_key:
        return None
    if manifest["spool"] is not None and not (Path(job.folder) / manifest["spool"]).is_file():
        return None
    return manifest


def clear_unit(job: UnitJob) -> None:
    """Remove what an unfinished or stale run of this unit left behind."""
    for path in Path(job.folder).glob(f"{job.unit.index:05d}*"):
        path.unlink()


# --- many units -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    policy: LicensePolicy
    num_proc: int = 1
    engine: Engine = Engine.LOCAL
    scheduler: str | None = None
    progress: bool = False


def run_jobs(
    adapters: dict[str, Adapter], jobs: Sequence[UnitJob], settings: RunSettings, stats: UnitStats
) -> dict[tuple[str, int], UnitResult]:
    """Every job's result, reusing finished units; completion order never matters to the caller."""
    results: dict[tuple[str, int], UnitResult] = {}
    todo: list[UnitJob] = []
    for job in jobs:
        stats.by_source.setdefault(job.source, {"units": 0, "resumed": 0})["units"] += 1
        manifest = finished(job)
        if manifest is not None:
            results[(job.source, job.unit.index)] = _result(job, manifest, resumed=True)
            stats.resumed += 1
            stats.by_source[job.source]["resumed"] += 1
        else:
            clear_unit(job)
            todo.append(job)
    total = sum(job.unit.size for job in todo)
    with tqdm(total=total, desc="units: records", unit=" items", disable=not settings.progress) as bar:
        for job, manifest in _execute(adapters, todo, settings, bar):
            results[(job.source, job.unit.index)] = _result(job, manifest, resumed=False)
            stats.processed += 1
            checkpoint(f"after-unit-{stats.processed}")
    return results


def _execute(
    adapters: dict[str, Adapter], jobs: list[UnitJob], settings: RunSettings, bar: tqdm[Any]
) -> Iterator[tuple[UnitJob, dict[str, Any]]]:
    if not jobs:
        return
    if settings.engine is Engine.DASK:
        yield from _run_dask(adapters, jobs, settings, bar)
    elif settings.num_proc <= 1:
        for job in jobs:
            yield job, run_unit_job(adapters[job.source], job, settings.policy, bar.update)
    else:
        yield from _run_pool(adapters, jobs, settings, bar)


_WORKER_ADAPTERS: dict[str, Adapter] = {}


def _init_worker(blob: bytes) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    _WORKER_ADAPTERS.update(pickle.loads(blob))


def _pool_task(job: UnitJob, policy: LicensePolicy) -> dict[str, Any]:
    return run_unit_job(_WORKER_ADAPTERS[job.source], job, policy)


def _run_pool(
    adapters: dict[str, Adapter], jobs: list[UnitJob], settings: RunSettings, bar: tqdm[Any]
) -> Iterator[tuple[UnitJob, dict[str, Any]]]:
    """A local process pool (forked where possible: no re-import of the caller's main module); each
    worker receives the discovered adapters once, pickled."""
    blob = pickle.dumps(adapters)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(settings.num_proc, mp_context=context, initializer=_init_worker, initargs=(blob,)) as pool:
        futures = {pool.submit(_pool_task, job, settings.policy): job for job in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                manifest = future.result()
                bar.update(job.unit.size)
                yield job, manifest
        except BaseException:
            for pending in futures:
                pending.cancel()
            raise


def _run_dask(
    adapters: dict[str, Adapter], jobs: list[UnitJob], settings: RunSettings, bar: tqdm[Any]
) -> Iterator[tuple[UnitJob, dict[str, Any]]]:
    """The same units as Dask tasks: on the cluster at `scheduler`, else on a LocalCluster of
    `num_proc` single-threaded worker processes. Workers write the spools themselves, so the
    staging folder must be visible to every worker under the same path (a local or shared disk)."""
    try:
        from distributed import Client, LocalCluster
        from distributed import as_completed as dask_completed
    except ImportError as exc:
        raise BuildError("--engine dask needs dask and distributed: pip install 'covid-cxr-unified[dask]'") from exc
    cluster = None
    if settings.scheduler is None:
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=max(settings.num_proc, 1),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    try:
        with Client(cluster if cluster is not None else settings.scheduler) as client:  # type: ignore[no-untyped-call]
            scattered = {name: client.scatter(a, broadcast=True, hash=False) for name, a in adapters.items()}
            futures = {
                client.submit(
                    run_unit_job,
                    scattered[job.source],
                    job,
                    settings.policy,
                    key=f"unit-{job.source}-{job.unit.index}",
                    pure=False,
                ): job
                for job in jobs
            }
            for future in dask_completed(list(futures)):  # type: ignore[no-untyped-call]
                job = futures[future]
                manifest = future.result()
                bar.update(job.unit.size)
                yield job, manifest
    except OSError as exc:
        raise BuildError(f"dask scheduler {settings.scheduler or 'LocalCluster'} unreachable: {exc}") from exc
    finally:
        if cluster is not None:
            cluster.close()


# --- keys and fingerprints -------------------------------------------------------------------------------


def code_version() -> str:
    """The package version plus a hash of its code and packaged data (cards, schema)."""
    from covid_cxr_unified import adapters, cards, harmonize, schema
    from covid_cxr_unified.harmonize import __version__

    digest = hashlib.sha256(f"covid-cxr-unified {__version__}\n".encode())
    for package in (adapters, cards, harmonize, schema):
        folder = Path(package.__file__ or "").parent
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".md", ".json"):
                digest.update(f"{path.relative_to(folder).as_posix()}\t".encode(errors="surrogateescape"))
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def unit_resume_key(context: str, source: str, unit: WorkUnit, checksum: str) -> str:
    text = f"{context}\n{source}\n{unit.index}\t{unit.key}\n{checksum}\n"
    return hashlib.sha256(text.encode(errors="surrogateescape")).hexdigest()
