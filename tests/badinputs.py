"""The bad-input corpus: every case is generated (seeded) into a temporary folder, never committed.

`TABLE` is the contract: one row per case with the source, the mutation and the expected outcome.
An outcome is one of

* `error`        - a typed error: `what` is the class name (a HarmonizeError subclass), `fragment` a
                   part of its one-line message; the CLI must exit non-zero with one `error:` line;
* `quarantined`  - the item `key` is quarantined with reason `what` (and `fragment` in the detail);
* `excluded`     - the item `key` is excluded with reason `what`;
* `record`       - the item becomes record `key`; `fragment`, when given, is in its flags or repairs;
* `unmapped`     - the raw value `fragment` of field `what` is counted as unmapped, `count` times;
* `note`         - the note `report.notes[what][key]` (e.g. linkage.unmatched) contains `fragment`.

`BUILDERS[case_id](folder)` writes the case and returns how to read it (`CaseInput`).
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covid_cxr_unified.harmonize.synthetic.bimcv import release_files, write_archives
from covid_cxr_unified.harmonize.synthetic.ieee8023 import HEADERS
from covid_cxr_unified.schema.vocab import Source

SEED = 7


@dataclass(frozen=True)
class Expected:
    kind: str  # error | quarantined | excluded | record | unmapped | note
    what: str
    fragment: str = ""
    key: str | None = None
    count: int = 1  # unmapped: how many times the raw value is counted


@dataclass(frozen=True)
class Row:
    case_id: str
    source: Source
    mutation: str
    expected: Expected


@dataclass(frozen=True)
class CaseInput:
    source: Source
    path: Path
    images: Path | None = None
    related: dict[Source, Path] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)  # adapter keyword arguments (max_*)
    metadata_only: bool = False


def err(cls: str, fragment: str) -> Expected:
    return Expected("error", cls, fragment)


def quar(key: str, reason: str, detail: str = "") -> Expected:
    return Expected("quarantined", reason, detail, key)


def rec(key: str, note: str = "") -> Expected:
    return Expected("record", "", note, key)


def unmapped(field_name: str, raw: str, count: int = 1) -> Expected:
    return Expected("unmapped", field_name, raw, count=count)


def excluded(key: str, reason: str) -> Expected:
    return Expected("excluded", reason, "", key)


IEEE, V7, BIMCV = Source.IEEE8023, Source.V7_DARWIN, Source.BIMCV
SFE, SNF = "SourceFormatError", "SourceNotFoundError"

# BIMCV: the image every BIMCV case mutates (a normal 14-bit DX with a sidecar) and its item key.
B_STEM = "sub-S03044_ses-E06790_run-1_bp-chest_vp-pa_dx"
B_FILE = f"covid19_posi/sub-S03044/ses-E06790/mod-rx/{B_STEM}"
B_KEY = f"sub-S03044/ses-E06790/mod-rx/{B_STEM}.png"
B_REC = f"bimcv:sub-S03044/ses-E06790/{B_STEM}"
B_PARTICIPANTS = "covid19_posi/participants.tsv"
B_LABELS = "covid19_posi/derivatives/labels/labels_covid_posi.tsv"

TABLE: tuple[Row, ...] = (
    # --- ieee8023: images -------------------------------------------------------------------------------
    Row("ieee-png-truncated", IEEE, "a.png cut to half its bytes", quar("a.png", "image unreadable")),
    Row("ieee-png-0-bytes", IEEE, "a.png is empty", quar("a.png", "image empty (0 bytes)")),
    Row("ieee-png-rgb", IEEE, "a.png is RGB (accepted: ieee8023 publishes RGB)", rec("ieee8023:a.png")),
    Row("ieee-png-rgba", IEEE, "a.png is RGBA (accepted as published)", rec("ieee8023:a.png")),
    Row("ieee-png-palette", IEEE, "a.png is a palette (P) PNG (accepted as published)", rec("ieee8023:a.png")),
    Row("ieee-png-8bit", IEEE, "a.png is 8-bit grey", rec("ieee8023:a.png")),
    Row("ieee-png-16bit", IEEE, "a.png is 16-bit grey", rec("ieee8023:a.png")),
    Row("ieee-jpeg-truncated", IEEE, "a.jpg cut after its header", quar("a.jpg", "image unreadable")),
    Row("ieee-not-an-image", IEEE, "a.png holds text", quar("a.png", "image unreadable")),
    Row(
        "ieee-eps-disguised",
        IEEE,
        "a.png holds an EPS file (Pillow would run Ghostscript on it)",
        quar("a.png", "image unreadable", "cannot identify image file"),
    ),
    Row("ieee-png-bad-crc", IEEE, "a.png IHDR checksum broken", quar("a.png", "image unreadable")),
    Row("ieee-bomb-header", IEEE, "PNG header declares 30000x30000", quar("a.png", "image too large")),
    Row(
        "ieee-bomb-zeros",
        IEEE,
        "4000x4000 PNG of zeros (24 kB) over max_image_pixels=1e6",
        quar("a.png", "image too large", "1000000"),
    ),
    Row("ieee-image-missing", IEEE, "a.png not in images/", quar("a.png", "image missing")),
    Row(
        "ieee-image-file-too-large",
        IEEE,
        "a.png padded to 2 MB, max_image_pixels=1000: not read",
        quar("a.png", "image too large", "bytes >"),
    ),
    Row(
        "ieee-path-dotdot",
        IEEE,
        "filename ../outside.png (a real PNG outside images/)",
        quar("../outside.png", "image path unsafe"),
    ),
    Row(
        "ieee-path-absolute", IEEE, "filename is an absolute path to a real PNG", quar("ABSOLUTE", "image path unsafe")
    ),
    Row(
        "ieee-path-symlink",
        IEEE,
        "images/a.png is a symlink to a PNG outside images/",
        quar("a.png", "image path unsafe"),
    ),
    # --- ieee8023: metadata.csv ---------------------------------------------------------------------------
    Row(
        "ieee-csv-shifted-columns",
        IEEE,
        "an unquoted comma in clinical_notes shifts row 2",
        quar("row 2", "malformed row", "31 fields, header has 30; line 3"),
    ),
    Row(
        "ieee-csv-bad-quoting",
        IEEE,
        "an unbalanced quote in row 1 joins it with the rows after",
        quar("row 1", "malformed row", "a bad quote joins them"),
    ),
    Row("ieee-csv-non-utf8", IEEE, "a Latin-1 byte in data row 3", err(SFE, "line 4 is not UTF-8")),
    Row("ieee-csv-utf16", IEEE, "the file is UTF-16 with a BOM", err(SFE, "is not UTF-8")),
    Row("ieee-csv-bom", IEEE, "UTF-8 BOM before the header", rec("ieee8023:a.png")),
    Row("ieee-csv-crlf", IEEE, "CRLF line ends", rec("ieee8023:b.png")),
    Row("ieee-csv-nul", IEEE, "a NUL byte inside clinical_notes", rec("ieee8023:a.png")),
    Row("ieee-csv-empty", IEEE, "metadata.csv is 0 bytes", err(SFE, "is empty")),
    Row("ieee-csv-missing-column", IEEE, "no license column", err(SFE, "lacks column(s) license")),
    Row(
        "ieee-csv-huge-cell", IEEE, "a 200 kB cell (over csv's field limit)", err(SFE, "field larger than field limit")
    ),
    Row(
        "ieee-csv-duplicate-filename",
        IEEE,
        "two rows for b.png, different patients (conflicting linkage)",
        quar("b.png", "duplicate filename"),
    ),
    Row("ieee-csv-unknown-finding", IEEE, "finding Pneumonia/Viral/Zika", unmapped("finding", "Pneumonia/Viral/Zika")),
    Row("ieee-csv-unknown-view", IEEE, "view PA/AP", unmapped("view", "PA/AP")),
    Row("ieee-csv-unknown-license", IEEE, "license WTFPL", unmapped("license", "WTFPL")),
    Row("ieee-csv-age-nan", IEEE, "age NaN", unmapped("age", "NaN")),
    Row("ieee-csv-age-impossible", IEEE, "age 250 (kept as raw, no age)", unmapped("age", "250")),
    Row("ieee-csv-offset-not-int", IEEE, "offset 12.5", unmapped("offset", "12.5")),
    Row(
        "ieee-csv-finding-todo",
        IEEE,
        "finding todo",
        excluded("a.png", "finding 'todo': not part of the dataset (ieee8023 #149)"),
    ),
    Row("ieee-csv-ct-row", IEEE, "modality CT in an images/ row", excluded("a.png", "CT slice: not a chest X-ray")),
    Row("ieee-csv-patientid-blank", IEEE, "patientid blank", quar("a.png", "patientid missing")),
    Row("ieee-csv-url-token", IEEE, "url carries ?token=", rec("ieee8023:a.png", "access token removed")),
    Row("ieee-missing-root", IEEE, "no metadata.csv", err(SNF, "no metadata.csv")),
    # --- V7 Darwin: JSON ---------------------------------------------------------------------------------
    Row("v7-coco-invalid-json", V7, "COCO file cut mid-object", err(SFE, "neither a COCO export nor Darwin")),
    Row("v7-coco-deep-nesting", V7, "100000 nested arrays", err(SFE, "neither a COCO export nor Darwin")),
    Row("v7-coco-too-large", V7, "COCO file over max_json_bytes=500", err(SFE, "over the JSON size limit")),
    Row("v7-coco-images-not-list", V7, "'images' is an object", err(SFE, "'images' is not a list of objects")),
    Row(
        "v7-coco-annotation-not-object",
        V7,
        "an annotation is a number",
        err(SFE, "'annotations' is not a list of objects"),
    ),
    Row("v7-coco-unhashable-tag-id", V7, "a tag id is a list", err(SFE, "not a well-formed COCO export")),
    Row("v7-coco-width-string", V7, "width is the string '32'", quar("a.png", "image size missing")),
    Row("v7-coco-area-string", V7, "area and bbox are strings", rec("v7_darwin:a.png")),
    Row(
        "v7-coco-duplicate-file-name",
        V7,
        "two entries for a.png, different PatientID tags",
        quar("a.png (duplicate 3)", "duplicate file_name"),
    ),
    Row("v7-coco-patientid-missing", V7, "no PatientID tag", quar("a.png", "PatientID tag missing")),
    Row("v7-coco-unknown-tag", V7, "tag Zebra", unmapped("tag", "Zebra")),
    Row(
        "v7-coco-lone-surrogate",
        V7,
        'file_name "a\\ud800.png" (valid JSON, not valid Unicode)',
        rec("v7_darwin:a\ufffd.png"),
    ),
    Row("v7-coco-ct-tag", V7, "image tagged CT", excluded("a.png", "CT slice: not a chest X-ray")),
    Row("v7-coco-unknown-class", V7, "annotation class Heart", unmapped("annotation class", "Heart")),
    Row("v7-coco-url-token", V7, "darwin_workview_url carries ?token=", rec("v7_darwin:a.png", "access token removed")),
    Row("v7-zip-bad-crc", V7, "COCO zip with a corrupted member", err(SFE, "not a readable zip archive")),
    Row("v7-zip-too-many-members", V7, "zip with 6 members, max_archive_members=5", err(SFE, "max_archive_members")),
    Row("v7-zip-truncated", V7, "COCO zip cut in half", err(SFE, "neither a COCO export nor Darwin")),
    Row("v7-missing-root", V7, "the export path does not exist", err(SNF, "nothing at")),
    Row(
        "v7-darwin-invalid-json",
        V7,
        "one of two Darwin JSON files is not JSON",
        quar("b.json", "annotation file unreadable", "unreadable JSON"),
    ),
    Row(
        "v7-darwin-wrong-types",
        V7,
        "annotations is a number",
        quar("b.json", "annotation file unreadable", "malformed Darwin JSON"),
    ),
    Row("v7-darwin-too-large", V7, "one Darwin JSON file over max_json_bytes", quar("b.json", "JSON file too large")),
    Row(
        "v7-darwin-url-token",
        V7,
        "image.url, thumbnail_url and a custom link carry ?token=",
        rec("v7_darwin:a.png", "access token removed from the URL in raw image.external_url"),
    ),
    Row(
        "v7-darwin2-not-strict-json",
        V7,
        "a Darwin JSON 2.0 file with a NaN (darwin-py refuses it; its message names the local path)",
        quar("b.json", "annotation file unreadable", "darwin-py cannot decode the file"),
    ),
    Row("v7-darwin-point-no-y", V7, "a polygon point lacks y", rec("v7_darwin:a.png", "non-numeric coordinates")),
    # --- V7 Darwin: geometry -----------------------------------------------------------------------------
    Row("v7-polygon-2-points", V7, "a 2-point polygon", rec("v7_darwin:a.png", "fewer than 3 points")),
    Row("v7-polygon-nan", V7, "a NaN coordinate", rec("v7_darwin:a.png", "non-finite coordinates")),
    Row("v7-polygon-odd-length", V7, "7 coordinates", rec("v7_darwin:a.png", "odd number of coordinates")),
    Row("v7-polygon-outside", V7, "a polygon wholly outside the image", rec("v7_darwin:a.png", "lies outside")),
    Row("v7-polygon-strings", V7, "coordinates are strings", rec("v7_darwin:a.png", "non-numeric coordinates")),
    Row("v7-polygon-zero-area", V7, "collinear points", rec("v7_darwin:a.png", "zero area")),
    Row(
        "v7-rle-wrong-total",
        V7,
        "RLE runs sum to fewer pixels than the image",
        rec("v7_darwin:a.png", "RLE runs do not cover the image"),
    ),
    Row(
        "v7-rle-wrong-size",
        V7,
        "RLE size matches neither orientation",
        rec("v7_darwin:a.png", "RLE size matches neither image orientation"),
    ),
    Row("v7-rle-negative-run", V7, "a negative run length", rec("v7_darwin:a.png", "RLE counts are not a list")),
    Row("v7-rle-compressed", V7, "a compressed (string) RLE", rec("v7_darwin:a.png", "compressed RLE")),
    Row(
        "v7-image-size-differs",
        V7,
        "the image file is 40x40, the export says 32x32",
        quar("a.png", "image size differs from the annotated image"),
    ),
    Row("v7-image-path-dotdot", V7, "file_name ../outside.png", quar("../outside.png", "image path unsafe")),
    Row(
        "v7-linkage-ambiguous",
        V7,
        "ieee8023 lists a.png twice, for two patients",
        Expected("note", "linkage.unmatched", "ambiguous: 2 ieee8023 rows", "a.png"),
    ),
    Row(
        "v7-linkage-csv-huge-cell",
        V7,
        "the ieee8023 CSV to link against has a 200 kB cell",
        err(SFE, "field larger than field limit"),
    ),
    # --- BIMCV: images and sidecars --------------------------------------------------------------------
    Row("bimcv-png-rgb", BIMCV, "the PNG is RGB (BIMCV requires grey)", quar(B_KEY, "image not grayscale (RGB)")),
    Row("bimcv-png-palette", BIMCV, "the PNG is a palette image", quar(B_KEY, "image not grayscale (P)")),
    Row(
        "bimcv-png-8bit",
        BIMCV,
        "the PNG is 8-bit grey (accepted; DICOM says 14 bits)",
        rec(B_REC, "bits stored: DICOM says more than the PNG holds"),
    ),
    Row("bimcv-png-truncated", BIMCV, "the PNG cut in half", quar(B_KEY, "image unreadable")),
    Row("bimcv-png-0-bytes", BIMCV, "the PNG is empty", quar(B_KEY, "image empty (0 bytes)")),
    Row("bimcv-bomb-header", BIMCV, "PNG header declares 30000x30000", quar(B_KEY, "image too large")),
    Row(
        "bimcv-photometric-rgb",
        BIMCV,
        "sidecar PhotometricInterpretation RGB for a grey PNG",
        unmapped("PhotometricInterpretation", "RGB"),
    ),
    Row(
        "bimcv-photometric-palette",
        BIMCV,
        "sidecar PhotometricInterpretation PALETTE COLOR",
        unmapped("PhotometricInterpretation", "PALETTE COLOR"),
    ),
    Row("bimcv-sidecar-too-large", BIMCV, "sidecar over max_json_bytes=1500", quar(B_KEY, "JSON file too large")),
    Row("bimcv-sidecar-deep-json", BIMCV, "sidecar is 100000 nested arrays", rec(B_REC, "sidecar unreadable")),
    Row("bimcv-sidecar-wrong-types", BIMCV, "Value not a list, numbers as text, NaN spacing", rec(B_REC)),
    Row(
        "bimcv-ct-png",
        BIMCV,
        "a PNG named _ct in mod-rx (a CT slice, not a radiograph)",
        excluded(
            "sub-S03044/ses-E06790/mod-rx/sub-S03044_ses-E06790_run-9_bp-chest_ct.png", "CT volume: not a chest X-ray"
        ),
    ),
    Row(
        "bimcv-sidecar-lone-surrogate",
        BIMCV,
        "sidecar Series Description holds a lone surrogate escape",
        rec(B_REC),
    ),
    # --- BIMCV: tables ------------------------------------------------------------------------------
    Row(
        "bimcv-tsv-non-utf8",
        BIMCV,
        "a Latin-1 byte in participants.tsv",
        err(SFE, "participants.tsv line 3 is not UTF-8"),
    ),
    Row("bimcv-tsv-bom", BIMCV, "participants.tsv starts with a UTF-8 BOM", rec(B_REC)),
    Row("bimcv-tsv-crlf", BIMCV, "participants.tsv and the labels table with CRLF", rec(B_REC)),
    Row("bimcv-tsv-missing-column", BIMCV, "participants.tsv lacks gender", err(SFE, "lacks column(s) gender")),
    Row("bimcv-tsv-shifted-row", BIMCV, "a labels row with an extra tab-separated cell", err(SFE, "a shifted row")),
    Row(
        "bimcv-tsv-bad-quoting",
        BIMCV,
        "an unbalanced quote in the labels table",
        err(SFE, "labels_covid_posi.tsv line"),
    ),
    Row("bimcv-tsv-huge-cell", BIMCV, "a 200 kB report cell", err(SFE, "field larger than field limit")),
    Row("bimcv-tsv-unknown-label", BIMCV, "report label 'alien artifact'", unmapped("report label", "alien artifact")),
    Row("bimcv-tsv-unknown-gender", BIMCV, "gender X", unmapped("gender", "X", count=2)),
    Row("bimcv-tsv-age-impossible", BIMCV, "age [250] (kept as raw, no age)", unmapped("age", "250", count=2)),
    Row(
        "bimcv-linkage-conflict",
        BIMCV,
        "the session's label row names another patient",
        rec(B_REC, "label row PatientID differs from the image's subject"),
    ),
    Row(
        "bimcv-roi-nan",
        BIMCV,
        "iteration 1 ROI with a NaN coordinate",
        rec(
            "bimcv:sub-S03044/ses-E06138/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr",
            "ROI rejected: polygon has non-finite coordinates",
        ),
    ),
    Row(
        "bimcv-roi-outside",
        BIMCV,
        "iteration 1 ROI wholly outside the image",
        rec(
            "bimcv:sub-S03044/ses-E06138/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr",
            "ROI rejected: polygon lies outside the image",
        ),
    ),
    Row(
        "bimcv-roi-sidecar-size-negative",
        BIMCV,
        "metadata only: the ROI's image size comes from a sidecar saying Rows -48 (a canvas PIL refuses)",
        rec(
            "bimcv:sub-S03044/ses-E06138/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr",
            "ROI kept out: image size unknown",
        ),
    ),
    Row("bimcv-roi-doctype", BIMCV, "iteration 1 ROI with a DTD", quar("ROI", "ROI unreadable", "DTD")),
    Row(
        "bimcv-roi-doctype-utf16",
        BIMCV,
        "iteration 1 ROI in UTF-16 with a DTD and an entity (invisible to a byte search)",
        quar("ROI", "ROI unreadable", "DTD"),
    ),
    # --- BIMCV: archives ----------------------------------------------------------------------------
    Row("bimcv-tar-absolute", BIMCV, "a member named /etc/evil", err("UnsafeMemberError", "absolute path")),
    Row("bimcv-tar-dotdot", BIMCV, "a member named covid19_posi/../../evil", err("UnsafeMemberError", "'..'")),
    Row("bimcv-tar-symlink", BIMCV, "a symlink member", err("UnsafeMemberError", "is a link")),
    Row("bimcv-tar-hardlink", BIMCV, "a hard-link member", err("UnsafeMemberError", "is a link")),
    Row("bimcv-tar-device", BIMCV, "a character-device member", err("UnsafeMemberError", "device or special file")),
    Row("bimcv-tar-fifo", BIMCV, "a FIFO member", err("UnsafeMemberError", "device or special file")),
    Row(
        "bimcv-tar-non-utf8-name",
        BIMCV,
        "a member whose name has a Latin-1 byte",
        err(SFE, "is not a UTF-8 name"),
    ),
    Row(
        "bimcv-tar-sums-not-utf8",
        BIMCV,
        "sha1sums.txt holds a Latin-1 byte",
        err(SFE, "sha1sums.txt is not UTF-8 text"),
    ),
    Row(
        "bimcv-tar-sha1-mismatch",
        BIMCV,
        "one archive byte changed after sha1sums.txt",
        err("ChecksumMismatchError", "differs from sha1sums.txt"),
    ),
    Row(
        "bimcv-tar-not-listed", BIMCV, "an archive absent from sha1sums.txt", err(SFE, "is not listed in sha1sums.txt")
    ),
    Row("bimcv-tar-sums-missing", BIMCV, "no sha1sums.txt", err(SNF, "sha1sums.txt is missing")),
    Row(
        "bimcv-tar-sums-garbage",
        BIMCV,
        "sha1sums.txt line is not '<sha1>  <file>'",
        err(SFE, "is not '<sha1>  <file>'"),
    ),
    Row(
        "bimcv-tar-truncated", BIMCV, "a .tar.gz cut in half (sha1sums updated)", err(SFE, "not a readable tar archive")
    ),
    Row("bimcv-tar-too-many-members", BIMCV, "max_archive_members=3", err(SFE, "max_archive_members")),
    Row("bimcv-tar-duplicate-member", BIMCV, "one file in two archives", err(SFE, "is in both")),
    Row("bimcv-tar-png-rgb", BIMCV, "an RGB PNG read from an archive", quar(B_KEY, "image not grayscale (RGB)")),
    Row(
        "bimcv-tar-png-bomb-member",
        BIMCV,
        "a 2 MB PNG member (zeros after IEND, 2 kB gzipped), max_image_pixels=1000: left unread",
        quar(B_KEY, "image too large", "bytes >"),
    ),
    Row(
        "bimcv-tar-sidecar-too-large",
        BIMCV,
        "a sidecar member over max_json_bytes=1500: left unread",
        quar(B_KEY, "JSON file too large"),
    ),
    Row("bimcv-missing-root", BIMCV, "the release folder does not exist", err(SNF, "does not exist")),
)


# --- small inputs ---------------------------------------------------------------------------------------


def picture(mode: str = "L", size: tuple[int, int] = (32, 32), fmt: str = "PNG", seed: int = SEED) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 4096, (height, width), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L").convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """An 8-bit grey PNG declaring width x height whose data is `rows` rows of zeros (all rows by default):
    tiny on disk, huge once decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = b"\0" * ((width + 1) * (height if rows is None else rows))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def deep_json(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


# --- ieee8023 ---------------------------------------------------------------------------------------------

IEEE_HEADER: list[str] = list(HEADERS["newest"])


def ieee_row(**cells: str) -> dict[str, str]:
    row = {column: "" for column in IEEE_HEADER}
    row.update(
        patientid="1",
        sex="M",
        age="50",
        finding="Pneumonia/Viral/COVID-19",
        RT_PCR_positive="Y",
        view="PA",
        modality="X-ray",
        date="2020",
        folder="images",
        filename="a.png",
        url="https://example.org/case/1",
        license="CC BY 4.0",
    )
    row.update(cells)
    return row


def ieee_csv(rows: list[dict[str, str]], header: list[str] | None = None) -> str:
    header = header or IEEE_HEADER
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(column, "") for column in header])
    return buffer.getvalue()


def write_ieee(
    folder: Path,
    rows: list[dict[str, str]] | None = None,
    *,
    images: dict[str, bytes] | None = None,
    csv_bytes: bytes | None = None,
) -> Path:
    """metadata.csv (rows a.png of patient 1 and b.png of patient 2 by default) and images/."""
    root = folder / "ieee8023"
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else [ieee_row(), ieee_row(patientid="2", filename="b.png", sex="F")]
    files = {"a.png": picture(seed=1), "b.png": picture(seed=2)}
    files.update(images or {})
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    (root / "metadata.csv").write_bytes(csv_bytes if csv_bytes is not None else ieee_csv(rows).encode())
    return root


def _ieee(build: Callable[[Path], Path], **limits: int) -> Callable[[Path], CaseInput]:
    return lambda folder: CaseInput(IEEE, build(folder), limits=dict(limits))


def _ieee_image(data: bytes, name: str = "a.png") -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> Path:
        return write_ieee(
            folder, [ieee_row(filename=name), ieee_row(patientid="2", filename="b.png")], images={name: data}
        )

    return _ieee(build)


def _ieee_rows(*rows: dict[str, str]) -> Callable[[Path], CaseInput]:
    return _ieee(lambda folder: write_ieee(folder, list(rows)))


def _ieee_text(transform: Callable[[str], bytes]) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> Path:
        rows = [ieee_row(), ieee_row(patientid="2", filename="b.png"), ieee_row(patientid="3", filename="c.png")]
        return write_ieee(folder, csv_bytes=transform(ieee_csv(rows)))

    return _ieee(build)


def _outside_png(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "outside.png").write_bytes(picture(seed=9))
    return folder / "outside.png"


def _ieee_dotdot(folder: Path) -> CaseInput:
    root = write_ieee(folder, [ieee_row(filename="../outside.png")])
    _outside_png(root)
    return CaseInput(IEEE, root)


def _ieee_absolute(folder: Path) -> CaseInput:
    target = _outside_png(folder / "elsewhere")
    return CaseInput(IEEE, write_ieee(folder, [ieee_row(filename=str(target))]))


def _ieee_symlink(folder: Path) -> CaseInput:
    root = write_ieee(folder, [ieee_row()])
    (root / "images" / "a.png").unlink()
    (root / "images" / "a.png").symlink_to(_outside_png(folder / "elsewhere"))
    return CaseInput(IEEE, root)


def _ieee_missing_image(folder: Path) -> CaseInput:
    root = write_ieee(folder)
    (root / "images" / "a.png").unlink()
    return CaseInput(IEEE, root)


def _shift_row_2(text: str) -> bytes:
    lines = text.split("\n")
    lines[2] = lines[2].replace("https://example.org/case/1", "https://example.org/case/1,spilled", 1)
    return "\n".join(lines).encode()


def _bad_quote(text: str) -> bytes:
    lines = text.split("\n")
    lines[1] = lines[1].replace("2020", '"2020 unbalanced', 1)
    return "\n".join(lines).encode()


# --- V7 ----------------------------------------------------------------------------------------------------

SQUARE = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]
V7_TAGS = [
    {"id": 1, "name": "PatientID:1"},
    {"id": 2, "name": "X-ray"},
    {"id": 3, "name": "COVID-19"},
    {"id": 4, "name": "PatientID:2"},
    {"id": 5, "name": "Zebra"},
]


def coco(
    *,
    images: list[Any] | None = None,
    annotations: list[Any] | None = None,
    segmentation: Any = None,
) -> dict[str, Any]:
    """A two-image COCO export: a.png (patient 1, one lung polygon), b.png (patient 2)."""
    if images is None:
        images = [
            {"id": 1, "file_name": "a.png", "width": 32, "height": 32, "tag_ids": [1, 2, 3]},
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32, "tag_ids": [4, 2]},
        ]
    if annotations is None:
        annotations = [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "area": 256.0,
                "bbox": [4, 4, 16, 16],
                "segmentation": [SQUARE] if segmentation is None else segmentation,
            },
            {"id": 2, "image_id": 2, "category_id": 1, "area": 256.0, "bbox": [4, 4, 16, 16], "segmentation": [SQUARE]},
        ]
    return {
        "info": {"date_created": "2020-06-01"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "Lung"}, {"id": 2, "name": "Ignore"}, {"id": 3, "name": "Heart"}],
        "tag_categories": V7_TAGS,
    }


def _v7_json(document: Any = None, *, raw: bytes | None = None, **limits: int) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "output.json"
        path.write_bytes(raw if raw is not None else json.dumps(document).encode())
        return CaseInput(V7, path, limits=dict(limits))

    return build


def _v7_segmentation(segmentation: Any) -> Callable[[Path], CaseInput]:
    return _v7_json(coco(segmentation=segmentation))


def _v7_zip(
    members: dict[str, bytes], *, corrupt: bool = False, truncate: bool = False, **limits: int
) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members.items():
                archive.writestr(name, data)
        data = buffer.getvalue()
        if corrupt:  # flip bytes inside the first member's compressed data: its CRC no longer matches
            start = data.index(b"output.json") + len("output.json") + 10
            data = data[:start] + bytes(b ^ 0x55 for b in data[start : start + 20]) + data[start + 20 :]
        if truncate:
            data = data[: len(data) // 2]
        path = folder / "export.zip"
        path.write_bytes(data)
        return CaseInput(V7, path, limits=dict(limits))

    return build


def darwin1(name: str, pid: str, *, path: list[dict[str, Any]] | None = None, **image: Any) -> dict[str, Any]:
    points = path if path is not None else [{"x": SQUARE[i], "y": SQUARE[i + 1]} for i in range(0, 8, 2)]
    return {
        "dataset": "covid-19-chest-x-ray-dataset",
        "image": {
            "width": 32,
            "height": 32,
            "original_filename": name,
            "filename": name,
            "seq": 1,
            "path": "/",
            "url": "https://darwin.v7labs.com/api/images/1/original?token=SECRETTOKEN1",
            "thumbnail_url": "https://darwin.v7labs.com/api/images/1/thumbnail?token=SECRETTOKEN2",
            **image,
        },
        "annotations": [
            {"name": "Lung", "polygon": {"path": points}},
            {"name": f"PatientID:{pid}", "tag": {}},
            {"name": "X-ray", "tag": {}},
        ],
    }


def _v7_darwin(
    second: bytes | None = None, *, first: dict[str, Any] | None = None, **limits: int
) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        root = folder / "darwin"
        root.mkdir(parents=True, exist_ok=True)
        (root / "a.json").write_text(json.dumps(first or darwin1("a.png", "1")), encoding="utf-8")
        (root / "b.json").write_bytes(second if second is not None else json.dumps(darwin1("b.png", "2")).encode())
        return CaseInput(V7, root, limits=dict(limits))

    return build


def _v7_with_images(document: dict[str, Any], images: dict[str, bytes]) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        case = _v7_json(document)(folder)
        (folder / "images").mkdir()
        for name, data in images.items():
            (folder / "images" / name).write_bytes(data)
        _outside_png(folder)
        return CaseInput(V7, case.path, images=folder / "images")

    return build


def _v7_linked(rows: list[dict[str, str]], csv_bytes: bytes | None = None) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        ieee = write_ieee(folder, rows, csv_bytes=csv_bytes)
        return CaseInput(V7, _v7_json(coco())(folder).path, related={IEEE: ieee})

    return build


def _coco_images(**over: Any) -> list[dict[str, Any]]:
    return [
        {"id": 1, "file_name": "a.png", "width": 32, "height": 32, "tag_ids": [1, 2, 3], **over},
        {"id": 2, "file_name": "b.png", "width": 32, "height": 32, "tag_ids": [4, 2]},
    ]


# --- BIMCV ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _release(layout: str) -> dict[str, bytes]:
    return release_files(layout, seed=SEED)


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        target = root.joinpath(*path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _bimcv(
    mutate: Callable[[dict[str, bytes]], None], *, layout: str = "iter12", **limits: int
) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        files = dict(_release(layout))
        mutate(files)
        root = folder / "bimcv"
        _write_tree(root, files)
        return CaseInput(BIMCV, root, limits=dict(limits))

    return build


def _bimcv_metadata_only(
    mutate: Callable[[dict[str, bytes]], None], *, layout: str = "iter12"
) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        case = _bimcv(mutate, layout=layout)(folder)
        return CaseInput(BIMCV, case.path, metadata_only=True)

    return build


def _set(path: str, data: bytes) -> Callable[[dict[str, bytes]], None]:
    def mutate(files: dict[str, bytes]) -> None:
        files[path] = data

    return mutate


def _edit(path: str, change: Callable[[bytes], bytes]) -> Callable[[dict[str, bytes]], None]:
    def mutate(files: dict[str, bytes]) -> None:
        files[path] = change(files[path])

    return mutate


def _sidecar(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(data: bytes) -> bytes:
        document = json.loads(data)
        change(document)
        return json.dumps(document).encode()

    return _edit(f"{B_FILE}.json", edit)


def _photometric(value: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["00280004"] = {"vr": "CS", "Value": [value]}

    return change


def _wrong_types(document: dict[str, Any]) -> None:
    document["00280010"] = {"vr": "US", "Value": "forty-eight"}
    document["00280011"] = {"vr": "US", "Value": [None]}
    document["00280101"] = {"vr": "US", "Value": ["fourteen"]}
    document["00280030"] = {"vr": "DS", "Value": ["NaN", "x"]}
    document["00185101"] = {"vr": "CS", "Value": [{"Alphabetic": 3}]}
    document["00540220"] = {"vr": "SQ", "Value": ["not an item", 5]}
    document["00080020"] = {"vr": "DA", "Value": [20200325]}


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        assert old in data, old
        return data.replace(old, new, 1)

    return change


ROI_PATH = (
    "bimcv_covid19_posi_head_iter1/derivatives/roi/sub-S03044/derivatives\\roi\\sub-S03044\\ses-E06138\\"
    "mod-rx\\sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_mod-cr_roi.xml"
)


def _bimcv_archives(
    mutate_tar: Callable[[Path], None] | None = None,
    *,
    files_mutate: Callable[[dict[str, bytes]], None] | None = None,
    **limits: int,
) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        files = dict(_release("iter12"))
        if files_mutate is not None:
            files_mutate(files)
        root = folder / "bimcv-archives"
        write_archives(root, files, "iter12")
        if mutate_tar is not None:
            mutate_tar(root)
        return CaseInput(BIMCV, root, limits=dict(limits))

    return build


HEAD = "covid19_posi_head.tar.gz"


def _resum(root: Path) -> None:
    names = sorted(p.name for p in root.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".tar-tvf.txt")))
    sums = {n: hashlib.sha1((root / n).read_bytes(), usedforsecurity=False).hexdigest() for n in names}
    (root / "sha1sums.txt").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()), encoding="utf-8")


def _add_member(make: Callable[[], tarfile.TarInfo], data: bytes = b"") -> Callable[[Path], None]:
    """Rewrite the head archive with one more member, and sha1sums.txt to match (a well-formed release
    archive that is nevertheless unsafe)."""

    def mutate(root: Path) -> None:
        archive = root / HEAD
        with tarfile.open(archive, "r:gz") as tar:
            members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for member, content in members:
                tar.addfile(member, io.BytesIO(content) if content is not None else None)
            extra = make()
            extra.size = len(data) if extra.isfile() else 0
            tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
        archive.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
        _resum(root)

    return mutate


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Callable[[], tarfile.TarInfo]:
    def make() -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = kind, link, 0o644
        return info

    return make


def _corrupt_byte(root: Path) -> None:
    data = bytearray((root / HEAD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / HEAD).write_bytes(bytes(data))


def _truncate(root: Path) -> None:
    data = (root / HEAD).read_bytes()
    (root / HEAD).write_bytes(data[: len(data) // 2])
    _resum(root)


def _unlist(root: Path) -> None:
    sums = root / "sha1sums.txt"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if HEAD not in line))


def _duplicate_member(root: Path) -> None:
    _add_member(_member("covid19_posi/participants.tsv"), b"participant\tage\tgender\n")(root)


def _rgb_in_archive(files: dict[str, bytes]) -> None:
    files[f"{B_FILE}.png"] = picture("RGB", (64, 48))


def _latin1_participants(files: dict[str, bytes]) -> None:
    files[B_PARTICIPANTS] = files[B_PARTICIPANTS].replace(b"sub-S03045\t", "sub-S03045\u00e9\t".encode("latin-1"), 1)


def _crlf(files: dict[str, bytes]) -> None:
    for path in (B_PARTICIPANTS, B_LABELS):
        files[path] = files[path].replace(b"\n", b"\r\n")


def _no_gender(files: dict[str, bytes]) -> None:
    lines = files[B_PARTICIPANTS].decode().splitlines()
    files[B_PARTICIPANTS] = ("\n".join(line.rsplit("\t", 1)[0] for line in lines) + "\n").encode()


def _labels_line(change: Callable[[str], str]) -> Callable[[dict[str, bytes]], None]:
    """Apply `change` to the labels row of ses-E06790 (the first one)."""

    def mutate(files: dict[str, bytes]) -> None:
        lines = files[B_LABELS].decode().split("\n")
        index = next(i for i, line in enumerate(lines) if "\tses-E06790\t" in line)
        lines[index] = change(lines[index])
        files[B_LABELS] = "\n".join(lines).encode()

    return mutate


def _roi(change: Callable[[bytes], bytes]) -> Callable[[Path], CaseInput]:
    def build(folder: Path) -> CaseInput:
        files = dict(_release("iter1"))
        files[ROI_PATH] = change(files[ROI_PATH])
        root = folder / "bimcv"
        _write_tree(root, files)
        return CaseInput(BIMCV, root)

    return build


def _roi_points(data: bytes, x: str, y: str) -> bytes:
    """Set every coordinate of the first ROI polygon (ground glass) to x, y on its first point."""
    text = data.decode()
    first_x = text.index('<x value="') + len('<x value="')
    text = text[:first_x] + x + text[text.index('"', first_x) :]
    first_y = text.index('<y value="') + len('<y value="')
    text = text[:first_y] + y + text[text.index('"', first_y) :]
    return text.encode()


def _roi_shift_outside(data: bytes) -> bytes:
    """Move the consolidation polygon (the second) far outside the 64x48 image."""
    text = data.decode()
    head, _, tail = text.partition("consolidation")
    for value in ("40.0", "54.0", "52.0"):
        tail = tail.replace(f'<x value="{value}"', f'<x value="{float(value) + 500}"')
    return (head + "consolidation" + tail).encode()


# --- the builders, by case id -------------------------------------------------------------------------


BUILDERS: dict[str, Callable[[Path], CaseInput]] = {
    # ieee8023 images
    "ieee-png-truncated": _ieee_image(picture()[: len(picture()) // 2]),
    "ieee-png-0-bytes": _ieee_image(b""),
    "ieee-png-rgb": _ieee_image(picture("RGB")),
    "ieee-png-rgba": _ieee_image(picture("RGBA")),
    "ieee-png-palette": _ieee_image(picture("P")),
    "ieee-png-8bit": _ieee_image(picture("L")),
    "ieee-png-16bit": _ieee_image(picture("I;16")),
    "ieee-jpeg-truncated": _ieee_image(picture("L", fmt="JPEG")[:200], name="a.jpg"),
    "ieee-not-an-image": _ieee_image(b"this is not a picture\n" * 10),
    "ieee-eps-disguised": _ieee_image(
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"
    ),
    "ieee-png-bad-crc": _ieee_image(picture()[:29] + b"\0\0\0\0" + picture()[33:]),
    "ieee-bomb-header": _ieee_image(png_bomb(30_000, 30_000, rows=1)),
    "ieee-bomb-zeros": _ieee(
        lambda f: write_ieee(f, [ieee_row()], images={"a.png": png_bomb(4000, 4000)}), max_image_pixels=1_000_000
    ),
    "ieee-image-missing": _ieee_missing_image,
    "ieee-image-file-too-large": _ieee(
        lambda f: write_ieee(f, [ieee_row()], images={"a.png": picture() + b"\0" * 2_000_000}), max_image_pixels=1000
    ),
    "ieee-path-dotdot": _ieee_dotdot,
    "ieee-path-absolute": _ieee_absolute,
    "ieee-path-symlink": _ieee_symlink,
    # ieee8023 metadata.csv
    "ieee-csv-shifted-columns": _ieee_text(_shift_row_2),
    "ieee-csv-bad-quoting": _ieee_text(_bad_quote),
    "ieee-csv-non-utf8": _ieee_text(lambda t: t.replace("c.png", "c\u00e9.png").encode("latin-1")),
    "ieee-csv-utf16": _ieee_text(lambda t: t.encode("utf-16")),
    "ieee-csv-bom": _ieee_text(lambda t: b"\xef\xbb\xbf" + t.encode()),
    "ieee-csv-crlf": _ieee_text(lambda t: t.replace("\n", "\r\n").encode()),
    "ieee-csv-nul": _ieee_rows(ieee_row(clinical_notes="before\0after")),
    "ieee-csv-empty": _ieee_text(lambda t: b""),
    "ieee-csv-missing-column": _ieee(
        lambda f: write_ieee(f, csv_bytes=ieee_csv([ieee_row()], [c for c in IEEE_HEADER if c != "license"]).encode())
    ),
    "ieee-csv-huge-cell": _ieee_rows(ieee_row(clinical_notes="x" * 200_000)),
    "ieee-csv-duplicate-filename": _ieee_rows(
        ieee_row(), ieee_row(patientid="2", filename="b.png"), ieee_row(patientid="3", filename="b.png")
    ),
    "ieee-csv-unknown-finding": _ieee_rows(ieee_row(finding="Pneumonia/Viral/Zika")),
    "ieee-csv-unknown-view": _ieee_rows(ieee_row(view="PA/AP")),
    "ieee-csv-unknown-license": _ieee_rows(ieee_row(license="WTFPL")),
    "ieee-csv-age-nan": _ieee_rows(ieee_row(age="NaN")),
    "ieee-csv-age-impossible": _ieee_rows(ieee_row(age="250")),
    "ieee-csv-offset-not-int": _ieee_rows(ieee_row(offset="12.5")),
    "ieee-csv-finding-todo": _ieee_rows(ieee_row(finding="todo")),
    "ieee-csv-ct-row": _ieee_rows(ieee_row(modality="CT", view="Axial")),
    "ieee-csv-patientid-blank": _ieee_rows(ieee_row(patientid=" ")),
    "ieee-csv-url-token": _ieee_rows(ieee_row(url="https://example.org/case/1?id=4&token=SECRETTOKEN3")),
    "ieee-missing-root": lambda folder: CaseInput(IEEE, folder / "nowhere"),
    # V7 JSON
    "v7-coco-invalid-json": _v7_json(raw=json.dumps(coco()).encode()[:300]),
    "v7-coco-deep-nesting": _v7_json(raw=deep_json()),
    "v7-coco-too-large": _v7_json(coco(), max_json_bytes=500),
    "v7-coco-images-not-list": _v7_json({**coco(), "images": {"a.png": 1}}),
    "v7-coco-annotation-not-object": _v7_json(coco(annotations=[5])),
    "v7-coco-unhashable-tag-id": _v7_json(coco(images=_coco_images(tag_ids=[[1], 2]))),
    "v7-coco-width-string": _v7_json(coco(images=_coco_images(width="32"))),
    "v7-coco-area-string": _v7_json(
        coco(
            annotations=[
                {"id": 1, "image_id": 1, "category_id": 1, "area": "big", "bbox": "4,4,16,16", "segmentation": [SQUARE]}
            ]
        )
    ),
    "v7-coco-duplicate-file-name": _v7_json(
        coco(images=[*_coco_images(), {"id": 3, "file_name": "a.png", "width": 32, "height": 32, "tag_ids": [4]}])
    ),
    "v7-coco-patientid-missing": _v7_json(coco(images=_coco_images(tag_ids=[2, 3]))),
    "v7-coco-unknown-tag": _v7_json(coco(images=_coco_images(tag_ids=[1, 2, 5]))),
    "v7-coco-lone-surrogate": _v7_json(raw=json.dumps(coco(images=_coco_images(file_name="a\ud800.png"))).encode()),
    "v7-coco-ct-tag": _v7_json(
        {**coco(images=_coco_images(tag_ids=[1, 6])), "tag_categories": [*V7_TAGS, {"id": 6, "name": "CT"}]}
    ),
    "v7-coco-unknown-class": _v7_json(
        coco(annotations=[{"id": 1, "image_id": 1, "category_id": 3, "segmentation": [SQUARE]}])
    ),
    "v7-coco-url-token": _v7_json(
        coco(images=_coco_images(darwin_workview_url="https://darwin.v7labs.com/workview?image=1&token=SECRETTOKEN4"))
    ),
    "v7-zip-bad-crc": _v7_zip({"output.json": json.dumps(coco()).encode()}, corrupt=True),
    "v7-zip-too-many-members": _v7_zip({f"{i}.json": b"{}" for i in range(6)}, max_archive_members=5),
    "v7-zip-truncated": _v7_zip({"output.json": json.dumps(coco()).encode()}, truncate=True),
    "v7-missing-root": lambda folder: CaseInput(V7, folder / "nowhere.zip"),
    "v7-darwin-invalid-json": _v7_darwin(b'{"image": {"original_filename": "b.png"'),
    "v7-darwin-wrong-types": _v7_darwin(json.dumps({**darwin1("b.png", "2"), "annotations": 5}).encode()),
    "v7-darwin-too-large": _v7_darwin(
        json.dumps({**darwin1("b.png", "2"), "pad": "x" * 5000}).encode(), max_json_bytes=4000
    ),
    "v7-darwin-url-token": _v7_darwin(
        first=darwin1(
            "a.png", "1", external_url="https://storage.example.com/a.png?X-Amz-Signature=abc&token=SECRETTOKEN5"
        )
    ),
    "v7-darwin2-not-strict-json": _v7_darwin(
        json.dumps(
            {
                "version": "2.0",
                "item": {
                    "name": "b.png",
                    "path": "/",
                    "slots": [
                        {
                            "type": "image",
                            "slot_name": "0",
                            "width": 32,
                            "height": 32,
                            "source_files": [{"file_name": "b.png"}],
                        }
                    ],
                },
                "annotations": [
                    {
                        "id": "1",
                        "name": "Lung",
                        "slot_names": ["0"],
                        "polygon": {"paths": [[{"x": float("nan"), "y": 4}, {"x": 20, "y": 4}, {"x": 20, "y": 20}]]},
                    }
                ],
            }
        ).encode()
    ),
    "v7-darwin-point-no-y": _v7_darwin(
        first=darwin1("a.png", "1", path=[{"x": 4}, {"x": 20, "y": 4}, {"x": 20, "y": 20}])
    ),
    # V7 geometry
    "v7-polygon-2-points": _v7_segmentation([[4, 4, 20, 20]]),
    "v7-polygon-nan": _v7_json(raw=json.dumps(coco(segmentation=[[4, 4, float("nan"), 4, 20, 20]])).encode()),
    "v7-polygon-odd-length": _v7_segmentation([[4, 4, 20, 4, 20, 20, 4]]),
    "v7-polygon-outside": _v7_segmentation([[100, 100, 120, 100, 120, 120]]),
    "v7-polygon-strings": _v7_segmentation([["4", "4", "20", "4", "20", "20"]]),
    "v7-polygon-zero-area": _v7_segmentation([[4, 4, 10, 10, 20, 20]]),
    "v7-rle-wrong-total": _v7_segmentation({"counts": [10, 20, 30], "size": [32, 32]}),
    "v7-rle-wrong-size": _v7_segmentation({"counts": [500, 24, 500], "size": [16, 64]}),
    "v7-rle-negative-run": _v7_segmentation({"counts": [1100, -100, 24], "size": [32, 32]}),
    "v7-rle-compressed": _v7_segmentation({"counts": "PPYo0", "size": [32, 32]}),
    "v7-image-size-differs": _v7_with_images(coco(), {"a.png": picture(size=(40, 40)), "b.png": picture()}),
    "v7-image-path-dotdot": _v7_with_images(
        coco(images=[{"id": 1, "file_name": "../outside.png", "width": 32, "height": 32, "tag_ids": [1, 2]}]), {}
    ),
    "v7-linkage-ambiguous": _v7_linked([ieee_row(), ieee_row(patientid="9", filename="a.png")]),
    "v7-linkage-csv-huge-cell": _v7_linked([ieee_row(clinical_notes="x" * 200_000)]),
    # BIMCV images and sidecars
    "bimcv-png-rgb": _bimcv(_set(f"{B_FILE}.png", picture("RGB", (64, 48)))),
    "bimcv-png-palette": _bimcv(_set(f"{B_FILE}.png", picture("P", (64, 48)))),
    "bimcv-png-8bit": _bimcv(_set(f"{B_FILE}.png", picture("L", (64, 48)))),
    "bimcv-png-truncated": _bimcv(_edit(f"{B_FILE}.png", lambda d: d[: len(d) // 2])),
    "bimcv-png-0-bytes": _bimcv(_set(f"{B_FILE}.png", b"")),
    "bimcv-bomb-header": _bimcv(_set(f"{B_FILE}.png", png_bomb(30_000, 30_000, rows=1))),
    "bimcv-photometric-rgb": _bimcv(_sidecar(_photometric("RGB"))),
    "bimcv-photometric-palette": _bimcv(_sidecar(_photometric("PALETTE COLOR"))),
    "bimcv-sidecar-too-large": _bimcv(
        _sidecar(lambda d: d.update({"00102000": {"vr": "LT", "Value": ["x" * 2000]}})), max_json_bytes=1500
    ),
    "bimcv-sidecar-deep-json": _bimcv(_set(f"{B_FILE}.json", deep_json())),
    "bimcv-sidecar-wrong-types": _bimcv(_sidecar(_wrong_types)),
    "bimcv-ct-png": _bimcv(
        _set(
            "covid19_posi/sub-S03044/ses-E06790/mod-rx/sub-S03044_ses-E06790_run-9_bp-chest_ct.png",
            picture("L", (64, 48)),
        )
    ),
    "bimcv-sidecar-lone-surrogate": _bimcv(
        _sidecar(lambda d: d.update({"0008103E": {"vr": "LO", "Value": ["T\udc80RAX"]}}))
    ),
    # BIMCV tables
    "bimcv-tsv-non-utf8": _bimcv(_latin1_participants),
    "bimcv-tsv-bom": _bimcv(_edit(B_PARTICIPANTS, lambda d: b"\xef\xbb\xbf" + d)),
    "bimcv-tsv-crlf": _bimcv(_crlf),
    "bimcv-tsv-missing-column": _bimcv(_no_gender),
    "bimcv-tsv-shifted-row": _bimcv(
        _labels_line(lambda line: line.replace("\tses-E06790\t", "\tses-E06790\tspilled\t", 1))
    ),
    "bimcv-tsv-bad-quoting": _bimcv(_labels_line(lambda line: line.replace("\tses-E06790\t", '\tses-E06790\t"x"y', 1))),
    "bimcv-tsv-huge-cell": _bimcv(_labels_line(lambda line: line.replace("se compara", "x" * 200_000, 1))),
    "bimcv-tsv-unknown-label": _bimcv(_labels_line(lambda line: line.replace("'unchanged'", "'alien artifact'", 1))),
    "bimcv-tsv-unknown-gender": _bimcv(_edit(B_PARTICIPANTS, _replace(b"[83]\tF", b"[83]\tX"))),
    "bimcv-tsv-age-impossible": _bimcv(_edit(B_PARTICIPANTS, _replace(b"[83]\tF", b"[250]\tF"))),
    "bimcv-linkage-conflict": _bimcv(
        _labels_line(lambda line: line.replace("sub-S03044\tses-E06790", "sub-S03045\tses-E06790", 1))
    ),
    "bimcv-roi-nan": _roi(lambda d: _roi_points(d, "NaN", "10.0")),
    "bimcv-roi-outside": _roi(_roi_shift_outside),
    "bimcv-roi-doctype-utf16": _roi(
        lambda d: (
            d.decode()
            .replace('encoding="UTF-8"', 'encoding="UTF-16"')
            .replace("?>", '?><!DOCTYPE x [<!ENTITY a "consolidation">]>', 1)
            .replace('value="consolidation"', 'value="&a;"')
            .encode("utf-16")
        )
    ),
    "bimcv-roi-sidecar-size-negative": _bimcv_metadata_only(
        _edit(
            "bimcv_covid19_posi_subjects_1/sub-S03044/ses-E06138/mod-rx/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr.json",
            lambda d: json.dumps({**json.loads(d), "00280010": {"vr": "US", "Value": [-48]}}).encode(),
        ),
        layout="iter1",
    ),
    "bimcv-roi-doctype": _roi(lambda d: d.replace(b"?>", b'?><!DOCTYPE x [<!ENTITY a "b">]>', 1)),
    # BIMCV archives
    "bimcv-tar-absolute": _bimcv_archives(
        _add_member(_member("/etc/evil")),
    ),
    "bimcv-tar-dotdot": _bimcv_archives(_add_member(_member("covid19_posi/../../evil"))),
    "bimcv-tar-symlink": _bimcv_archives(_add_member(_member("covid19_posi/link", tarfile.SYMTYPE, "/etc/passwd"))),
    "bimcv-tar-hardlink": _bimcv_archives(_add_member(_member("covid19_posi/hard", tarfile.LNKTYPE, "/etc/passwd"))),
    "bimcv-tar-device": _bimcv_archives(_add_member(_member("covid19_posi/dev", tarfile.CHRTYPE))),
    "bimcv-tar-fifo": _bimcv_archives(_add_member(_member("covid19_posi/fifo", tarfile.FIFOTYPE))),
    "bimcv-tar-non-utf8-name": _bimcv_archives(_add_member(_member("covid19_posi/caf\udce9.txt"), b"x")),
    "bimcv-tar-sums-not-utf8": _bimcv_archives(
        lambda root: (root / "sha1sums.txt").write_bytes((root / "sha1sums.txt").read_bytes() + b"caf\xe9\n")
    ),
    "bimcv-tar-sha1-mismatch": _bimcv_archives(_corrupt_byte),
    "bimcv-tar-not-listed": _bimcv_archives(_unlist),
    "bimcv-tar-sums-missing": _bimcv_archives(lambda root: (root / "sha1sums.txt").unlink()),
    "bimcv-tar-sums-garbage": _bimcv_archives(lambda root: (root / "sha1sums.txt").write_text("not a checksum\n")),
    "bimcv-tar-truncated": _bimcv_archives(_truncate),
    "bimcv-tar-too-many-members": _bimcv_archives(max_archive_members=3),
    "bimcv-tar-duplicate-member": _bimcv_archives(_duplicate_member),
    "bimcv-tar-png-rgb": _bimcv_archives(files_mutate=_rgb_in_archive),
    "bimcv-tar-png-bomb-member": _bimcv_archives(
        files_mutate=_edit(f"{B_FILE}.png", lambda d: d + b"\0" * 2_000_000), max_image_pixels=1000
    ),
    "bimcv-tar-sidecar-too-large": _bimcv_archives(
        files_mutate=_sidecar(lambda d: d.update({"00102000": {"vr": "LT", "Value": ["x" * 2000]}})),
        max_json_bytes=1500,
    ),
    "bimcv-missing-root": lambda folder: CaseInput(BIMCV, folder / "nowhere"),
}


def resolve_key(case_id: str, key: str | None, case: CaseInput) -> str | None:
    """Keys that depend on the temporary folder (an absolute path, the ROI file name)."""
    if key == "ABSOLUTE":
        return str(case.path.parent / "elsewhere" / "outside.png")
    if key == "ROI":
        return ROI_PATH
    return key


def markdown_table() -> str:
    """The table for people: `python tests/badinputs.py > corpus.md`."""
    lines = ["| case | source | mutation | expected |", "|---|---|---|---|"]
    for row in TABLE:
        e = row.expected
        outcome = {
            "error": f"{e.what}: …{e.fragment}…",
            "quarantined": f"quarantined `{e.key}`: {e.what}" + (f" (…{e.fragment}…)" if e.fragment else ""),
            "excluded": f"excluded `{e.key}`: {e.what}",
            "record": f"record `{e.key}`" + (f", says …{e.fragment}…" if e.fragment else ""),
            "unmapped": f"unmapped {e.what} `{e.fragment}` x{e.count}",
            "note": f"note {e.what}[{e.key}]: …{e.fragment}…",
        }[e.kind]
        lines.append(f"| {row.case_id} | {row.source.value} | {row.mutation} | {outcome} |".replace("\n", " "))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(markdown_table())
