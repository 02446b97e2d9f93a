"""License policies over the permissions of a record's image license and of its masks' licenses.

A record passes a policy only if its image license and every annotation license grant it: a CC BY-NC
image with CC BY masks is non-commercial. Unknown licenses grant nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

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
    """Keep the rows of a loaded `Dataset` (or every split of a `DatasetDict`) that `policy` permits.

    Columnar: the licenses are compared as Arrow arrays (about 1 s per million rows)."""
    chosen = parse_policy(policy) if isinstance(policy, str) else policy
    permission = REQUIRED_PERMISSION[chosen]
    granted = pa.array(
        sorted(lid for lid, terms in LICENSES.items() if permission is None or getattr(terms, permission)),
        type=pa.string(),
    )

    def keep(license_id: Any, masks: Any) -> list[bool]:
        license_id, masks = _array(license_id), _array(masks)
        if permission is None:
            return [True] * len(license_id)
        image_ok = pc.is_in(license_id, value_set=granted).fill_null(False).to_numpy(zero_copy_only=False)
        annotation = pc.struct_field(pc.list_flatten(masks), "annotation_license_id")
        refused = pc.invert(pc.is_in(annotation, value_set=granted).fill_null(False))
        rows_refused = pc.filter(pc.list_parent_indices(masks), refused).to_numpy(zero_copy_only=False)
        image_ok[rows_refused] = False
        result: list[bool] = image_ok.tolist()
        return result

    arrow = dataset.with_format("arrow")  # type: ignore[attr-defined]
    filtered = arrow.filter(keep, input_columns=["license_id", "masks"], batched=True, batch_size=100_000)
    restored: D = filtered.with_format(**_format_of(dataset))
    return restored


def _array(column: Any) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _format_of(dataset: Any) -> dict[str, Any]:
    """The format of a Dataset, or of the first split of a DatasetDict (set on every split alike)."""
    fmt = dataset.format if hasattr(dataset, "format") else next(iter(dataset.values())).format
    return {"type": fmt["type"], "columns": fmt["columns"], "output_all_columns": fmt["output_all_columns"],
            **fmt["format_kwargs"]}
