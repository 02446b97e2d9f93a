"""The build report: every input item accounted for, per source and per split (JSON + Markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid_cxr_unified.harmonize.splits import SPLITS

if TYPE_CHECKING:
    from covid_cxr_unified.harmonize.build import ConfigResult


def report_data(configs: list[ConfigResult], fingerprint: str) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "sources": {
            c.name: {**c.report.details(), "splits": c.split_counts} for c in configs
        },
    }


def write_report(folder: Path, configs: list[ConfigResult], fingerprint: str) -> None:
    data = report_data(configs, fingerprint)
    (folder / "build_report.json").write_text(
        json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (folder / "build_report.md").write_text(render_markdown(configs, fingerprint), encoding="utf-8")


def _count_table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none.", ""]
    lines = [f"| {title} | n |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in sorted(counts.items())]
    return [*lines, ""]


def render_markdown(configs: list[ConfigResult], fingerprint: str) -> str:
    lines = ["# Build report", "", f"Fingerprint: `{fingerprint}`", ""]
    for c in configs:
        r = c.report
        excluded, quarantined = sum(r.excluded.values()), sum(r.quarantined.values())
        lines += [
            f"## {c.name}",
            "",
            f"{r.input_items} input items = {r.records} records + {excluded} excluded + "
            f"{quarantined} quarantined ({'reconciles' if r.reconciles() else 'DOES NOT RECONCILE'}).",
            "",
            "| split | records |",
            "|---|---|",
            *[f"| {s} | {c.split_counts[s]} |" for s in SPLITS],
            "",
            *_count_table("excluded by scope", dict(r.excluded)),
            *_count_table("quarantined", dict(r.quarantined)),
            *_count_table("flag", dict(r.flags)),
        ]
        for field_name, counter in sorted(r.unmapped.items()):
            lines += _count_table(f"unmapped `{field_name}` value", dict(counter))
    return "\n".join(lines)
