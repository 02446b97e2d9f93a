"""Deterministic split assignment by a keyed hash of a stable group key.

A group's split depends only on its key, the hash key and the ratios, so adding unrelated patients
never moves an existing assignment.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from covid_cxr_unified.harmonize.errors import HarmonizeError

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_KEY = "covid-cxr-unified/splits/v1"


@dataclass(frozen=True)
class SplitRatios:
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    def __post_init__(self) -> None:
        values = (self.train, self.validation, self.test)
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-9:
            raise HarmonizeError(f"split ratios must be ≥ 0 and sum to 1, got {values}")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """'0.8,0.1,0.1' -> SplitRatios."""
        try:
            train, validation, test = (float(part) for part in text.split(","))
        except ValueError as exc:
            raise HarmonizeError(f"split ratios must be three numbers like 0.8,0.1,0.1, got {text!r}") from exc
        return cls(train, validation, test)


def unit_interval(group_key: str, split_key: str = DEFAULT_SPLIT_KEY) -> float:
    digest = hashlib.sha256(f"{split_key}\x00{group_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group_key: str, ratios: SplitRatios, split_key: str = DEFAULT_SPLIT_KEY) -> str:
    u = unit_interval(group_key, split_key)
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.validation:
        return "validation"
    return "test"
