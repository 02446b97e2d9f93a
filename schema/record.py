"""The harmonized record: one chest radiograph (or one metadata row in metadata-only mode).

Models are frozen and reject unknown fields; `None` always means "unknown", never "no" or 0.
`record.schema.json` beside this file is generated from these models (`covid-cxr schema`) and a test
fails when it drifts.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from covid_cxr_unified.schema.vocab import (
    Covid19Basis,
    Finding,
    LabelState,
    MaskLabel,
    Modality,
    OffsetReference,
    Sex,
    Source,
    View,
    ViewBasis,
)

SCHEMA_VERSION = "1.0.0"
MAX_AGE_YEARS = 130

_LICENSE_ID = re.compile(r"^(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9.\-+]+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class LicenseRecord(_Model):
    """A license and what it permits. An unknown license grants nothing."""

    license_id: str = Field(description="SPDX id, or LicenseRef-… for licenses SPDX does not name")
    raw: str | None = Field(description="the license text exactly as the source wrote it")
    research: bool
    commercial: bool
    redistribution: bool
    derivatives: bool
    share_alike: bool
    attribution_required: bool
    attribution: str | None = Field(default=None, description="credit line to reproduce when used")
    url: str | None = None

    @field_validator("license_id")
    @classmethod
    def _license_id_form(cls, value: str) -> str:
        if not _LICENSE_ID.match(value):
            raise ValueError(f"license_id {value!r} is neither an SPDX id nor LicenseRef-…")
        return value


class Patient(_Model):
    patient_id: str = Field(description="namespaced by source: '<source>:<source patient id>'")
    sex: Sex | None = None
    age_years: float | None = Field(default=None, ge=0, le=MAX_AGE_YEARS)


class Study(_Model):
    study_id: str | None = None
    study_date: dt.date | None = Field(default=None, description="set only when the day is known")
    study_year: int | None = Field(default=None, ge=1900, le=2100)
    date_raw: str | None = None


class ImageRef(_Model):
    path: str = Field(description="path relative to the source root, or the member name in an archive")
    archive: str | None = Field(default=None, description="archive file name when read from an archive")
    sha256: str
    format: str = Field(description="PIL format name of the stored bytes, e.g. PNG or JPEG")
    mode: str = Field(description="PIL mode, e.g. L, RGB, RGBA, I;16")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    bits_stored: int | None = Field(default=None, ge=1, le=32)
    photometric_interpretation: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = Field(
        default=None,
        description="(row, column) spacing in mm: DICOM Pixel Spacing (0028,0030), else Imager Pixel "
        "Spacing (0018,1164); None when the source does not say",
    )
    pixel_sha256: str | None = Field(
        default=None, description="sha256 of the decoded pixels (grey or 16-bit), equal for re-encoded copies"
    )
    perceptual_hash: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="256-bit difference hash (dHash) of the picture"
    )

    @field_validator("sha256")
    @classmethod
    def _sha256_form(cls, value: str) -> str:
        if not _SHA256.match(value):
            raise ValueError("sha256 must be 64 lower-case hex digits")
        return value


class ViewInfo(_Model):
    view: View
    raw: str | None = None
    basis: ViewBasis
    disagreements: tuple[str, ...] = Field(
        default=(), description="other view sources that disagree, as 'basis=raw'"
    )


class FindingLabel(_Model):
    finding: Finding
    state: LabelState
    cui: str | None = None
    raw: str | None = None


class Covid19Evidence(_Model):
    basis: Covid19Basis
    state: LabelState
    date: dt.date | None = None
    raw: str | None = None


class Covid19Label(_Model):
    state: LabelState
    basis: Covid19Basis
    evidence: tuple[Covid19Evidence, ...] = ()

    @model_validator(mode="after")
    def _basis_matches_state(self) -> Covid19Label:
        unlabelled = self.state in (LabelState.NOT_ANNOTATED, LabelState.NOT_MENTIONED)
        if unlabelled != (self.basis is Covid19Basis.NONE):
            raise ValueError(f"covid19 state {self.state} cannot have basis {self.basis}")
        return self


class Outcomes(_Model):
    survival: bool | None = None
    intubated: bool | None = None
    intubation_present: bool | None = None
    went_icu: bool | None = None
    in_icu: bool | None = None
    needed_supplemental_o2: bool | None = None
    extubated: bool | None = None


class Clinical(_Model):
    """Lab values as published; implausible values are kept and flagged in provenance."""

    temperature_c: float | None = None
    po2_saturation: float | None = None
    leukocyte_count: float | None = None
    neutrophil_count: float | None = None
    lymphocyte_count: float | None = None


class Mask(_Model):
    """One annotation as COCO RLE (compressed counts string, size = [height, width])."""

    label: MaskLabel
    finding: Finding | None = None
    size: tuple[int, int]
    counts: NonEmptyStr
    area: int = Field(ge=0)
    bbox: tuple[float, float, float, float]
    annotation_source: Source
    annotation_id: str | None = None
    annotation_license: LicenseRecord

    @model_validator(mode="after")
    def _finding_iff_finding_label(self) -> Mask:
        if (self.label is MaskLabel.FINDING) != (self.finding is not None):
            raise ValueError("a mask names a finding exactly when its label is 'finding'")
        return self


class RecordLink(_Model):
    """Another record that shows the same image or the same patient."""

    record_id: str
    patient_id: str | None = None
    relation: str = Field(pattern=r"^(same_image|same_patient)$")


class Provenance(_Model):
    source_file: str = Field(description="path relative to the source root")
    row: int | None = Field(default=None, description="1-based data row in source_file, if tabular")
    adapter_version: str
    repairs: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


class Record(_Model):
    record_id: str = Field(pattern=r"^(bimcv|ieee8023|v7_darwin):.+$")
    source: Source
    release: str = Field(description="which release or header generation of the source was read")
    patient: Patient
    study: Study
    image: ImageRef | None = Field(description="None in metadata-only mode")
    modality: Modality
    view: ViewInfo
    findings: tuple[FindingLabel, ...]
    covid19: Covid19Label
    offset_days: int | None = None
    offset_reference: OffsetReference | None = None
    outcomes: Outcomes
    clinical: Clinical
    masks: tuple[Mask, ...] = ()
    license: LicenseRecord
    links: tuple[RecordLink, ...] = ()
    provenance: Provenance
    raw: dict[str, JsonValue]

    @model_validator(mode="after")
    def _consistent_ids(self) -> Record:
        prefix = f"{self.source.value}:"
        if not self.record_id.startswith(prefix):
            raise ValueError(f"record_id {self.record_id!r} must start with {prefix!r}")
        if not self.patient.patient_id.startswith(prefix):
            raise ValueError(f"patient_id {self.patient.patient_id!r} must start with {prefix!r}")
        if (self.offset_days is None) != (self.offset_reference is None):
            raise ValueError("offset_days and offset_reference are set together or not at all")
        return self
