"""Seeded synthetic sources that mirror the real layouts, quirks included (no real patient data).

Used by `covid-cxr demo` and by the tests.
"""

from __future__ import annotations

from pathlib import Path

from covid_cxr_unified.harmonize.build import SourceSpec
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source


def write_demo_sources(folder: Path, seed: int = 0) -> list[SourceSpec]:
    """Write every synthetic source under `folder` and return the specs to build them."""
    ieee = write_ieee8023(folder / "ieee8023", seed=seed)
    return [SourceSpec(Source.IEEE8023, ieee.root)]
