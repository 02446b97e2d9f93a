"""License policies over the permissions of a record's image license and of its masks' licenses.

A record passes a policy only if its image license and every annotation license grant it: a CC BY-NC
image with CC BY masks is non-commercial. Unknown licenses grant nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.schema.licenses import LICENSES
from covid_cxr_unified.schema.record import Record


class LicensePolicy(StrEnum):
    ANY = "any"
    RESEARCH = "research"
    REDISTRIBUTABLE = "redistributable"
    COMMERCIAL = "commercial"


# The permission each policy requires (None: nothing required).
REQUIRED_PERMISSION: dict[LicensePolicy, str | None] = {
    LicensePolicy.ANY: None,
    LicensePolicy.RESEARCH: "research",
    LicensePolicy.REDISTRIBUTABLE: "redistribution",
    LicensePolicy.COMMERCIAL: "commercial",
}

D = TypeVar("D")


def parse_policy(text: str) -> LicensePolicy:
    try:
        return LicensePolicy(text)
    except ValueError:
        choices = ", ".join(p.value for p in LicensePolicy)
        raise HarmonizeError(f"unknown license policy {text!r}; choose one of {choices}") from None


def license_grants(license_id: str | None, permission: str) -> bool:
    terms = LICENSES.get(license_id or "")
    return terms is not None and bool(getattr(terms, permission))


def permits(policy: LicensePolicy, image_license: str | None, annotation_licenses: Iterable[str | None]) -> bool:
    permission = REQUIRED_PERMISSION[policy]
    if permission is None:
        return True
    return license_grants(image_license, permission) and all(
        license_grants(lic, permission) for lic in annotation_licenses
    )


def record_permitted(record: Record, policy: LicensePolicy) -> bool:
    return permits(policy, record.license.license_id, (m.annotation_license.license_id for m in record.masks))


def row_permitted(row: Mapping[str, Any], policy: LicensePolicy) -> bool:
    masks = row.get("masks") or ()
    return permits(policy, row.get("license_id"), (m["annotation_license_id"] for m in masks))


def filter_by_license(dataset: D, policy: LicensePolicy | str) -> D:
    """Keep the rows of a loaded `Dataset` (or every split of a `DatasetDict`) that `policy` permits."""
    chosen = parse_policy(policy) if isinstance(policy, str) else policy

    def keep(license_id: list[str | None], masks: list[list[dict[str, Any]] | None]) -> list[bool]:
        return [
            permits(chosen, lic, (m["annotation_license_id"] for m in mask or ()))
            for lic, mask in zip(license_id, masks, strict=True)
        ]

    filtered: D = dataset.filter(keep, input_columns=["license_id", "masks"], batched=True)  # type: ignore[attr-defined]
    return filtered
