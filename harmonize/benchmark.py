"""Cross-dataset benchmark: does a model trained on one source hold on another, and what else do pixels reveal?

DeGrave et al. (2021) and Roberts et al. (2021) showed COVID-19 classifiers learning the hospital, the
patient's age or the film type instead of disease. On the guarded splits of a build this module

- trains one model per training source (its `train` split), one on every source pooled, and one per
  source on all *other* sources (leave-one-source-out), and scores each on every source's `test` split
  and on all test records pooled: a source x source matrix of AUROC with patient-level bootstrap
  intervals and n per cell;
- audits shortcuts: how well the same kind of model predicts the source, age group, view and portable
  AP films from the pixels (one-vs-rest AUROC, macro-averaged);
- tabulates the task's label against source, view and age group, and says in one line per finding
  when a label is confounded with a source (or with pediatric age).

`benchmark_build(folder)` reads a built folder; `run_benchmark(splits)` takes any mapping of split name
to `datasets.Dataset` with the build's columns. Both accept `model=`, a `ModelFactory` (see
`benchmark_baseline`), and return a `BenchmarkResult` holding every number the report shows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, Value
from datasets.table import InMemoryTable

from covid_cxr_unified.harmonize.benchmark_baseline import ModelFactory, PixelLogisticBaseline, Predictor, lung_mask
from covid_cxr_unified.harmonize.benchmark_data import (
    AGE_GROUPS,
    NEGATIVE,
    PORTABLE_VIEWS,
    POSITIVE,
    Task,
    age_group,
    load_build,
    parse_task,
    view_names,
)
from covid_cxr_unified.harmonize.benchmark_stats import (
    NO_RECORDS,
    NOT_TRAINED,
    OK,
    SINGLE_CLASS,
    Score,
    auroc,
    bootstrap_interval,
    cramers_v,
    score_binary,
)
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.features import VIEW_NAMES

POOLED = "pooled"
OTHERS = "all other sources"
AUDIT_ATTRIBUTES = ("source", "age_group", "view", "portable_ap")
AUDIT_NAMES = {
    "source": "the source",
    "age_group": "the age group",
    "view": "the view",
    "portable_ap": "portable AP films",
}
VIEW_ORDER = tuple(VIEW_NAMES)
SHORTCUT_AUROC = 0.8  # an attribute predicted this well from pixels is reported as a usable shortcut


@dataclass(frozen=True)
class BenchmarkOptions:
    task: str = "covid19"
    seed: int = 0
    n_bootstrap: int = 1000
    confidence: float = 0.95
    min_per_class_train: int = 2  # fewer positives or negatives in a training set: no model
    min_per_class_test: int = 2  # fewer in a test cell: counts only, no AUROC
    lung_masked: bool = False  # keep only records with lung masks; the baseline zeroes pixels outside them
    size: int = 32  # baseline input: size x size pixels
    max_per_source: int | None = None  # read at most this many records per source and split (large builds)

    def __post_init__(self) -> None:
        if self.size < 4 or self.n_bootstrap < 0 or not 0 < self.confidence < 1:
            raise HarmonizeError(
                f"benchmark options out of range: size {self.size} (≥ 4), bootstrap {self.n_bootstrap} (≥ 0), "
                f"confidence {self.confidence} (between 0 and 1)"
            )
        if self.max_per_source is not None and self.max_per_source < 1:
            raise HarmonizeError(f"max records per source must be at least 1, got {self.max_per_source}")
        if min(self.min_per_class_train, self.min_per_class_test) < 1:
            raise HarmonizeError("minimum records per class must be at least 1")
        parse_task(self.task)  # fail before reading any data


@dataclass(frozen=True)
class Cell:
    train: str  # a source, POOLED, or OTHERS (every source but the test one)
    test: str  # a source or POOLED
    score: Score


@dataclass(frozen=True)
class AuditResult:
    """How well pixels predict one attribute: macro one-vs-rest AUROC over `scored` classes."""

    attribute: str
    classes: tuple[str, ...]
    score: Score
    per_class: dict[str, Score] = field(default_factory=dict)


@dataclass(frozen=True)
class CountTable:
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]

    def get(self, row: str, column: str) -> int:
        return self.counts[self.rows.index(row)][self.columns.index(column)]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows), "columns": list(self.columns), "counts": [list(r) for r in self.counts]}


@dataclass(frozen=True)
class BenchmarkResult:
    task: str
    positive: str
    negative: str
    excluded: str
    model: str
    audit_model: str
    origin: str
    sources: tuple[str, ...]
    train_rows: tuple[str, ...]
    test_columns: tuple[str, ...]
    cells: tuple[Cell, ...]
    audit: tuple[AuditResult, ...]
    label_by_source: CountTable  # every split; columns: positive, negative, then each exclusion reason
    label_by_source_per_split: dict[str, CountTable]
    label_by_view: CountTable
    label_by_age_group: CountTable
    view_by_source: CountTable  # every record, labeled or not
    age_decade_by_source: CountTable  # every record: 0-9, 10-19, …, 90+, unknown
    verdicts: tuple[str, ...]
    options: BenchmarkOptions

    def cell(self, train: str, test: str) -> Score:
        return next(c.score for c in self.cells if c.train == train and c.test == test)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": {
                "name": self.task,
                "positive": self.positive,
                "negative": self.negative,
                "excluded": self.excluded,
            },
            "model": self.model,
            "audit_model": self.audit_model,
            "origin": self.origin,
            "sources": list(self.sources),
            "matrix": {
                "train_rows": list(self.train_rows),
                "test_columns": list(self.test_columns),
                "cells": [{"train": c.train, "test": c.test, **c.score.to_dict()} for c in self.cells],
            },
            "audit": [
                {
                    "attribute": a.attribute,
                    "classes": list(a.classes),
                    **a.score.to_dict(),
                    "per_class": {k: v.to_dict() for k, v in a.per_class.items()},
                }
                for a in self.audit
            ],
            "label_by_source": self.label_by_source.to_dict(),
            "label_by_source_per_split": {k: v.to_dict() for k, v in self.label_by_source_per_split.items()},
            "label_by_view": self.label_by_view.to_dict(),
            "label_by_age_group": self.label_by_age_group.to_dict(),
            "view_by_source": self.view_by_source.to_dict(),
            "age_decade_by_source": self.age_decade_by_source.to_dict(),
            "verdicts": list(self.verdicts),
            "options": {k: getattr(self.options, k) for k in self.options.__dataclass_fields__},
        }


@dataclass(frozen=True)
class _Split:
    """One split's records with the per-record values the benchmark needs."""

    dataset: Dataset
    sources: np.ndarray
    patients: list[str]
    states: np.ndarray

    @classmethod
    def of(cls, dataset: Dataset, task: Task) -> _Split:
        return cls(
            dataset,
            np.asarray(dataset["source"], dtype=object),
            [str(p) for p in dataset["patient_id"]],
            np.asarray(task.states(dataset), dtype=object),
        )

    def labeled(self) -> np.ndarray:
        return np.flatnonzero((self.states == POSITIVE) | (self.states == NEGATIVE))


def benchmark_build(
    folder: Path,
    options: BenchmarkOptions | None = None,
    *,
    model: ModelFactory | None = None,
    model_name: str | None = None,
    audit_model: ModelFactory | None = None,
) -> BenchmarkResult:
    """Run the benchmark on a built folder (the `all` config if present, else the per-source configs)."""
    options = options or BenchmarkOptions()
    loaded = load_build(folder, options.max_per_source)
    origin = loaded.origin
    if options.max_per_source is not None:
        origin += f"; at most {options.max_per_source} records per source and split (by hashed patient id)"
    return run_benchmark(
        loaded.splits, options, model=model, model_name=model_name, audit_model=audit_model, origin=origin
    )


def run_benchmark(
    splits: Mapping[str, Dataset],
    options: BenchmarkOptions | None = None,
    *,
    model: ModelFactory | None = None,
    model_name: str | None = None,
    audit_model: ModelFactory | None = None,
    origin: str = "in-memory datasets",
) -> BenchmarkResult:
    """Run the benchmark on `train` and `test` Datasets (any `validation` is only tabulated).

    `model` is scored in the matrix; the shortcut audit asks "what do the pixels reveal?" and so uses
    the pixel baseline unless `audit_model` is given.
    """
    options = options or BenchmarkOptions()
    task = parse_task(options.task)
    if "train" not in splits or "test" not in splits:
        raise HarmonizeError(f"the benchmark needs a train and a test split, got {sorted(splits)}")
    baseline = PixelLogisticBaseline(size=options.size, lung_masked=options.lung_masked, seed=options.seed)
    if model is None:
        model, model_name = baseline, baseline.describe()
    prepared = {name: _Split.of(_keep_masked(ds, options), task) for name, ds in splits.items()}
    train, test = prepared["train"], prepared["test"]
    sources = tuple(sorted({str(s) for part in prepared.values() for s in part.sources}))
    rows, columns, cells = _matrix(train, test, sources, model, options)
    audit = tuple(_audit(attribute, train, test, audit_model or baseline, options) for attribute in AUDIT_ATTRIBUTES)
    by_source = _label_by_source(list(prepared.values()), sources)
    by_view, by_age = _label_by_view(list(prepared.values())), _label_by_age(list(prepared.values()))
    return BenchmarkResult(
        task=task.name,
        positive=task.positive,
        negative=task.negative,
        excluded=task.excluded + ("; records without a lung mask" if options.lung_masked else ""),
        model=model_name or _name(model),
        audit_model=baseline.describe() if audit_model is None else _name(audit_model),
        origin=origin,
        sources=sources,
        train_rows=rows,
        test_columns=columns,
        cells=cells,
        audit=audit,
        label_by_source=by_source,
        label_by_source_per_split={name: _label_by_source([part], sources) for name, part in prepared.items()},
        label_by_view=by_view,
        label_by_age_group=by_age,
        view_by_source=_view_by_source(list(prepared.values()), sources),
        age_decade_by_source=_age_decade_by_source(list(prepared.values()), sources),
        verdicts=tuple(label_verdicts(by_source, by_age, by_view) + audit_verdicts(audit)),
        options=options,
    )


def _name(model: ModelFactory) -> str:
    return str(getattr(model, "__name__", type(model).__name__))


def _keep_masked(dataset: Dataset, options: BenchmarkOptions) -> Dataset:
    if not options.lung_masked:
        return dataset
    masks = dataset["masks"] if "masks" in dataset.column_names else [None] * len(dataset)
    return dataset.select([i for i, m in enumerate(masks) if lung_mask(m) is not None])


def _rng(options: BenchmarkOptions, *names: str) -> np.random.Generator:
    """A generator per cell, so one cell's numbers do not depend on which other cells were computed."""
    return np.random.default_rng([options.seed, zlib.crc32("\x00".join(names).encode())])


def _with_labels(split: _Split, indices: np.ndarray, labels: np.ndarray) -> Dataset:
    """The chosen records plus an int64 `label` column (1 = positive), built in Arrow (no cache files)."""
    table = split.dataset.select(indices.tolist()).with_format("arrow")[:]
    if "label" in table.column_names:
        table = table.drop_columns(["label"])
    table = table.append_column("label", pa.array(labels.astype(np.int64)))
    features = Features({**{k: v for k, v in split.dataset.features.items() if k != "label"}, "label": Value("int64")})
    fingerprint = hashlib.sha256(repr((table.column("record_id").to_pylist(), labels.tolist())).encode())
    return Dataset(
        InMemoryTable(table.replace_schema_metadata(None)),
        info=DatasetInfo(features=features),
        fingerprint=fingerprint.hexdigest()[:16],
    )


def _matrix(
    train: _Split, test: _Split, sources: Sequence[str], model: ModelFactory, options: BenchmarkOptions
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Cell, ...]]:
    train_idx, test_idx = train.labeled(), test.labeled()
    y_train = (train.states[train_idx] == POSITIVE).astype(np.int64)
    y_test = (test.states[test_idx] == POSITIVE).astype(np.int64)
    test_data = test.dataset.select(test_idx.tolist())
    predictions: dict[frozenset[str], np.ndarray | str] = {}

    def predicted(fit_on: frozenset[str]) -> np.ndarray | str:
        if fit_on not in predictions:
            chosen = np.isin(train.sources[train_idx], list(fit_on))
            n_pos, n_neg = int(y_train[chosen].sum()), int((1 - y_train[chosen]).sum())
            if not len(test_idx):
                predictions[fit_on] = "not trained: no labeled test records"
            elif min(n_pos, n_neg) < options.min_per_class_train:
                predictions[fit_on] = f"not trained: train has {n_pos} pos / {n_neg} neg"
            else:
                predictor = model(_with_labels(train, train_idx[chosen], y_train[chosen]))
                predictions[fit_on] = _scores(predictor, test_data)
        return predictions[fit_on]

    columns = (*sources, POOLED)
    rows = (*sources, POOLED, *((OTHERS,) if len(sources) > 1 else ()))
    cells = []
    for row in rows:
        for column in columns:
            if row == OTHERS and column == POOLED:
                continue
            fit_on = frozenset(sources) if row == POOLED else frozenset({row})
            if row == OTHERS:
                fit_on = frozenset(sources) - {column}
            in_cell = np.ones(len(test_idx), bool) if column == POOLED else test.sources[test_idx] == column
            patients = [test.patients[i] for i in test_idx]
            rng = _rng(options, "matrix", row, column)
            score = _cell_score(predicted(fit_on), y_test, in_cell, patients, options, rng)
            cells.append(Cell(row, column, score))
    return rows, columns, tuple(cells)


def _scores(predictor: Predictor, data: Dataset) -> np.ndarray:
    """The predictor's scores, checked: one finite number per row."""
    scores = np.asarray(predictor(data), dtype=np.float64).reshape(-1)
    if len(scores) != len(data) or not np.isfinite(scores).all():
        raise HarmonizeError(f"the model must return one finite score per row: got {len(scores)} for {len(data)} rows")
    return scores


def _cell_score(
    scores: np.ndarray | str,
    labels: np.ndarray,
    in_cell: np.ndarray,
    patients: list[str],
    options: BenchmarkOptions,
    rng: np.random.Generator,
) -> Score:
    y = labels[in_cell]
    if not len(y):
        return Score(0, 0, 0, status=NO_RECORDS, note="no test records")
    if isinstance(scores, str):
        n_pos = int(y.sum())
        return Score(len(y), n_pos, len(y) - n_pos, status=NOT_TRAINED, note=scores)
    groups = [p for p, keep in zip(patients, in_cell, strict=True) if keep]
    return score_binary(
        y,
        scores[in_cell],
        groups,
        min_per_class=options.min_per_class_test,
        n_bootstrap=options.n_bootstrap,
        confidence=options.confidence,
        rng=rng,
    )


def _attribute_values(split: _Split, attribute: str) -> list[str | None]:
    """Per record: the audited attribute's class, or None when unknown."""
    if attribute == "source":
        return [str(s) for s in split.sources]
    if attribute == "age_group":
        return [age_group(a) for a in _ages(split)]
    views = _views(split)
    if attribute == "view":
        return [None if v == "UNKNOWN" else v for v in views]
    if attribute == "portable_ap":
        return ["portable AP" if v in PORTABLE_VIEWS else "PA" if v == "PA" else None for v in views]
    raise HarmonizeError(f"unknown audit attribute {attribute!r}")


def _audit(attribute: str, train: _Split, test: _Split, model: ModelFactory, options: BenchmarkOptions) -> AuditResult:
    train_values = np.asarray(_attribute_values(train, attribute), dtype=object)
    test_values = np.asarray(_attribute_values(test, attribute), dtype=object)
    train_idx, test_idx = np.flatnonzero(train_values != None), np.flatnonzero(test_values != None)  # noqa: E711
    classes = tuple(sorted({str(v) for v in train_values[train_idx]} | {str(v) for v in test_values[test_idx]}))
    if len(classes) < 2:
        only = classes[0] if classes else "none known"
        score = Score(len(test_idx), 0, 0, status=SINGLE_CLASS, note=f"one value only: {only}")
        return AuditResult(attribute, classes, score)
    if not len(test_idx):
        return AuditResult(attribute, classes, Score(0, 0, 0, status=NO_RECORDS, note="no test records"))
    scored = classes[1:] if len(classes) == 2 else classes
    test_data = test.dataset.select(test_idx.tolist())
    patients = [test.patients[i] for i in test_idx]
    per_class, columns = {}, {}
    for name in scored:
        y_train = (train_values[train_idx] == name).astype(np.int64)
        y_test = (test_values[test_idx] == name).astype(np.int64)
        if min(int(y_train.sum()), int((1 - y_train).sum())) < options.min_per_class_train:
            n_pos = int(y_test.sum())
            note = f"not trained: train has {int(y_train.sum())} {name} / {int((1 - y_train).sum())} other"
            per_class[name] = Score(len(y_test), n_pos, len(y_test) - n_pos, status=NOT_TRAINED, note=note)
            continue
        scores = _scores(model(_with_labels(train, train_idx, y_train)), test_data)
        per_class[name] = score_binary(
            y_test,
            scores,
            patients,
            min_per_class=options.min_per_class_test,
            n_bootstrap=options.n_bootstrap,
            confidence=options.confidence,
            rng=_rng(options, "audit", attribute, name),
        )
        if per_class[name].status == OK:
            columns[name] = (y_test, scores)
        elif per_class[name].status == SINGLE_CLASS:
            only = f"no {name} in test" if per_class[name].n_positive == 0 else f"only {name} in test"
            per_class[name] = replace(per_class[name], note=only)
    return AuditResult(attribute, classes, _macro(columns, per_class, patients, options, attribute), per_class)


def _macro(
    columns: dict[str, tuple[np.ndarray, np.ndarray]],
    per_class: dict[str, Score],
    patients: list[str],
    options: BenchmarkOptions,
    attribute: str,
) -> Score:
    n = len(patients)
    if not columns:
        reasons = "; ".join(f"{k} vs rest: {v.note}" for k, v in per_class.items())
        return Score(n, 0, 0, status=next(iter(per_class.values())).status, note=reasons)

    def statistic(indices: np.ndarray) -> float | None:
        values = [auroc(y[indices], s[indices]) for y, s in columns.values() if 0 < y[indices].sum() < len(indices)]
        return float(np.mean(values)) if values else None

    low, high = bootstrap_interval(
        statistic,
        patients,
        n_bootstrap=options.n_bootstrap,
        confidence=options.confidence,
        rng=_rng(options, "audit", attribute, "macro"),
    )
    value = float(np.mean([per_class[k].auroc for k in columns]))
    note = f"macro over {', '.join(columns)}" if len(columns) > 1 else f"{next(iter(columns))} vs rest"
    return Score(n, 0, 0, auroc=value, ci_low=low, ci_high=high, note=note)


def _label_by_source(parts: list[_Split], sources: Sequence[str]) -> CountTable:
    pairs = Counter((str(s), str(t)) for part in parts for s, t in zip(part.sources, part.states, strict=True))
    excluded = sorted({t for _, t in pairs} - {POSITIVE, NEGATIVE})
    columns = (POSITIVE, NEGATIVE, *excluded)
    return CountTable(tuple(sources), columns, tuple(tuple(pairs[(s, c)] for c in columns) for s in sources))


def _label_by_view(parts: list[_Split]) -> CountTable:
    pairs: Counter[tuple[str, str]] = Counter()
    for part in parts:
        pairs.update((v, str(t)) for v, t in zip(_views(part), part.states, strict=True) if t in (POSITIVE, NEGATIVE))
    rows = tuple(v for v in VIEW_ORDER if pairs[(v, POSITIVE)] + pairs[(v, NEGATIVE)])
    return CountTable(rows, (POSITIVE, NEGATIVE), tuple((pairs[(v, POSITIVE)], pairs[(v, NEGATIVE)]) for v in rows))


def _label_by_age(parts: list[_Split]) -> CountTable:
    pairs: Counter[tuple[str, str]] = Counter()
    for part in parts:
        pairs.update(
            (age_group(a) or "unknown", str(t))
            for a, t in zip(_ages(part), part.states, strict=True)
            if t in (POSITIVE, NEGATIVE)
        )
    rows = (*(name for _, _, name in AGE_GROUPS), "unknown")
    return CountTable(rows, (POSITIVE, NEGATIVE), tuple((pairs[(g, POSITIVE)], pairs[(g, NEGATIVE)]) for g in rows))


def _views(part: _Split) -> list[str]:
    return view_names(part.dataset) if "view" in part.dataset.column_names else ["UNKNOWN"] * len(part.states)


def _ages(part: _Split) -> list[float | None]:
    return part.dataset["age_years"] if "age_years" in part.dataset.column_names else [None] * len(part.states)


def _view_by_source(parts: list[_Split], sources: Sequence[str]) -> CountTable:
    pairs = Counter((str(s), v) for part in parts for s, v in zip(part.sources, _views(part), strict=True))
    columns = tuple(v for v in VIEW_ORDER if any(pairs[(s, v)] for s in sources))
    return CountTable(tuple(sources), columns, tuple(tuple(pairs[(s, v)] for v in columns) for s in sources))


def _decade(age: float | None) -> str:
    if age is None:
        return "unknown"
    low = min(int(age // 10) * 10, 90)
    return "90+" if low == 90 else f"{low}-{low + 9}"


def _age_decade_by_source(parts: list[_Split], sources: Sequence[str]) -> CountTable:
    pairs = Counter((str(s), _decade(a)) for part in parts for s, a in zip(part.sources, _ages(part), strict=True))
    columns = (*(f"{d}-{d + 9}" for d in range(0, 90, 10)), "90+", "unknown")
    return CountTable(tuple(sources), columns, tuple(tuple(pairs[(s, c)] for c in columns) for s in sources))


def label_verdicts(by_source: CountTable, by_age: CountTable, by_view: CountTable) -> list[str]:
    """One line per finding about the label's association with source, age group and portable films."""
    return _source_verdicts(by_source) + _age_verdicts(by_age) + _portable_verdicts(by_view)


def _source_verdicts(table: CountTable) -> list[str]:
    counts = {s: (table.get(s, POSITIVE), table.get(s, NEGATIVE)) for s in table.rows}
    labeled = [s for s, (p, n) in counts.items() if p + n]
    if not labeled:
        return ["NOTE: no record has a positive or negative label for this task"]
    totals = [sum(c[i] for c in counts.values()) for i in (0, 1)]
    if 0 in totals:
        missing = "negatives" if totals[1] == 0 else "positives"
        return [f"NOTE: the build has no {missing} for this task: nothing to learn or to score"]
    if len(labeled) == 1:
        return [
            f"NOTE: every labeled record comes from one source ({labeled[0]}): confounding with the source "
            "cannot be assessed and the matrix has a single source"
        ]
    lines = []
    for index, name in ((0, "positive"), (1, "negative")):
        holders = [s for s in labeled if counts[s][index]]
        if len(holders) == 1:
            lines.append(
                f"CONFOUNDED: every {name} ({counts[holders[0]][index]}) comes from {holders[0]}: a model that "
                f"recognises {holders[0]} scores well without seeing disease"
            )
    for s in labeled:
        p, n = counts[s]
        if not (p and n):
            lines.append(f"CONFOUNDED: {s} contributes only {'positives' if p else 'negatives'} ({p or n})")
    if lines:
        return lines
    v = cramers_v(np.asarray([counts[s] for s in labeled]))
    if v >= 0.5:
        return [f"ASSOCIATED: label and source are strongly associated (Cramér's V = {v:.2f})"]
    return [f"OK: both classes come from several sources (label x source Cramér's V = {v:.2f})"]


def _age_verdicts(table: CountTable) -> list[str]:
    pediatric = AGE_GROUPS[0][2]
    known = [r for r in table.rows if r != "unknown"]
    lines = []
    for index, name, other in ((0, "positive", "negative"), (1, "negative", "positive")):
        total = sum(table.counts[table.rows.index(r)][index] for r in known)
        kids = table.get(pediatric, name)
        if total and kids == total and table.get(pediatric, other) == 0:
            lines.append(
                f"CONFOUNDED: every {name} with a known age ({total}) is {pediatric} and no {other} is: "
                "a model can score by telling children from adults (Roberts et al. 2021)"
            )
    return lines


def _portable_verdicts(table: CountTable) -> list[str]:
    def share(column: str) -> tuple[float, int]:
        frontal = sum(table.get(v, column) for v in ("PA", "AP", "AP_SUPINE") if v in table.rows)
        portable = sum(table.get(v, column) for v in PORTABLE_VIEWS if v in table.rows)
        return (portable / frontal if frontal else 0.0), frontal

    (pos_share, pos_n), (neg_share, neg_n) = share(POSITIVE), share(NEGATIVE)
    if min(pos_n, neg_n) >= 5 and abs(pos_share - neg_share) >= 0.5:
        return [
            f"ASSOCIATED: portable AP films are {pos_share:.0%} of frontal positives vs {neg_share:.0%} of "
            "frontal negatives: film type (and the severity it implies) predicts the label"
        ]
    return []


def audit_verdicts(audit: Sequence[AuditResult]) -> list[str]:
    """A SHORTCUT line for each attribute the pixels predict with AUROC ≥ SHORTCUT_AUROC and an interval
    above chance; POSSIBLE SHORTCUT when the interval still reaches 0.5 (too few test records to say)."""
    lines = []
    for item in audit:
        score = item.score
        if score.status != OK or score.auroc is None or score.auroc < SHORTCUT_AUROC:
            continue
        what = AUDIT_NAMES[item.attribute]
        if score.ci_low is not None and score.ci_low > 0.5:
            lines.append(
                f"SHORTCUT: the pixels predict {what} ({score.short()}); a label that varies with {what} "
                "can be learned without disease"
            )
        else:
            lines.append(
                f"POSSIBLE SHORTCUT: the pixels predict {what} ({score.short()}), but the interval reaches "
                "chance: too few test records to be sure"
            )
    return lines
