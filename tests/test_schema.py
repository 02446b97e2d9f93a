"""The record model: strict, frozen, validated, and its committed JSON Schema does not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from covid_cxr_unified.adapters.ieee8023 import Ieee8023Adapter
from covid_cxr_unified.harmonize.errors import SchemaDriftError
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.jsonschema import SCHEMA_PATH, check_schema, generate_schema
from covid_cxr_unified.schema.licenses import LICENSES, license_record
from covid_cxr_unified.schema.record import Covid19Label, Mask, Record
from covid_cxr_unified.schema.vocab import Covid19Basis, LabelState, MaskLabel, Source


def test_committed_schema_matches_models() -> None:
    check_schema()
    assert SCHEMA_PATH.read_text(encoding="utf-8") == generate_schema()


def test_drift_is_detected(tmp_path: Path) -> None:
    stale = tmp_path / "record.schema.json"
    stale.write_text(generate_schema().replace('"patient_id"', '"patient"', 1), encoding="utf-8")
    with pytest.raises(SchemaDriftError, match="out of date"):
        check_schema(stale)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> Record:
    root = write_ieee8023(tmp_path_factory.mktemp("src"), seed=0).root
    return next(iter(Ieee8023Adapter(root, metadata_only=True).run())).record


def _with(record: Record, **changes: Any) -> dict[str, Any]:
    return {**record.model_dump(), **changes}


def test_extra_fields_are_forbidden_and_records_frozen(record: Record) -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Record.model_validate(_with(record, split="train"))
    with pytest.raises(ValidationError, match="frozen"):
        record.record_id = "ieee8023:other"  # type: ignore[misc]


def test_ids_must_be_namespaced_by_source(record: Record) -> None:
    with pytest.raises(ValidationError, match="must start with 'ieee8023:'"):
        Record.model_validate(_with(record, record_id="bimcv:x"))
    patient = {**record.patient.model_dump(), "patient_id": "19"}
    with pytest.raises(ValidationError, match="patient_id"):
        Record.model_validate(_with(record, patient=patient))


def test_offset_needs_its_reference(record: Record) -> None:
    with pytest.raises(ValidationError, match="offset_days and offset_reference"):
        Record.model_validate(_with(record, offset_days=3, offset_reference=None))


def test_covid19_basis_must_match_state() -> None:
    with pytest.raises(ValidationError, match="cannot have basis"):
        Covid19Label(state=LabelState.NOT_ANNOTATED, basis=Covid19Basis.PCR)
    with pytest.raises(ValidationError, match="cannot have basis"):
        Covid19Label(state=LabelState.POSITIVE, basis=Covid19Basis.NONE)


def test_mask_names_a_finding_exactly_for_finding_label() -> None:
    lic = license_record("CC-BY-4.0", None)
    common = {"size": (4, 4), "counts": "04", "area": 1, "bbox": (0, 0, 1, 1), "annotation_source": Source.V7_DARWIN}
    with pytest.raises(ValidationError, match="names a finding"):
        Mask(label=MaskLabel.FINDING, annotation_license=lic, **common)  # type: ignore[arg-type]
    Mask(label=MaskLabel.LUNG, annotation_license=lic, **common)  # type: ignore[arg-type]


def test_unknown_license_grants_nothing_and_ids_are_spdx_or_ref() -> None:
    unknown = license_record("LicenseRef-unknown", "")
    assert not any(getattr(unknown, p) for p in ("research", "commercial", "redistribution", "derivatives"))
    for license_id in LICENSES:
        assert license_record(license_id, None).license_id == license_id
    with pytest.raises(ValidationError, match="neither an SPDX id"):
        license_record("CC-BY-4.0", None).model_validate({**unknown.model_dump(), "license_id": "CC BY 4.0"})
