"""What the cross-dataset benchmark reads: a built folder as one `Dataset` per split, and task labels.

Which records a benchmark uses comes from the per-record `source` column, never from the config name:

- the `all` config, when the build has one (every source in one config; an image that several sources
  describe is already one record there);
- otherwise the union of the per-source configs, with one rule for the known overlap: V7 Darwin's
  images are a subset of ieee8023's. A `v7_darwin` record whose image is an `ieee8023` record of the
  build (a `same_image` link, or the same `image_sha256`) is treated as a mask provider: its masks are
  attached to that `ieee8023` record (when it has none) and the `v7_darwin` record is dropped, so one
  picture is never counted as two sources. `v7_darwin` records without such a match stay, as source
  `v7_darwin`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo, Features
from datasets.table import InMemoryTable

from covid_cxr_unified.harmonize.data_files import card_data_files, folder_data_files
from covid_cxr_unified.harmonize.errors import HarmonizeError, SourceFormatError, SourceNotFoundError
from covid_cxr_unified.harmonize.features import LABEL_STATE_NAMES, VIEW_NAMES
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.schema.vocab import Finding, Source

ALL_CONFIG = "all"
POSITIVE = "positive"
NEGATIVE = "negative"
AGE_GROUPS = ((0.0, 18.0, "pediatric (<18)"), (18.0, 65.0, "adult (18-64)"), (65.0, float("inf"), "older (65+)"))
PORTABLE_VIEWS = frozenset({"AP", "AP_SUPINE"})


@dataclass(frozen=True)
class LoadedBuild:
    """The records of a build, one `Dataset` per split, and how they were gathered."""

    splits: dict[str, Dataset]
    origin: str  # one line for the report, e.g. "config `all`"
    merged_v7: int = 0  # v7_darwin records folded into their ieee8023 image (union of configs only)


@dataclass(frozen=True)
class Task:
    """A binary task: which label state counts as positive, which as negative; all others are excluded."""

    name: str
    positive: str
    negative: str
    excluded: str
    state: Callable[[dict[str, Any]], str]  # a row -> "positive" | "negative" | an exclusion reason

    def states(self, dataset: Dataset) -> list[str]:
        columns = [c for c in ("covid19", "findings", "survival") if c in dataset.column_names]
        rows = dataset.select_columns(columns).with_format(None)
        return [self.state(row) for row in rows]


def parse_task(text: str) -> Task:
    """`covid19`, `survival` or `finding:<name>` (a `Finding` value, e.g. `finding:pneumonia`)."""
    if text == "covid19":
        return Task(
            "covid19",
            positive="covid19 = positive",
            negative="covid19 = negative",
            excluded="covid19 = uncertain, not_mentioned or not_annotated (counted per state)",
            state=_covid19_state,
        )
    if text == "survival":
        return Task(
            "survival",
            positive="survival = true (the patient survived)",
            negative="survival = false (the patient died)",
            excluded="survival unknown (null)",
            state=_survival_state,
        )
    if text.startswith("finding:"):
        name = text.removeprefix("finding:")
        if name not in {f.value for f in Finding}:
            raise HarmonizeError(f"unknown finding {name!r} in task {text!r}; use a Finding value, e.g. pneumonia")
        return Task(
            text,
            positive=f"finding {name} with state positive",
            negative=f"finding {name} with state negative",
            excluded=f"{name} uncertain, or not listed in the record's findings (not_listed)",
            state=_finding_state(name),
        )
    raise HarmonizeError(f"unknown task {text!r}: use covid19, survival or finding:<name>")


def _covid19_state(row: dict[str, Any]) -> str:
    value = row.get("covid19")
    return LABEL_STATE_NAMES[value] if isinstance(value, int) else str(value)


def _survival_state(row: dict[str, Any]) -> str:
    value = row.get("survival")
    return "unknown" if value is None else (POSITIVE if value else NEGATIVE)


def _finding_state(name: str) -> Callable[[dict[str, Any]], str]:
    def state(row: dict[str, Any]) -> str:
        states = [f["state"] for f in row.get("findings") or [] if f["finding"] == name]
        return states[0] if states else "not_listed"

    return state


def age_group(age: float | None) -> str | None:
    if age is None:
        return None
    return next((name for low, high, name in AGE_GROUPS if low <= age < high), None)


def view_names(dataset: Dataset) -> list[str]:
    return [VIEW_NAMES[v] if isinstance(v, int) else str(v) for v in dataset["view"]]


def load_build(folder: Path, max_per_source: int | None = None) -> LoadedBuild:
    """The build at `folder` as train/validation/test Datasets (Parquet read directly, no cache copy).

    Which shards make up a config comes from the card's YAML `configs` (the `all` config may list
    shards of per-source folders); without a card, from the folders under `data/`. With
    `max_per_source`, each source keeps at most that many records per split, whole patients first in
    the order of a keyed hash of their id (deterministic), and the shards are streamed so that the
    image bytes of the other records are never held in memory.
    """
    if not (folder / "data").is_dir():
        raise SourceNotFoundError(f"{folder} is not a covid-cxr build: it has no data/ folder")
    configs = config_files(folder)
    if not configs:
        raise SourceNotFoundError(f"{folder / 'data'} holds no Parquet shards")
    if ALL_CONFIG in configs:
        tables = {split: _read_split(folder, configs[ALL_CONFIG].get(split, []), max_per_source) for split in SPLITS}
        present = {s for t in tables.values() if t is not None for s in t.column("source").to_pylist()}
        others = {c: files for c, files in configs.items() if c != ALL_CONFIG}
        origin = "config `all`" + _missing_from_all(folder, others, present)
        return LoadedBuild(_datasets({s: [t] for s, t in tables.items() if t is not None}), origin)
    per_config = {
        c: {split: _read_split(folder, files.get(split, []), max_per_source) for split in SPLITS}
        for c, files in configs.items()
    }
    merged = _fold_v7_into_ieee8023(per_config)
    gathered = {split: [t[split] for t in per_config.values() if t[split] is not None] for split in SPLITS}
    origin = "union of configs " + ", ".join(f"`{c}`" for c in configs)
    if merged:
        origin += f" ({merged} v7_darwin records folded into their ieee8023 image as masks)"
    return LoadedBuild(_datasets({s: [t for t in ts if t is not None] for s, ts in gathered.items()}), origin, merged)


def config_files(folder: Path) -> dict[str, dict[str, list[str]]]:
    """config -> split -> shard globs relative to `folder`, from the card, else from `data/<config>/`."""
    return dict(sorted((card_data_files(folder) or folder_data_files(folder)).items()))


def _shards(folder: Path, patterns: list[str]) -> list[Path]:
    return [p for pattern in patterns for p in sorted(folder.glob(pattern))]


def _missing_from_all(folder: Path, configs: dict[str, dict[str, list[str]]], present: set[str]) -> str:
    """A note naming per-source configs whose records the `all` config does not hold (e.g. filtered out)."""
    missing = []
    for config, files in configs.items():
        shards = _shards(folder, [p for patterns in files.values() for p in patterns])
        sources = {s for shard in shards for s in pq.read_table(shard, columns=["source"]).column("source").to_pylist()}
        if sources - present - {Source.V7_DARWIN.value}:
            missing.append(config)
    return f" (its sources do not include the configs {', '.join(missing)}: not benchmarked)" if missing else ""


def _read_split(folder: Path, patterns: list[str], max_per_source: int | None = None) -> pa.Table | None:
    shards = _shards(folder, patterns)
    if not shards:
        return None
    try:
        if max_per_source is None:
            tables = [pq.read_table(shard) for shard in shards]
        else:
            keep = _sample(shards, max_per_source)
            tables = [_stream_rows(shard, rows) for shard, rows in zip(shards, keep, strict=True)]
        return pa.concat_tables(tables, promote_options="permissive")
    except (OSError, pa.ArrowException) as exc:
        raise SourceFormatError(f"cannot read the Parquet shards {patterns} of {folder}: {exc}") from exc


def _sample(shards: list[Path], max_per_source: int) -> list[set[int]]:
    """Per shard, the row numbers kept: per source, the first `max_per_source` by hashed patient id."""
    candidates: dict[str, list[tuple[str, str, int, int]]] = {}
    for number, shard in enumerate(shards):
        table = pq.read_table(shard, columns=["source", "patient_id", "record_id"])
        for row, (source, patient, record) in enumerate(
            zip(*(table.column(c).to_pylist() for c in ("source", "patient_id", "record_id")), strict=True)
        ):
            order = hashlib.sha256(f"benchmark-sample\x00{patient}".encode()).hexdigest()
            candidates.setdefault(str(source), []).append((order, str(record), number, row))
    keep: list[set[int]] = [set() for _ in shards]
    for rows in candidates.values():
        for _, _, number, row in sorted(rows)[:max_per_source]:
            keep[number].add(row)
    return keep


def _stream_rows(shard: Path, rows: set[int]) -> pa.Table:
    """The given rows of a shard, read batch by batch."""
    parquet = pq.ParquetFile(shard)
    kept, offset = [], 0
    for batch in parquet.iter_batches(batch_size=256):
        mask = [offset + i in rows for i in range(batch.num_rows)]
        offset += batch.num_rows
        if any(mask):
            kept.append(batch.filter(pa.array(mask, pa.bool_())))
    if not kept:
        return parquet.schema_arrow.empty_table()
    return pa.Table.from_batches(kept, schema=parquet.schema_arrow)


def _fold_v7_into_ieee8023(per_config: dict[str, dict[str, pa.Table | None]]) -> int:
    """Attach V7 masks to the ieee8023 record of the same image and drop that V7 record; count them."""
    v7, ieee = per_config.get(Source.V7_DARWIN.value), per_config.get(Source.IEEE8023.value)
    if v7 is None or ieee is None:
        return 0
    ieee_ids = {rid for t in ieee.values() if t is not None for rid in t.column("record_id").to_pylist()}
    ieee_by_sha = {
        sha: rid
        for t in ieee.values()
        if t is not None and "image_sha256" in t.column_names
        for rid, sha in zip(t.column("record_id").to_pylist(), t.column("image_sha256").to_pylist(), strict=True)
        if sha
    }
    masks_for: dict[str, list[dict[str, Any]]] = {}
    folded = 0
    for split, table in v7.items():
        if table is None:
            continue
        keep = []
        for row in table.select(_present(table, ("links", "image_sha256", "masks"))).to_pylist():
            target = _same_image_target(row, ieee_ids, ieee_by_sha)
            keep.append(target is None)
            folded += target is not None
            if target is not None and row.get("masks"):
                masks_for.setdefault(target, row["masks"])
        v7[split] = table.filter(pa.array(keep, pa.bool_()))
    for split, table in ieee.items():
        if table is not None and masks_for and "masks" in table.column_names:
            ieee[split] = _with_masks(table, masks_for)
    return folded


def _present(table: pa.Table, names: Sequence[str]) -> list[str]:
    return [n for n in names if n in table.column_names]


def _same_image_target(row: dict[str, Any], ieee_ids: set[str], ieee_by_sha: dict[str, str]) -> str | None:
    for link in row.get("links") or []:
        if link.get("relation") == "same_image" and link.get("record_id") in ieee_ids:
            return str(link["record_id"])
    sha = row.get("image_sha256")
    return ieee_by_sha.get(sha) if sha else None


def _with_masks(table: pa.Table, masks_for: dict[str, list[dict[str, Any]]]) -> pa.Table:
    index = table.column_names.index("masks")
    current = table.column("masks").to_pylist()
    ids = table.column("record_id").to_pylist()
    merged = [masks or masks_for.get(rid, []) for rid, masks in zip(ids, current, strict=True)]
    field = table.schema.field(index)
    return table.set_column(index, field, pa.array(merged, type=field.type))


def _datasets(tables: dict[str, list[pa.Table]]) -> dict[str, Dataset]:
    """One Dataset per split over the columns every config shares, with the build's Features."""
    all_tables = [t for ts in tables.values() for t in ts]
    if not all_tables:
        raise SourceNotFoundError("the build has no records")
    common = [c for c in all_tables[0].column_names if all(c in t.column_names for t in all_tables)]
    missing = {"record_id", "source", "patient_id", "image"} - set(common)
    if missing:
        raise SourceFormatError(f"the build lacks the columns {sorted(missing)}")
    declared = Features.from_arrow_schema(all_tables[0].schema)  # the build's Features (ClassLabel, Image, …)
    inferred = Features.from_arrow_schema(all_tables[0].schema.remove_metadata())
    features = Features({k: declared[k] if k in declared else inferred[k] for k in common})
    result = {}
    for split, split_tables in tables.items():
        if not split_tables:
            continue
        table = pa.concat_tables([t.select(common).replace_schema_metadata(None) for t in split_tables])
        result[split] = Dataset(InMemoryTable(table), info=DatasetInfo(features=features))
    return result
