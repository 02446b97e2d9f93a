"""The build report: every input item accounted for, per source and per split (JSON + Markdown)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covid_cxr_unified.harmonize.splits import SPLITS

if TYPE_CHECKING:
    from covid_cxr_unified.harmonize.build import ConfigResult
    from covid_cxr_unified.harmonize.groups import Grouping
    from covid_cxr_unified.harmonize.guards import GuardReport


def report_data(
    configs: list[ConfigResult], fingerprint: str, guard: GuardReport, grouping: Grouping
) -> dict[str, Any]:
    return {
        "fingerprint": fingerprint,
        "sources": {c.name: {**c.report.details(), "splits": c.split_counts} for c in configs if c.report},
        "configs": {c.name: c.split_counts for c in configs},
        "groups": {
            "groups": grouping.group_count,
            "patients": grouping.patient_count,
            "merges": dict(sorted(grouping.merges.items())),
        },
        "guard": guard.to_dict(),
    }


def write_report(
    folder: Path, configs: list[ConfigResult], fingerprint: str, guard: GuardReport, grouping: Grouping
) -> None:
    data = report_data(configs, fingerprint, guard, grouping)
    # errors=backslashreplace: a file name with undecodable bytes (a lone surrogate) is written escaped
    text = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    (folder / "build_report.json").write_text(text, encoding="utf-8", errors="backslashreplace")
    markdown = render_markdown(configs, data, guard)
    (folder / "build_report.md").write_text(markdown, encoding="utf-8", errors="backslashreplace")


def count_table(title: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return [f"{title}: none.", ""]
    lines = [f"| {title} | n |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in sorted(counts.items())]
    return [*lines, ""]


def label_by_source_lines(guard: GuardReport) -> list[str]:
    """covid19 label state x source, one table per split."""
    lines: list[str] = []
    for split, by_source in guard.label_by_source.items():
        states = sorted({state for counts in by_source.values() for state in counts})
        lines += [f"**{split}**", "", "| source | " + " | ".join(states) + " |", "|---|" + "---|" * len(states)]
        lines += [
            f"| {source} | " + " | ".join(str(counts.get(state, 0)) for state in states) + " |"
            for source, counts in by_source.items()
        ]
        lines.append("")
    return lines


def guard_lines(guard: GuardReport) -> list[str]:
    verdict = (
        f"Split guard: passed — {guard.records} records, no patient, linked patient group or duplicate "
        "picture in two splits."
        if guard.ok
        else f"Split guard: FAILED — {len(guard.leaks)} leaks."
    )
    return [verdict, "", *(f"- warning: {w}" for w in guard.warnings), ""]


def render_markdown(configs: list[ConfigResult], data: dict[str, Any], guard: GuardReport) -> str:
    lines = ["# Build report", "", f"Fingerprint: `{data['fingerprint']}`", ""]
    groups = data["groups"]
    lines += [
        f"{groups['patients']} patients in {groups['groups']} split groups.",
        "",
        *count_table("group merges by kind", groups["merges"]),
    ]
    for c in configs:
        r = c.report
        if r is None:
            continue
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
            *count_table("excluded", dict(r.excluded)),
            *count_table("quarantined", dict(r.quarantined)),
            *count_table("flag", dict(r.flags)),
        ]
        for field_name, counter in sorted(r.unmapped.items()):
            lines += count_table(f"unmapped `{field_name}` value", dict(counter))
        if r.notes:
            lines += [
                "Source-specific accounting:",
                "",
                "```json",
                json.dumps(r.notes, indent=1, sort_keys=True),
                "```",
                "",
            ]
    lines += ["## Splits", "", *guard_lines(guard), "### covid19 label × source", "", *label_by_source_lines(guard)]
    return "\n".join(lines)
