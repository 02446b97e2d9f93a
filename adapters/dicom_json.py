"""DICOM JSON model sidecars (PS3.18 F.2), as BIMCV ships them next to every image.

Keys are 8-digit upper-case hex tags; each value is `{"vr": ..., "Value": [...]}`. `Value` is always
a list; sequences hold item dicts keyed by tag again; PN values are `{"Alphabetic": ...}`; an empty
element is just `{"vr": ...}` with no `Value`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from covid_cxr_unified.adapters.urls import load_json

_TAG = re.compile(r"^[0-9A-F]{8}$")

MODALITY = "00080060"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
SOP_INSTANCE_UID = "00080018"
SERIES_DESCRIPTION = "0008103E"
PATIENT_SEX = "00100040"
PATIENT_AGE = "00101010"
VIEW_POSITION = "00185101"
VIEW_CODE_SEQUENCE = "00540220"
CODE_VALUE = "00080100"
CODE_MEANING = "00080104"
PHOTOMETRIC_INTERPRETATION = "00280004"
ROWS = "00280010"
COLUMNS = "00280011"
PIXEL_SPACING = "00280030"
IMAGER_PIXEL_SPACING = "00181164"
BITS_STORED = "00280101"
WINDOW_CENTER = "00281050"
WINDOW_WIDTH = "00281051"
PRESENTATION_LUT_SHAPE = "20500020"


class SidecarError(ValueError):
    """A sidecar that is not a DICOM JSON object."""


@dataclass(frozen=True)
class DicomJson:
    """Read-only access to one DICOM JSON object."""

    elements: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes) -> DicomJson:
        try:
            obj = load_json(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarError(f"not JSON: {exc}") from exc
        except RecursionError as exc:
            raise SidecarError("not JSON: nested too deeply") from exc
        if not isinstance(obj, dict):
            raise SidecarError("not a JSON object")
        bad = [k for k in obj if not (isinstance(k, str) and _TAG.match(k))]
        if bad:
            raise SidecarError(f"keys are not upper-case hex tags: {', '.join(map(str, bad[:3]))}")
        return cls(obj)

    def values(self, tag: str) -> list[Any]:
        """The element's `Value` list; [] for an absent or empty element."""
        element = self.elements.get(tag)
        if not isinstance(element, dict):
            return []
        value = element.get("Value")
        return value if isinstance(value, list) else []

    def first(self, tag: str) -> Any:
        values = self.values(tag)
        return values[0] if values else None

    def text(self, tag: str) -> str | None:
        """The first value as stripped text (PN: its Alphabetic group); None when absent or blank."""
        value = self.first(tag)
        if isinstance(value, dict):
            value = value.get("Alphabetic")
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def number(self, tag: str) -> float | None:
        value = self.first(tag)
        if isinstance(value, bool) or value is None:
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def numbers(self, tag: str) -> tuple[float, ...] | None:
        try:
            result = tuple(float(v) for v in self.values(tag))
        except (TypeError, ValueError):
            return None
        return result or None

    def items(self, tag: str) -> list[DicomJson]:
        """The items of a sequence element."""
        return [DicomJson(item) for item in self.values(tag) if isinstance(item, dict)]

    def as_json(self) -> dict[str, JsonValue]:
        result: dict[str, JsonValue] = json.loads(json.dumps(dict(self.elements), ensure_ascii=False))
        return result


def dicom_age_years(raw: str | None) -> float | None:
    """DICOM AS (`083Y`, `006M`, `010W`, `003D`) in years; None for anything else."""
    if raw is None or not re.fullmatch(r"\d{3}[YMWD]", raw):
        return None
    number, unit = int(raw[:3]), raw[3]
    return {"Y": float(number), "M": number / 12, "W": number * 7 / 365.25, "D": number / 365.25}[unit]
