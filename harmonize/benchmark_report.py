"""The benchmark report: `benchmark.md`, `benchmark.json` and PNG plots a person would rather look at.

Plots: `matrix.png` (AUROC heat map, train source x test source, interval and n in each cell),
`shortcuts.png` (how well pixels predict source, age group, view, portable AP), `label_by_source.png`
(mosaic: column width = a source's share of records, heights = its label states), `views.png` and
`ages.png` (distributions per source and per label). Each plot is drawn from a small table returned
by a `*_data` function, so tests check the numbers behind the picture.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from covid_cxr_unified.harmonize.benchmark import BenchmarkResult, CountTable
from covid_cxr_unified.harmonize.errors import BuildError

PLOTS = ("matrix.png", "shortcuts.png", "label_by_source.png", "views.png", "ages.png")
STATE_COLORS = {
    "positive": "#c0392b",
    "negative": "#2e86c1",
    "uncertain": "#f5b041",
    "not_mentioned": "#bdc3c7",
    "not_annotated": "#7f8c8d",
}
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file: same inputs, same bytes


def matrix_data(result: BenchmarkResult) -> tuple[list[str], list[str], np.ndarray, list[list[str]]]:
    """Rows, columns, AUROC values (NaN where none) and the text of each cell."""
    rows, columns = list(result.train_rows), list(result.test_columns)
    values = np.full((len(rows), len(columns)), np.nan)
    text = [["not applicable" for _ in columns] for _ in rows]  # e.g. leave-one-source-out x pooled
    for cell in result.cells:
        i, j = rows.index(cell.train), columns.index(cell.test)
        score = cell.score
        if score.auroc is not None:
            values[i, j] = score.auroc
            interval = "" if score.ci_low is None else f"\n[{score.ci_low:.2f}, {score.ci_high:.2f}]"
            text[i][j] = f"{score.auroc:.2f}{interval}\nn={score.n}"
        else:
            text[i][j] = f"{score.status.replace('_', ' ')}\nn={score.n} ({score.n_positive}+/{score.n_negative}-)"
    return rows, columns, values, text


def shortcut_data(result: BenchmarkResult) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Audited attributes, their AUROC (NaN where none), interval half-widths (2 x k) and notes."""
    names = [a.attribute for a in result.audit]
    values = np.asarray([np.nan if a.score.auroc is None else a.score.auroc for a in result.audit])
    errors = np.zeros((2, len(names)))
    for k, a in enumerate(result.audit):
        if a.score.auroc is not None and a.score.ci_low is not None and a.score.ci_high is not None:
            errors[:, k] = (a.score.auroc - a.score.ci_low, a.score.ci_high - a.score.auroc)
    notes = [a.score.short() for a in result.audit]
    return names, values, errors, notes


def write_report(result: BenchmarkResult, out: Path) -> list[Path]:
    """Write benchmark.md, benchmark.json and the PNG plots into `out`; return the paths written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        figures = {
            "matrix.png": plot_matrix(result),
            "shortcuts.png": plot_shortcuts(result),
            "label_by_source.png": plot_mosaic(result.label_by_source, f"{result.task}: label state by source"),
            "views.png": plot_views(result),
            "ages.png": plot_ages(result),
        }
        written = []
        for name, figure in figures.items():
            figure.savefig(out / name, dpi=100, metadata=_PNG_METADATA)
            written.append(out / name)
        (out / "benchmark.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
        (out / "benchmark.md").write_text(render_markdown(result), encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"cannot write the benchmark report at {out}: {exc.strerror or exc}") from exc
    return [*written, out / "benchmark.json", out / "benchmark.md"]


def plot_matrix(result: BenchmarkResult) -> Figure:
    rows, columns, values, text = matrix_data(result)
    figure = Figure(figsize=(1.9 * len(columns) + 2.5, 1.1 * len(rows) + 1.8))
    ax = figure.subplots()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#d5d8dc")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(columns)):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("tested on (test split)")
    ax.set_ylabel("trained on (train split)")
    ax.set_title(f"{result.task}: AUROC [95% CI], n per cell")
    figure.colorbar(image, ax=ax, label="AUROC (0.5 = chance)")
    figure.tight_layout()
    return figure


def plot_shortcuts(result: BenchmarkResult) -> Figure:
    names, values, errors, notes = shortcut_data(result)
    figure = Figure(figsize=(8, 0.6 * len(names) + 1.6))
    ax = figure.subplots()
    positions = np.arange(len(names))
    shown = np.nan_to_num(values, nan=0.0)
    colors = ["#c0392b" if v >= 0.8 else "#f5b041" if v >= 0.65 else "#7f8c8d" for v in shown]
    ax.barh(positions, shown, xerr=errors, color=colors, capsize=3)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1, label="chance")
    for k, note in enumerate(notes):
        ax.text(0.01, k, note, va="center", fontsize=8, color="white" if shown[k] > 0.35 else "black")
    ax.set_yticks(positions, names)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("AUROC of predicting the attribute from pixels (test split)")
    ax.set_title("Shortcut audit: what else the pixels reveal")
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def plot_mosaic(table: CountTable, title: str) -> Figure:
    """Column width = the row's share of all records; heights = its column shares."""
    counts = np.asarray(table.counts, dtype=np.float64).reshape(len(table.rows), len(table.columns))
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    totals = counts.sum(axis=1)
    widths = totals / max(totals.sum(), 1.0)
    left = 0.0
    for i, row in enumerate(table.rows):
        bottom = 0.0
        for j, column in enumerate(table.columns):
            share = counts[i, j] / totals[i] if totals[i] else 0.0
            color = STATE_COLORS.get(column, "#95a5a6")
            ax.bar(
                left,
                share,
                widths[i],
                bottom=bottom,
                align="edge",
                color=color,
                edgecolor="white",
                label=column if i == 0 else None,
            )
            if counts[i, j] and share > 0.06 and widths[i] > 0.08:
                ax.text(left + widths[i] / 2, bottom + share / 2, f"{int(counts[i, j])}", ha="center", va="center")
            bottom += share
        ax.text(left + widths[i] / 2, -0.06, f"{row}\n(n={int(totals[i])})", ha="center", va="top", fontsize=9)
        left += widths[i]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_ylabel("share of the source's records")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    figure.tight_layout()
    return figure


def plot_views(result: BenchmarkResult) -> Figure:
    figure = Figure(figsize=(11, 4))
    by_source, by_label = figure.subplots(1, 2)
    _stacked_shares(by_source, result.view_by_source, "views per source (all records)")
    _grouped_counts(by_label, result.label_by_view, f"{result.task} label by view")
    figure.tight_layout()
    return figure


def plot_ages(result: BenchmarkResult) -> Figure:
    figure = Figure(figsize=(11, 4))
    by_source, by_label = figure.subplots(1, 2)
    table = result.age_decade_by_source
    positions = np.arange(len(table.columns))
    width = 0.8 / max(len(table.rows), 1)
    for i, source in enumerate(table.rows):
        by_source.bar(positions + i * width, table.counts[i], width, label=source)
    by_source.set_xticks(positions + 0.4 - width / 2, table.columns, rotation=45, ha="right")
    by_source.set_ylabel("records")
    by_source.set_title("age (years) per source, all records")
    by_source.legend(fontsize=8)
    _grouped_counts(by_label, result.label_by_age_group, f"{result.task} label by age group")
    figure.tight_layout()
    return figure


def _stacked_shares(ax: Axes, table: CountTable, title: str) -> None:
    counts = np.asarray(table.counts, dtype=np.float64).reshape(len(table.rows), len(table.columns))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    left = np.zeros(len(table.rows))
    for j, column in enumerate(table.columns):
        ax.barh(table.rows, shares[:, j], left=left, label=column)
        left += shares[:, j]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the source's records")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")


def _grouped_counts(ax: Axes, table: CountTable, title: str) -> None:
    positions = np.arange(len(table.rows))
    for j, column in enumerate(table.columns):
        values = [row[j] for row in table.counts]
        ax.bar(positions + (j - 0.5) * 0.4, values, 0.4, label=column, color=STATE_COLORS.get(column))
    ax.set_xticks(positions, table.rows, rotation=20, ha="right")
    ax.set_ylabel("labeled records")
    ax.set_title(title)
    ax.legend(fontsize=8)


def render_markdown(result: BenchmarkResult) -> str:
    """The report as Markdown, plots linked by relative path."""
    lines = [
        f"# Cross-dataset benchmark: `{result.task}`",
        "",
        "> A research check of what a model learns, not a diagnostic claim. DeGrave et al. (2021) and "
        "Roberts et al. (2021) showed COVID-19 classifiers scoring well by recognising the source, the "
        "patient's age or the film type.",
        "",
        f"- **positive**: {result.positive}; **negative**: {result.negative}",
        f"- **excluded** (counted below): {result.excluded}",
        f"- **data**: {result.origin}; sources: {', '.join(result.sources)}",
        f"- **model**: {result.model}",
        f"- **shortcut audit model**: {result.audit_model}",
        f"- **intervals**: {result.options.confidence:.0%} percentile bootstrap over patients, "
        f"{result.options.n_bootstrap} resamples, seed {result.options.seed}",
        "",
        "## Verdicts",
        "",
        *(f"- {line}" for line in result.verdicts),
        "",
        "## Source x source AUROC (train split -> test split)",
        "",
        "![AUROC matrix](matrix.png)",
        "",
        *_matrix_markdown(result),
        "",
        f"Row `{'all other sources'}`: trained on every source but the tested one (leave-one-source-out).",
        "",
        "## Shortcut audit (same model, predicting attributes from pixels)",
        "",
        "![shortcut audit](shortcuts.png)",
        "",
        "| attribute | classes | AUROC [CI] n | note |",
        "|---|---|---|---|",
        *(
            f"| {a.attribute} | {', '.join(a.classes)} | {a.score.short() if a.score.auroc is not None else '-'} "
            f"| {a.score.note} |"
            for a in result.audit
        ),
        "",
        "## Label x source (every split)",
        "",
        "![label by source](label_by_source.png)",
        "",
        *_table_markdown(result.label_by_source, "source"),
        "",
        "## Views and ages",
        "",
        "![views](views.png)",
        "",
        *_table_markdown(result.label_by_view, "view"),
        "",
        "![ages](ages.png)",
        "",
        *_table_markdown(result.label_by_age_group, "age group"),
        "",
    ]
    return "\n".join(lines)


def _matrix_markdown(result: BenchmarkResult) -> list[str]:
    header = ["train \\ test", *result.test_columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result.train_rows:
        cells = [c for c in result.cells if c.train == row]
        by_test = {c.test: c.score.short() for c in cells}
        lines.append("| " + " | ".join([row, *(by_test.get(col, "-") for col in result.test_columns)]) + " |")
    return lines


def _table_markdown(table: CountTable, title: str) -> list[str]:
    header = [title, *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join([row, *(str(v) for v in counts)]) + " |"
        for row, counts in zip(table.rows, table.counts, strict=True)
    ]
    return lines


def render_text(result: BenchmarkResult) -> str:
    """A terminal summary: the matrix, the audit and the verdicts."""
    table = [["train \\ test", *result.test_columns]]
    for row in result.train_rows:
        by_test = {c.test: c.score.short() for c in result.cells if c.train == row}
        table.append([row, *(by_test.get(col, "-") for col in result.test_columns)])
    widths = [max(len(line[k]) for line in table) for k in range(len(table[0]))]
    lines = [
        f"task {result.task}: positive = {result.positive}; negative = {result.negative}",
        f"data: {result.origin}",
        *("  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)) for line in table),
        "shortcut audit (AUROC of predicting each attribute from pixels):",
        *(f"  {a.attribute}: {a.score.short()}" for a in result.audit),
        *result.verdicts,
    ]
    return "\n".join(line.rstrip() for line in lines)
