"""Known licenses and what each permits.

Permissions are what the license *grants*: an unknown or unclear license grants nothing it does not
state. Unversioned Creative Commons spellings get a LicenseRef of their own instead of being silently
promoted to a version; every version of one CC family grants the same permissions.
"""

from __future__ import annotations

from dataclasses import dataclass

from covid_cxr_unified.schema.record import LicenseRecord


@dataclass(frozen=True)
class LicenseTerms:
    research: bool
    commercial: bool
    redistribution: bool
    derivatives: bool
    share_alike: bool
    attribution_required: bool
    url: str | None = None


def _cc(*, nc: bool = False, nd: bool = False, sa: bool = False, url: str | None = None) -> LicenseTerms:
    return LicenseTerms(
        research=True,
        commercial=not nc,
        redistribution=True,
        derivatives=not nd,
        share_alike=sa,
        attribution_required=True,
        url=url,
    )


UNKNOWN_LICENSE_ID = "LicenseRef-unknown"

LICENSES: dict[str, LicenseTerms] = {
    "CC-BY-3.0": _cc(url="https://creativecommons.org/licenses/by/3.0/"),
    "CC-BY-4.0": _cc(url="https://creativecommons.org/licenses/by/4.0/"),
    "CC-BY-SA-4.0": _cc(sa=True, url="https://creativecommons.org/licenses/by-sa/4.0/"),
    "CC-BY-NC-SA-4.0": _cc(nc=True, sa=True, url="https://creativecommons.org/licenses/by-nc-sa/4.0/"),
    "CC-BY-NC-ND-4.0": _cc(nc=True, nd=True, url="https://creativecommons.org/licenses/by-nc-nd/4.0/"),
    "LicenseRef-CC-BY-unversioned": _cc(),
    "LicenseRef-CC-BY-SA-unversioned": _cc(sa=True),
    "LicenseRef-CC-BY-NC-SA-unversioned": _cc(nc=True, sa=True),
    "LicenseRef-CC-BY-NC-ND-unversioned": _cc(nc=True, nd=True),
    "Apache-2.0": LicenseTerms(
        research=True,
        commercial=True,
        redistribution=True,
        derivatives=True,
        share_alike=False,
        attribution_required=True,
        url="https://www.apache.org/licenses/LICENSE-2.0",
    ),
    # rad2share images in ieee8023 (PR #93): "no license clearly listed". Viewing and research use is
    # what the publisher authorized; nothing else is stated, so nothing else is granted.
    "LicenseRef-ieee8023-authorized-for-everyone": LicenseTerms(
        research=True,
        commercial=False,
        redistribution=False,
        derivatives=False,
        share_alike=False,
        attribution_required=True,
    ),
    # BIMCV COVID-19+ Research Use Agreement: research only; no redistribution of any part; commercial
    # use and derivatives only with written approval; cite arXiv:2006.01174.
    "LicenseRef-BIMCV-COVID19-RUA": LicenseTerms(
        research=True,
        commercial=False,
        redistribution=False,
        derivatives=False,
        share_alike=False,
        attribution_required=True,
        url="https://bimcv.cipf.es/bimcv-projects/bimcv-covid19/",
    ),
    UNKNOWN_LICENSE_ID: LicenseTerms(
        research=False,
        commercial=False,
        redistribution=False,
        derivatives=False,
        share_alike=False,
        attribution_required=False,
    ),
}


def license_record(license_id: str, raw: str | None, attribution: str | None = None) -> LicenseRecord:
    """The LicenseRecord for a known license id; raises KeyError for an id not in LICENSES."""
    terms = LICENSES[license_id]
    return LicenseRecord(
        license_id=license_id,
        raw=raw,
        research=terms.research,
        commercial=terms.commercial,
        redistribution=terms.redistribution,
        derivatives=terms.derivatives,
        share_alike=terms.share_alike,
        attribution_required=terms.attribution_required,
        attribution=attribution,
        url=terms.url,
    )
