"""Render the build's README.md (the HF dataset card) from cards/ and the build's real counts."""

from __future__ import annotations

from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

import yaml

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.harmonize.features import FEATURES
from covid_cxr_unified.harmonize.splits import SPLITS

if TYPE_CHECKING:
    from covid_cxr_unified.harmonize.build import ConfigResult


def card_text(name: str) -> str:
    """The packaged Markdown text of `cards/<name>.md`."""
    return resources.files("covid_cxr_unified.cards").joinpath(f"{name}.md").read_text(encoding="utf-8")


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def card_yaml(configs: list[ConfigResult], fingerprint: str) -> dict[str, Any]:
    total = sum(sum(c.split_counts.values()) for c in configs)
    return {
        "license": "other",
        "license_name": "mixed-per-record",
        "license_link": "LICENSE.md",
        "pretty_name": "COVID CXR Unified",
        "task_categories": ["image-classification", "image-segmentation"],
        "tags": ["medical", "chest-x-ray", "covid-19", f"fingerprint-{fingerprint[:16]}"],
        "size_categories": [_size_category(total)],
        "build_fingerprint": fingerprint,
        "configs": [
            {
                "config_name": c.name,
                "default": index == 0,
                "data_files": [
                    {"split": split, "path": f"data/{c.name}/{split}-*.parquet"} for split in c.nonempty_splits()
                ],
            }
            for index, c in enumerate(configs)
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
            for c in configs
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


def render_card(configs: list[ConfigResult], fingerprint: str) -> str:
    front = yaml.safe_dump(card_yaml(configs, fingerprint), sort_keys=False, allow_unicode=True)
    body = Template(card_text("template")).substitute(
        configs=", ".join(f"`{c.name}`" for c in configs),
        first_config=configs[0].name,
        split_table=_split_table(configs),
        license_table=_license_table(configs),
        fingerprint=fingerprint,
        source_cards="\n\n".join(card_text(c.name) for c in configs),
        citations="\n\n".join(adapter_class(c.name).citation for c in configs),
    )
    return f"---\n{front}---\n\n{body}"


def render_license_file(configs: list[ConfigResult]) -> str:
    return (
        "# Licenses of this build\n\nEvery record carries its own license (`license_id`, permissions in "
        "`license_*` columns, credit in `attribution`); masks carry their annotation license.\n\n"
        + _license_table(configs)
        + "\n"
    )
