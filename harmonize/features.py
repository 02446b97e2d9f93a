"""The Hugging Face `Features` of every config, and the flattening of a Record into one row."""

from __future__ import annotations

import json
from typing import Any

from datasets import ClassLabel, Features, Image, Json, List, Value

from covid_cxr_unified.schema.record import LicenseRecord, Record
from covid_cxr_unified.schema.vocab import LabelState, View

VIEW_NAMES = [v.value for v in View]
LABEL_STATE_NAMES = [s.value for s in LabelState]

_STR = Value("string")
_BOOL = Value("bool")
_F64 = Value("float64")

LICENSE_PERMISSIONS = (
    "research",
    "commercial",
    "redistribution",
    "derivatives",
    "share_alike",
    "attribution_required",
)
OUTCOME_FIELDS = (
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_o2",
    "extubated",
)
CLINICAL_FIELDS = (
    "temperature_c",
    "po2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
)

FEATURES = Features(
    {
        "record_id": _STR,
        "source": _STR,
        "release": _STR,
        "patient_id": _STR,
        "sex": _STR,
        "age_years": _F64,
        "study_id": _STR,
        "study_date": _STR,
        "study_year": Value("int32"),
        "image": Image(),
        "image_path": _STR,
        "image_sha256": _STR,
        "image_pixel_sha256": _STR,
        "image_phash": _STR,
        "image_format": _STR,
        "image_mode": _STR,
        "width": Value("int32"),
        "height": Value("int32"),
        "bits_stored": Value("int32"),
        "photometric_interpretation": _STR,
        "pixel_spacing_mm": List(_F64, length=2),
        "modality": _STR,
        "view": ClassLabel(names=VIEW_NAMES),
        "view_raw": _STR,
        "view_basis": _STR,
        "view_disagreements": List(_STR),
        "findings": List({"finding": _STR, "state": _STR, "cui": _STR, "raw": _STR}),
        "covid19": ClassLabel(names=LABEL_STATE_NAMES),
        "covid19_basis": _STR,
        "covid19_evidence": List({"basis": _STR, "state": _STR, "date": _STR, "raw": _STR}),
        "offset_days": Value("int32"),
        "offset_reference": _STR,
        **{name: _BOOL for name in OUTCOME_FIELDS},
        **{name: _F64 for name in CLINICAL_FIELDS},
        "masks": List(
            {
                "label": _STR,
                "finding": _STR,
                "size": List(Value("int32"), length=2),
                "counts": _STR,
                "area": Value("int64"),
                "bbox": List(_F64, length=4),
                "annotation_source": _STR,
                "annotation_id": _STR,
                "annotation_license_id": _STR,
                "annotation_attribution": _STR,
            }
        ),
        "license_id": _STR,
        "license_raw": _STR,
        **{f"license_{name}": _BOOL for name in LICENSE_PERMISSIONS},
        "attribution": _STR,
        "license_url": _STR,
        "links": List({"record_id": _STR, "patient_id": _STR, "relation": _STR}),
        "provenance": Json(),
        "merged_from": Json(),
        "raw": Json(),
    }
)


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _license_columns(lic: LicenseRecord) -> dict[str, Any]:
    return {
        "license_id": lic.license_id,
        "license_raw": lic.raw,
        **{f"license_{name}": getattr(lic, name) for name in LICENSE_PERMISSIONS},
        "attribution": lic.attribution,
        "license_url": lic.url,
    }


def record_to_row(record: Record, image_bytes: bytes | None) -> dict[str, Any]:
    """One flat row of FEATURES. Image bytes are embedded unchanged (never re-encoded)."""
    img = record.image
    return {
        "record_id": record.record_id,
        "source": record.source.value,
        "release": record.release,
        "patient_id": record.patient.patient_id,
        "sex": None if record.patient.sex is None else record.patient.sex.value,
        "age_years": record.patient.age_years,
        "study_id": record.study.study_id,
        "study_date": _iso(record.study.study_date),
        "study_year": record.study.study_year,
        "image": None if image_bytes is None else {"bytes": image_bytes, "path": None},
        "image_path": None if img is None else img.path,
        "image_sha256": None if img is None else img.sha256,
        "image_pixel_sha256": None if img is None else img.pixel_sha256,
        "image_phash": None if img is None else img.perceptual_hash,
        "image_format": None if img is None else img.format,
        "image_mode": None if img is None else img.mode,
        "width": None if img is None else img.width,
        "height": None if img is None else img.height,
        "bits_stored": None if img is None else img.bits_stored,
        "photometric_interpretation": None if img is None else img.photometric_interpretation,
        "pixel_spacing_mm": None if img is None or img.pixel_spacing_mm is None else list(img.pixel_spacing_mm),
        "modality": record.modality.value,
        "view": VIEW_NAMES.index(record.view.view.value),
        "view_raw": record.view.raw,
        "view_basis": record.view.basis.value,
        "view_disagreements": list(record.view.disagreements),
        "findings": [
            {"finding": f.finding.value, "state": f.state.value, "cui": f.cui, "raw": f.raw}
            for f in record.findings
        ],
        "covid19": LABEL_STATE_NAMES.index(record.covid19.state.value),
        "covid19_basis": record.covid19.basis.value,
        "covid19_evidence": [
            {"basis": e.basis.value, "state": e.state.value, "date": _iso(e.date), "raw": e.raw}
            for e in record.covid19.evidence
        ],
        "offset_days": record.offset_days,
        "offset_reference": None if record.offset_reference is None else record.offset_reference.value,
        **{name: getattr(record.outcomes, name) for name in OUTCOME_FIELDS},
        **{name: getattr(record.clinical, name) for name in CLINICAL_FIELDS},
        "masks": [
            {
                "label": m.label.value,
                "finding": None if m.finding is None else m.finding.value,
                "size": list(m.size),
                "counts": m.counts,
                "area": m.area,
                "bbox": list(m.bbox),
                "annotation_source": m.annotation_source.value,
                "annotation_id": m.annotation_id,
                "annotation_license_id": m.annotation_license.license_id,
                "annotation_attribution": m.annotation_license.attribution,
            }
            for m in record.masks
        ],
        **_license_columns(record.license),
        "links": [
            {"record_id": lk.record_id, "patient_id": lk.patient_id, "relation": lk.relation}
            for lk in record.links
        ],
        "provenance": canonical_json(record.provenance.model_dump(mode="json")),
        "merged_from": canonical_json([]),
        "raw": canonical_json(record.raw),
    }


def canonical_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
