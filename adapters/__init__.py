"""Source adapters, one module per source, registered by their one name."""

from __future__ import annotations

from covid_cxr_unified.adapters.base import Adapter
from covid_cxr_unified.adapters.bimcv import BimcvAdapter
from covid_cxr_unified.adapters.ieee8023 import Ieee8023Adapter
from covid_cxr_unified.adapters.v7_darwin import V7DarwinAdapter
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.schema.vocab import Source

ADAPTERS: dict[Source, type[Adapter]] = {
    Source.BIMCV: BimcvAdapter,
    Source.IEEE8023: Ieee8023Adapter,
    Source.V7_DARWIN: V7DarwinAdapter,
}


def adapter_class(name: str) -> type[Adapter]:
    """The adapter registered under `name` (e.g. 'ieee8023')."""
    try:
        return ADAPTERS[Source(name)]
    except (ValueError, KeyError):
        known = ", ".join(s.value for s in ADAPTERS)
        raise HarmonizeError(f"unknown source {name!r}; known sources: {known}") from None
