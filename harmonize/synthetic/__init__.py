"""Seeded synthetic sources that mirror the real layouts, quirks included (no real patient data).

Used by `covid-cxr demo` and by the tests.
"""

from __future__ import annotations

from pathlib import Path

from covid_cxr_unified.harmonize.build import SourceSpec
from covid_cxr_unified.harmonize.synthetic.bimcv import write_bimcv
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.harmonize.synthetic.v7_darwin import write_v7_darwin
from covid_cxr_unified.schema.vocab import Source

# Enough patients that every split of the demo holds both covid19 classes, so the benchmark has
# numbers to show; still a few seconds to build.
DEMO_IEEE8023_PATIENTS = 120


def write_demo_sources(folder: Path, seed: int = 0) -> list[SourceSpec]:
    """Write every synthetic source under `folder` and return the specs to build them."""
    ieee = write_ieee8023(folder / "ieee8023", seed=seed, patients=DEMO_IEEE8023_PATIENTS)
    v7 = write_v7_darwin(folder / "v7_darwin", ieee.root, seed=seed)  # COCO zip + Darwin JSON 1.0/2.0
    bimcv = write_bimcv(folder / "bimcv", seed=seed)  # also as its archives: write_bimcv(…, archives=True)
    write_bimcv(folder / "bimcv-archives", seed=seed, archives=True)
    return [
        SourceSpec(Source.IEEE8023, ieee.root),
        SourceSpec(Source.V7_DARWIN, v7.coco_zip, images=v7.images_dir),
        SourceSpec(Source.BIMCV, bimcv.root),
    ]
