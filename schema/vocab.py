"""Controlled vocabularies shared by every source.

Each enum is the closed set of values a harmonized record may hold. Source-specific spellings are
mapped onto these enums by exact tables that live next to each adapter; an unknown spelling is counted
as unmapped and reported, never guessed.
"""

from __future__ import annotations

from enum import StrEnum


class Source(StrEnum):
    BIMCV = "bimcv"
    IEEE8023 = "ieee8023"
    V7_DARWIN = "v7_darwin"


class Sex(StrEnum):
    MALE = "M"
    FEMALE = "F"


class View(StrEnum):
    """Projection of a chest radiograph. The order is the ClassLabel order in the build."""

    PA = "PA"
    AP = "AP"
    AP_SUPINE = "AP_SUPINE"
    LATERAL = "LATERAL"
    UNKNOWN = "UNKNOWN"


class ViewBasis(StrEnum):
    """Where the view value came from, most trusted first for DICOM sources."""

    METADATA = "metadata"
    DICOM_VIEW_POSITION = "dicom_view_position"
    DICOM_VIEW_CODE_SEQUENCE = "dicom_view_code_sequence"
    DICOM_SERIES_DESCRIPTION = "dicom_series_description"
    FILENAME = "filename"
    TAG = "tag"
    NONE = "none"


class Modality(StrEnum):
    CR = "CR"
    DX = "DX"
    XR = "XR"  # a radiograph whose acquisition type (CR or DX) the source does not say
    CT = "CT"


class LabelState(StrEnum):
    """The five label states that must never be collapsed into each other."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    NOT_MENTIONED = "not_mentioned"  # the source reports on the image but says nothing of this label
    NOT_ANNOTATED = "not_annotated"  # the source never annotates this label


class Covid19Basis(StrEnum):
    PCR = "pcr"
    SEROLOGY = "serology"
    ANTIGEN = "antigen"
    REPORT = "report"
    PUBLICATION = "publication"  # the diagnosis stated by the publication or case the image comes from
    ANNOTATION = "annotation"  # a curator's tag, e.g. V7
    NONE = "none"


class OffsetReference(StrEnum):
    SYMPTOM_ONSET_OR_ADMISSION = "symptom_onset_or_admission"  # ieee8023's definition
    FIRST_POSITIVE_TEST = "first_positive_test"


class MaskLabel(StrEnum):
    LUNG = "lung"
    IGNORE = "ignore"
    FINDING = "finding"  # a region of a finding; the finding itself is named in Mask.finding


class Finding(StrEnum):
    """Canonical findings. ieee8023's hierarchy is flattened into one positive finding per level."""

    NO_FINDING = "no_finding"
    PNEUMONIA = "pneumonia"
    VIRAL_PNEUMONIA = "viral_pneumonia"
    BACTERIAL_PNEUMONIA = "bacterial_pneumonia"
    FUNGAL_PNEUMONIA = "fungal_pneumonia"
    LIPOID_PNEUMONIA = "lipoid_pneumonia"
    ASPIRATION_PNEUMONIA = "aspiration_pneumonia"
    COVID19 = "covid19"
    SARS = "sars"
    MERS = "mers"
    ARDS = "ards"
    INFLUENZA = "influenza"
    INFLUENZA_H1N1 = "influenza_h1n1"
    VARICELLA = "varicella"
    HERPES = "herpes"
    STREPTOCOCCUS = "streptococcus"
    MYCOPLASMA = "mycoplasma"
    KLEBSIELLA = "klebsiella"
    LEGIONELLA = "legionella"
    NOCARDIA = "nocardia"
    E_COLI = "e_coli"
    CHLAMYDOPHILA = "chlamydophila"
    STAPHYLOCOCCUS = "staphylococcus"
    MRSA = "mrsa"
    PNEUMOCYSTIS = "pneumocystis"
    ASPERGILLOSIS = "aspergillosis"
    TUBERCULOSIS = "tuberculosis"


# UMLS concept ids, only where the source data itself pairs the concept with the label
# (BIMCV's report CUIs). Others stay None rather than being looked up from memory.
FINDING_CUI: dict[Finding, str] = {
    Finding.COVID19: "C5203670",
    Finding.PNEUMONIA: "C0032285",
}
