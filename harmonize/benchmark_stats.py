"""AUROC, patient-level bootstrap intervals and Cramér's V: the few statistics the benchmark reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

OK = "ok"
SINGLE_CLASS = "single_class"
TOO_FEW = "too_few"
NOT_TRAINED = "not_trained"
NO_RECORDS = "no_records"


@dataclass(frozen=True)
class Score:
    """One evaluation: counts always; AUROC and its interval only when `status == "ok"`."""

    n: int
    n_positive: int
    n_negative: int
    auroc: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    status: str = OK  # ok | no_records | single_class | too_few | not_trained
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        """`0.91 [0.80, 0.97] n=34`, or the reason there is no AUROC."""
        if self.auroc is None:
            return f"{self.note or self.status} (n={self.n})"
        interval = "" if self.ci_low is None or self.ci_high is None else f" [{self.ci_low:.2f}, {self.ci_high:.2f}]"
        return f"{self.auroc:.2f}{interval} n={self.n}"


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half). Both classes must be present."""
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float | None],
    groups: Sequence[str],
    *,
    n_bootstrap: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[float | None, float | None]:
    """Percentile interval of `statistic(indices)` over resamples of whole groups (patients).

    Images of one patient are correlated, so patients, not images, are drawn with replacement.
    Resamples where the statistic is undefined (e.g. one class only) are skipped; with fewer than
    half of the resamples usable the interval is not reported.
    """
    if n_bootstrap <= 0:
        return None, None
    _, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(int(inverse.max()) + 1)]
    values = []
    for _ in range(n_bootstrap):
        picked = rng.integers(0, len(members), len(members))
        value = statistic(np.concatenate([members[g] for g in picked]))
        if value is not None:
            values.append(value)
    if len(values) < n_bootstrap / 2:
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values), (tail, 1.0 - tail))
    return float(low), float(high)


def score_binary(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    *,
    min_per_class: int,
    n_bootstrap: int,
    confidence: float,
    rng: np.random.Generator,
) -> Score:
    """AUROC with a patient-level bootstrap interval, or the reason there is none."""
    n_pos = int((labels == 1).sum())
    n_neg = len(labels) - n_pos
    n = len(labels)
    if n == 0:
        return Score(0, 0, 0, status=NO_RECORDS, note="no test records")
    if n_pos == 0 or n_neg == 0:
        only = "only negatives" if n_pos == 0 else "only positives"
        return Score(n, n_pos, n_neg, status=SINGLE_CLASS, note=f"single class: {only}")
    if min(n_pos, n_neg) < min_per_class:
        return Score(n, n_pos, n_neg, status=TOO_FEW, note=f"too few: {n_pos} pos / {n_neg} neg (< {min_per_class})")

    def statistic(indices: np.ndarray) -> float | None:
        sample = labels[indices]
        return auroc(sample, scores[indices]) if 0 < sample.sum() < len(sample) else None

    low, high = bootstrap_interval(statistic, groups, n_bootstrap=n_bootstrap, confidence=confidence, rng=rng)
    return Score(n, n_pos, n_neg, auroc=auroc(labels, scores), ci_low=low, ci_high=high)


def cramers_v(counts: np.ndarray) -> float:
    """Association of the rows and columns of a contingency table, 0 (none) .. 1 (one determines the other)."""
    table = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0].astype(np.float64)
    if min(table.shape) < 2:
        return 0.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
