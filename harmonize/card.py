"""Render the build's README.md (the HF dataset card), LICENSE.md and ATTRIBUTION.md."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

import yaml

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.harmonize.features import FEATURES
from covid_cxr_unified.harmonize.report import guard_lines, label_by_source_lines
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.schema.licenses import LICENSES

if TYPE_CHECKING:
    from covid_cxr_unified.harmonize.build import ConfigResult
    from covid_cxr_unified.harmonize.guards import GuardReport
    from covid_cxr_unified.harmonize.visuals import CardFigure

LOCAL_ONLY_SOURCES = {"bimcv"}


def card_text(name: str) -> str:
    """The packaged Markdown text of `cards/<name>.md`."""
    return resources.files("covid_cxr_unified.cards").joinpath(f"{name}.md").read_text(encoding="utf-8")


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def _sources(configs: list[ConfigResult]) -> list[ConfigResult]:
    return [c for c in configs if c.report is not None]


def card_yaml(configs: list[ConfigResult], fingerprint: str) -> dict[str, Any]:
    """The card's YAML. A config without records is left out: `datasets` cannot load it."""
    total = sum(sum(c.split_counts.values()) for c in _sources(configs))
    loadable = [c for c in configs if c.nonempty_splits()]
    local_only = any(c.name in LOCAL_ONLY_SOURCES for c in _sources(loadable))
    return {
        "license": "other",
        "license_name": "mixed-per-record",
        "license_link": "LICENSE.md",
        "pretty_name": "COVID CXR Unified",
        "task_categories": ["image-classification", "image-segmentation"],
        "tags": ["medical", "chest-x-ray", "covid-19", *(["local-only"] if local_only else [])],
        "size_categories": [_size_category(total)],
        "build_fingerprint": fingerprint,
        "configs": [
            {
                "config_name": c.name,
                "default": c.name == "all",
                "data_files": [{"split": split, "path": c.shards[split]} for split in c.nonempty_splits()],
            }
            for c in loadable
        ],
        "dataset_info": [
            {
                "config_name": c.name,
                "features": FEATURES._to_yaml_list(),
                "splits": [
                    {"name": split, "num_bytes": c.split_bytes[split], "num_examples": c.split_counts[split]}
                    for split in c.nonempty_splits()
                ],
            }
            for c in loadable
        ],
    }


def _license_table(configs: list[ConfigResult]) -> str:
    lines = ["| config | license | records |", "|---|---|---|"]
    for c in configs:
        lines += [f"| {c.name} | {lic} | {n} |" for lic, n in sorted(c.licenses.items())]
    return "\n".join(lines)


def _split_table(configs: list[ConfigResult]) -> str:
    lines = ["| config | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    lines += [f"| {c.name} | " + " | ".join(str(c.split_counts[s]) for s in SPLITS) + " |" for c in configs]
    return "\n".join(lines)


def _local_only_notice(configs: list[ConfigResult]) -> str:
    restricted = sorted(c.name for c in _sources(configs) if c.name in LOCAL_ONLY_SOURCES)
    if not restricted:
        return ""
    return (
        f"> **Local use only.** This build contains records of {', '.join(restricted)}, whose license "
        "forbids redistribution of any part. Do not upload or share this folder; `covid-cxr publish` "
        "refuses it.\n"
    )


def _figures_section(figures: dict[str, list[CardFigure]]) -> str:
    parts = []
    for config, shown in figures.items():
        parts += [f"### {config}", "", *(figure.markdown() for figure in shown), ""]
    return "\n".join(parts)


def render_card(
    configs: list[ConfigResult], fingerprint: str, guard: GuardReport, figures: dict[str, list[CardFigure]]
) -> str:
    front = yaml.safe_dump(card_yaml(configs, fingerprint), sort_keys=False, allow_unicode=True)
    sources = _sources(configs)
    body = Template(card_text("template")).substitute(
        local_only=_local_only_notice(configs),
        configs=", ".join(f"`{c.name}`" for c in configs),
        first_config="all",
        split_table=_split_table(configs),
        guard="\n".join(guard_lines(guard)),
        label_by_source="\n".join(label_by_source_lines(guard)),
        figures=_figures_section(figures),
        license_table=_license_table(configs),
        fingerprint=fingerprint,
        source_cards="\n\n".join(card_text(c.name) for c in sources),
        citations="\n\n".join(adapter_class(c.name).citation for c in sources),
    )
    return f"---\n{front}---\n\n{body}"


def render_license_file(configs: list[ConfigResult]) -> str:
    return (
        "# Licenses of this build\n\nEvery record carries its own license (`license_id`, permissions in "
        "`license_*` columns, credit in `attribution`); masks carry their annotation license.\n\n"
        + _license_table(configs)
        + "\n"
    )


ATTRIBUTION_HEADER = """# Attribution

Credit for every image in this build, as its license requires.

| record | license | credit |
|---|---|---|
"""


def attribution_lines(credits: Iterable[tuple[str, str, str]]) -> Iterator[str]:
    """Per-image credit, as CC BY requires: record, license (with its link), credit line."""
    for record_id, license_id, credit in credits:
        url = LICENSES[license_id].url if license_id in LICENSES else None
        shown = f"[{license_id}]({url})" if url else license_id
        yield f"| {record_id} | {shown} | {credit.replace('|', '/')} |\n"
