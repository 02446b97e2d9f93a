"""Dry run of one source: parse, map and account for every item without writing a dataset."""

from __future__ import annotations

from pathlib import Path

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import AdapterReport
from covid_cxr_unified.adapters.limits import (
    DEFAULT_MAX_ARCHIVE_MEMBERS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JSON_BYTES,
)
from covid_cxr_unified.harmonize.errors import BuildError


def inspect_source(
    source: str,
    path: Path,
    *,
    images: Path | None = None,
    metadata_only: bool = False,
    records_jsonl: Path | None = None,
    progress: bool = False,
    related: dict[str, Path] | None = None,
    limits: dict[str, int] | None = None,
) -> AdapterReport:
    """`limits`: adapter input limits (max_image_pixels, max_json_bytes, max_archive_members)."""
    links = {adapter_class(name).name: linked for name, linked in (related or {}).items()}
    given = limits or {}
    adapter = adapter_class(source)(
        path,
        images=images,
        metadata_only=metadata_only,
        related=links,
        max_image_pixels=given.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS),
        max_json_bytes=given.get("max_json_bytes", DEFAULT_MAX_JSON_BYTES),
        max_archive_members=given.get("max_archive_members", DEFAULT_MAX_ARCHIVE_MEMBERS),
    )
    try:
        handle = None if records_jsonl is None else records_jsonl.open("w", encoding="utf-8")
    except OSError as exc:
        raise BuildError(f"cannot write {records_jsonl}: {exc.strerror}") from exc
    try:
        for emitted in adapter.run(progress=progress):
            if handle is not None:
                handle.write(emitted.record.model_dump_json() + "\n")
    finally:
        if handle is not None:
            handle.close()
    return adapter.report
