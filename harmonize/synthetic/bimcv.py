"""A synthetic BIMCV COVID-19+ release, faithful to the real layouts and defects (no real patient data).

Layouts (docs: ../shared/research/bimcv_format.md §1.2, §1.3, §10):

- `iter1`: per-archive folders `bimcv_covid19_posi_head_iter1/` (participants.tsv, derivatives/ with
  `labels_covid19_posi.tsv` whose list cells are tab-separated and quoted, `EHR/sil_reg_covid.tsv` with
  Spanish columns, ROIs under a back-slashed path) and `bimcv_covid19_posi_subjects_N/sub-*/…`;
- `iter12`: `covid19_posi/` with `labels_covid_posi.tsv` (`', '` lists), `sil_reg_covid_posi.tsv`
  (trailing empty column), per-subject `sub-X_sessions.tsv` and `scans.tsv`.

With `archives=True` the same files are written as the release's `.tar.gz`/`.tgz` parts with folder
members, `*.tar-tvf.txt` listings, `sha1sums.txt` and `sha1sums-b.txt` instead of a tree.

Defects reproduced: junk `derivatives` participant, two ages, gender `None`, a subject without
images, a label session without images, several report rows for one session, `unchanged` labels,
an all-empty label row, leading spaces, an empty item, a truncated labels cell, CUI lists with an
empty slot, tests with `POSITIVO/NEGATIVO/INDETERMINADO` and PCR/IGG/IGM/ACT in `dd.mm.YYYY`, a
space-separated `partitions.tsv` header and a listed file that does not exist, 12/14-bit PNGs in
16-bit containers, MONOCHROME1 with an INVERSE LUT, a `vp-ll` file that DICOM says is PA, a file
without `vp-` or View Position, views only in the View Code Sequence or the Series Description, PN,
SQ and empty sidecar elements, Pixel Spacing present or only Imager Pixel Spacing, a missing and an
unparsable sidecar, a 0-byte, an RGB and a truncated PNG, a CT `.nii.gz` in `mod-rx`, and (iteration
1) an AIM ROI file and an unreadable one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import struct
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covid_cxr_unified.harmonize.synthetic.images import encode, synthetic_array

WIDTH, HEIGHT = 64, 48
MTIME = 1602115200  # 2020-10-08, the date in the real listings
LAYOUTS = ("iter1", "iter12")


@dataclass(frozen=True)
class Series:
    stem: str  # without extension
    modality: str  # CR / DX
    date: str
    bits: int = 12
    photometric: str = "MONOCHROME2"
    view_position: str | None = None
    view_code: tuple[str, str] | None = None
    series_description: str = "Chest"
    pixel_spacing: bool = False
    sex: str = "F"
    age: str | None = None
    time: str = "101500.000"
    kind: str = "ok"  # ok | empty | rgb | truncated
    sidecar: str = "ok"  # ok | missing | broken


SERIES: tuple[Series, ...] = (
    Series("sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr", "CR", "20200318", 12, "MONOCHROME1", "AP",
           pixel_spacing=True, age="083Y"),
    Series("sub-S03044_ses-E06790_run-1_bp-chest_vp-pa_dx", "DX", "20200325", 14,
           view_code=("R-10214", "postero-anterior"), age="083Y"),
    Series("sub-S03045_ses-E06139_run-1_bp-chest_vp-ap_dx", "DX", "20200316", 14, "MONOCHROME2", "AP",
           series_description="TORAX AP", sex="M", age="066Y"),
    Series("sub-S03045_ses-E06910_acq-1_run-1_bp-chest_vp-ll_dx", "DX", "20200330", 14, "MONOCHROME2", "PA",
           sex="M", age="066Y", time="101400.000"),
    Series("sub-S03045_ses-E06910_acq-2_run-1_bp-chest_vp-ll_dx", "DX", "20200330", 14, "MONOCHROME2", "LL",
           view_code=("R-10236", "left lateral"), sex="M", age="066Y"),
    Series("sub-S03047_ses-E06214_run-1_bp-chest_cr", "CR", "20200312", 12, "MONOCHROME1",
           series_description="TORAX PA", pixel_spacing=True),
    Series("sub-S03050_ses-E06300_run-1_bp-chest_vp-ap_dx", "DX", "20200320", kind="empty", sex="M"),
    Series("sub-S03050_ses-E06300_run-2_bp-chest_vp-ap_dx", "DX", "20200320", kind="rgb", sex="M"),
    Series("sub-S03050_ses-E06300_run-3_bp-chest_vp-ap_dx", "DX", "20200320", kind="truncated", sex="M"),
    Series("sub-S03050_ses-E06300_run-4_bp-chest_vp-pa_dx", "DX", "20200320", sidecar="missing", sex="M"),
    Series("sub-S03050_ses-E06301_run-1_bp-chest_vp-ap_dx", "DX", "20200402", 16, "MONOCHROME2", "AP",
           sidecar="broken", sex="M", age="071Y"),
    Series("sub-S03050_ses-E06301_run-2_bp-chest_vp-ap_dx", "DX", "20200402", 16, "MONOCHROME2", "AP",
           sex="M", age="071Y"),
)
CT_STEM = "sub-S03047_ses-E06214_run-2_bp-chest_ct"
ROI_IMAGE = "sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr"
BAD_ROI_IMAGE = "sub-S03045_ses-E06139_run-1_bp-chest_vp-ap_dx"
MISSING_LISTED = "sub-S03044/ses-E07712/mod-rx/sub-S03044_ses-E07712_run-1_bp-chest_vp-ap_cr.png"

PARTICIPANTS = (
    "participant\tmodality_dicom\tbody_parts\tage\tgender\n"
    "sub-S03044\t['CR', 'DX']\t[['chest']]\t[83]\tF\n"
    "sub-S03045\t['DX']\t[['chest']]\t[66, 67]\tM\n"
    "sub-S03047\t['CR', 'CT']\t[['chest']]\t[47]\tF\n"
    "sub-S03050\t['DX']\t[['chest']]\t[]\tNone\n"
    "sub-S03125\t[]\t[]\t[]\tNone\n"
    "derivatives\t[]\t[]\t[]\tNone\n"
)

# (PatientID, ReportID, report text, labels, localizations, CUIs); labels/CUIs as item lists, None = NaN.
LABEL_ROWS: tuple[tuple[str, str, str, list[str] | None, list[str], list[str] | None], ...] = (
    ("sub-S03044", "ses-E06138", "infiltrados bilaterales de predominio periferico .  sugestivo de neumonia covid .",
     ["COVID 19", " pneumonia", " infiltrates"], ["loc bilateral", "loc peripheral"],
     ["C5203670", "C0032285", "C0277877"]),
    ("sub-S03044", "ses-E06790", "se compara con rx previa .  sin cambios significativos .",
     ["unchanged", " ground glass pattern"], ["loc bilateral"], ["C3544344"]),
    ("sub-S03044", "ses-E06790", "informe duplicado .", ["normal"], [], ["C0205307"]),
    ("sub-S03044", "ses-E07712", "control .  mejoria radiologica .", ["unchanged"], [], []),
    ("sub-S03045", "ses-E06139", "sin hallazgos radiologicos significativos .", ["normal"], [], ["C0205307"]),
    ("sub-S03045", "ses-E06910", "patron en vidrio deslustrado en bases .",
     ["", "ground glass pattern", " COVID 19"], ["loc basal bilateral"], ["", "C3544344", "C5203670"]),
    ("sub-S03047", "ses-E06214", "", None, [], None),
    ("sub-S03050", "ses-E06300", "elongacion aortica .  cardiomegalia .", ["aortic elongation", " cardiomegaly"],
     [], []),
    ("sub-S03050", "ses-E06301", "estudio suboptimo .  posible covid .",
     ["COVID 19 uncertain", " suboptimal study", " exclude", " consolidation"], [], ["C5203671", "C0521530"]),
)
TRUNCATED_ITEMS = ["aortic elongation", " cardiomegaly", "tracheostomy tube"]
TRUNCATED_FRAGMENT = "central venous ca"

# (participant, date, test, result)
TESTS = (
    ("sub-S03044", "17.03.2020", "PCR", "POSITIVO"),
    ("sub-S03044", "28.03.2020", "PCR", "NEGATIVO"),
    ("sub-S03045", "15.03.2020", "PCR", "POSITIVO"),
    ("sub-S03045", "02.04.2020", "IGG", "POSITIVO"),
    ("sub-S03047", "11.03.2020", "PCR", "INDETERMINADO"),
    ("sub-S03047", "13.03.2020", "ACT", "POSITIVO"),
    ("sub-S03050", "18.03.2020", "PCR", "NEGATIVO"),
    ("sub-S03050", "19.03.2020", "IGM", "POSITIVO"),
    ("sub-S03125", "20.03.2020", "IGM", "POSITIVO"),
)

SESSIONS = {
    "sub-S03044": (("ses-E06138", "20200318", "['Rx torax portatil AP.\\nInfiltrados bilaterales.']"),
                   ("ses-E06790", "20200325", "['Rx torax PA.\\nSin cambios.']")),
    "sub-S03045": (("ses-E06139", "20200316", "['Rx torax AP.\\nSin hallazgos.']"),
                   ("ses-E06910", "20200330", "['Rx torax PA y lateral.\\nVidrio deslustrado basal.']")),
    "sub-S03047": (("ses-E06214", "20200312", ""),),
    "sub-S03050": (("ses-E06300", "20200320", "['Rx torax AP.']"), ("ses-E06301", "", "['Rx torax AP.']")),
}


@dataclass
class SyntheticBimcv:
    root: Path  # what to pass as --bimcv
    layout: str
    archives: bool
    files: dict[str, bytes] = field(default_factory=dict)  # release-relative path -> bytes


def _sidecar(s: Series, uid: int) -> dict[str, Any]:
    def el(vr: str, *values: Any) -> dict[str, Any]:
        return {"vr": vr, "Value": list(values)}

    d: dict[str, Any] = {
        "00080008": el("CS", "ORIGINAL", "PRIMARY"),
        "00080016": el("UI", "1.2.840.10008.5.1.4.1.1.1.1"),
        "00080018": el("UI", f"1.2.840.113654.2.70.1.{uid}"),
        "00080020": el("DA", s.date),
        "00080030": el("TM", s.time),
        "00080060": el("CS", s.modality),
        "00080070": el("LO", '"GE Healthcare"'),
        "00080090": el("PN", {"Alphabetic": " "}),
        "0008103E": el("LO", s.series_description),
        "00100010": el("PN", {"Alphabetic": str(600000 + uid)}),
        "00100020": el("LO", str(uid)),
        "00100030": el("DA", "19530606"),
        "00100040": el("CS", s.sex),
        "00120062": el("CS", "YES"),
        "00120063": el("LO", "CTP Default:  based on DICOM PS3.15 AnnexE. Details in 0012,0064"),
        "00180015": el("CS", "CHEST"),
        "00181164": el("DS", 0.194556, 0.194556),
        "00200010": {"vr": "SH"},
        "00200011": el("IS", 2),
        "00200020": el("CS", "L", "F"),
        "00280004": el("CS", s.photometric),
        "00280010": el("US", HEIGHT),
        "00280011": el("US", WIDTH),
        "00280100": el("US", 16),
        "00280101": el("US", s.bits),
        "00280102": el("US", s.bits - 1),
        "00280103": el("US", 0),
        "00281050": el("DS", float(2 ** (s.bits - 1))),
        "00281051": el("DS", float(2**s.bits)),
        "00281052": el("DS", 0.0),
        "00281053": el("DS", 1.0),
        "20500020": el("CS", "INVERSE" if s.photometric == "MONOCHROME1" else "IDENTITY"),
    }
    if s.age is not None:
        d["00101010"] = el("AS", s.age)
    if s.view_position is not None:
        d["00185101"] = el("CS", s.view_position)
    if s.view_code is not None:
        d["00540220"] = el(
            "SQ",
            {
                "00080100": el("SH", s.view_code[0]),
                "00080102": el("SH", "SNM3"),
                "00080104": el("LO", s.view_code[1]),
            },
        )
    if s.pixel_spacing:
        d["00280030"] = el("DS", 0.143, 0.143)
    return dict(sorted(d.items()))


def _png(s: Series, rng: random.Random) -> bytes:
    if s.kind == "empty":
        return b""
    top = 2**s.bits - 1
    array = synthetic_array(rng, WIDTH, HEIGHT, max_value=top)
    if s.kind == "rgb":
        return encode(array * 255 / top, fmt="PNG", mode="RGB")
    if s.photometric == "MONOCHROME1":
        array = top - array  # stored values: air is bright, no windowing applied
    data = encode(array, fmt="PNG", mode="I;16")
    return data[: len(data) // 2] if s.kind == "truncated" else data


def _nifti(rng: random.Random) -> bytes:
    dims = (3, 8, 8, 4, 1, 1, 1, 1)
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", header, 76, 1.0, 0.7, 0.7, 2.5, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\0"
    voxels = struct.pack(f"<{8 * 8 * 4}h", *(rng.randrange(-1000, 1000) for _ in range(8 * 8 * 4)))
    return gzip.compress(bytes(header) + b"\0\0\0\0" + voxels, mtime=0)


def _list_cell(items: list[str] | None, sep: str) -> str:
    if items is None:
        return ""
    return "[" + sep.join(f"'{item}'" for item in items) + "]"


def _cui_cell(items: list[str] | None, sep: str) -> str:
    return "" if items is None else "[" + sep.join(items) + "]"


def _labels_table(iteration1: bool) -> str:
    sep, cui_sep = ("\t ", "\t") if iteration1 else (", ", ",")

    def quote(cell: str) -> str:  # iteration 1's cells hold tabs, so they are quoted
        return f'"{cell}"' if iteration1 and "\t" in cell else cell

    lines = ["\tPatientID\tReportID\tReport\tLabels\tLocalizations\tLabelsLocalizationsBySentence\tlabelCUIS"
             "\tLocalizationsCUIS"]
    for index, (pid, rid, report, labels, locs, cuis) in enumerate(LABEL_ROWS):
        labels_cell = _list_cell(labels, sep)
        if rid == "ses-E06300":  # cut mid-item, as two real cells are: ast.literal_eval fails on it
            full = _list_cell([*TRUNCATED_ITEMS, "central venous catheter"], sep)
            labels_cell = full[: full.index(TRUNCATED_FRAGMENT) + len(TRUNCATED_FRAGMENT)]
        by_sentence = None if labels is None else [*labels, *locs]
        cells = [str(index), pid, rid, report, quote(labels_cell), quote(_list_cell(locs if labels else None, sep)),
                 quote(_list_cell(by_sentence, sep)), quote(_cui_cell(cuis, cui_sep)),
                 quote(_cui_cell([] if cuis is not None else None, cui_sep))]
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _tests_table(iteration1: bool) -> str:
    if iteration1:
        lines = ["Subject\tfecha\tprueba\tresultado\tparticipant"]
        lines += [f"{int(p[5:])}\t{d}\t{t}\t{r}\t{p}" for p, d, t, r in TESTS]
    else:
        lines = ["label\tsubject\tdate\ttest\tresult\tparticipant\t"]
        ids = {p: n for n, p in enumerate(dict.fromkeys(p for p, *_ in TESTS), start=1)}
        lines += [f"{ids[p]}\t{ids[p]}\t{d}\t{t}\t{r}\t{p}\t" for p, d, t, r in TESTS]
    return "\n".join(lines) + "\n"


def _aim(image_uid: str, regions: list[tuple[str, list[tuple[float, float]]]]) -> bytes:
    ns = "gme://caCORE.caCORE/4.4/edu.northwestern.radiology.AIM"
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ImageAnnotationCollection xmlns="{ns}" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" aimVersion="AIMv4_0">\n<imageAnnotations>']
    for n, (label, points) in enumerate(regions, start=1):
        coords = "".join(
            f'<TwoDimensionSpatialCoordinate><coordinateIndex value="{i}"/><x value="{x}"/><y value="{y}"/>'
            "</TwoDimensionSpatialCoordinate>"
            for i, (x, y) in enumerate(points)
        )
        parts.append(
            f'<ImageAnnotation><uniqueIdentifier root="2.25.{n}000"/><typeCode code="RID{n}" '
            f'codeSystemName="RadLex"/><dateTime value="20200601120000"/><name value="{label}"/>'
            f'<markupEntityCollection><MarkupEntity xsi:type="TwoDimensionPolyline"><uniqueIdentifier '
            f'root="2.25.{n}001"/><imageReferenceUid root="{image_uid}"/><referencedFrameNumber value="1"/>'
            f"<twoDimensionSpatialCoordinateCollection>{coords}</twoDimensionSpatialCoordinateCollection>"
            "</MarkupEntity></markupEntityCollection></ImageAnnotation>"
        )
    parts.append("</imageAnnotations>\n</ImageAnnotationCollection>\n")
    return "".join(parts).encode()


def release_files(layout: str, seed: int = 0) -> dict[str, bytes]:
    """Every file of the synthetic release, by path relative to the download/extract folder."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    iteration1 = layout == "iter1"
    rng = random.Random(seed)
    meta = "bimcv_covid19_posi_head_iter1" if iteration1 else "covid19_posi"
    files: dict[str, bytes] = {}

    def subject_folder(sub: str) -> str:
        if not iteration1:
            return "covid19_posi"
        return f"bimcv_covid19_posi_subjects_{1 if sub in ('sub-S03044', 'sub-S03045') else 2}"

    image_paths = []
    for uid, s in enumerate(SERIES, start=100):
        sub, ses = s.stem.split("_")[:2]
        folder = f"{subject_folder(sub)}/{sub}/{ses}/mod-rx"
        files[f"{folder}/{s.stem}.png"] = _png(s, rng)
        image_paths.append(f"./{sub}/{ses}/mod-rx/{s.stem}.png")
        if s.sidecar == "ok":
            files[f"{folder}/{s.stem}.json"] = json.dumps(_sidecar(s, uid)).encode()
        elif s.sidecar == "broken":
            files[f"{folder}/{s.stem}.json"] = json.dumps(_sidecar(s, uid)).encode()[:200]
    ct_folder = f"{subject_folder('sub-S03047')}/sub-S03047/ses-E06214/mod-rx"
    files[f"{ct_folder}/{CT_STEM}.nii.gz"] = _nifti(rng)
    files[f"{ct_folder}/{CT_STEM}.json"] = json.dumps(
        {"00080060": {"vr": "CS", "Value": ["CT"]}, "00080020": {"vr": "DA", "Value": ["20200312"]}}
    ).encode()
    image_paths.append(f"./sub-S03047/ses-E06214/mod-rx/{CT_STEM}.nii.gz")

    files[f"{meta}/participants.tsv"] = PARTICIPANTS.encode()
    partitions = ["subject session filepath"]  # the irregular, space-separated header
    partitions += [f"{p.split('/')[1]}\t{p.split('/')[2]}\t{p}" for p in [*sorted(image_paths), f"./{MISSING_LISTED}"]]
    files[f"{meta}/derivatives/partitions.tsv"] = ("\n".join(partitions) + "\n").encode()
    labels_name = "labels_covid19_posi.tsv" if iteration1 else "labels_covid_posi.tsv"
    files[f"{meta}/derivatives/labels/{labels_name}"] = _labels_table(iteration1).encode()
    tests_name = "sil_reg_covid.tsv" if iteration1 else "sil_reg_covid_posi.tsv"
    files[f"{meta}/derivatives/EHR/{tests_name}"] = _tests_table(iteration1).encode()
    if iteration1:
        files[f"{meta}/derivatives/labels/tree_term_CUI_counts_image_covid_posi.csv"] = (
            "radiological finding [counts:9, 9]\\\\\n├── COVID 19 [CUI:C5203670, counts:2, 2]\\\\\n"
            "└── pneumonia [CUI:C0032285, counts:1, 1]\\\\\n"
        ).encode()
        roi = (f"{meta}/derivatives/roi/sub-S03044/derivatives\\roi\\sub-S03044\\ses-E06138\\mod-rx\\"
               "sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_mod-cr_roi.xml")
        files[roi] = _aim("1.2.840.113654.2.70.1.100", [
            ("ground glass pattern", [(8.0, 10.0), (24.0, 10.0), (26.0, 36.0), (10.0, 38.0)]),
            ("consolidation", [(40.0, 20.0), (54.0, 18.0), (52.0, 34.0)]),
        ])
        bad = (f"{meta}/derivatives/roi/sub-S03045/derivatives\\roi\\sub-S03045\\ses-E06139\\mod-rx\\"
               "sub-S03045_ses-E06139_run-1_bp-chest_vp-ap_mod-dx_roi.xml")
        files[bad] = _aim("1.2.840.113654.2.70.1.102", [("consolidation", [(1.0, 1.0), (9.0, 1.0), (5.0, 9.0)])])[:150]
    else:
        for sub, rows in SESSIONS.items():
            table = ["session_id\tstudy_date\tmedical_evaluation", *("\t".join(r) for r in rows)]
            files[f"covid19_posi/{sub}/{sub}_sessions.tsv"] = ("\n".join(table) + "\n").encode()
        files["covid19_posi/sub-S03044/ses-E06138/sub-S03044_ses-E06138_scans.tsv"] = (
            f"filename\tModality\nmod-rx/{SERIES[0].stem}.png\tCR\n"
        ).encode()
    return dict(sorted(files.items()))


def _archive_groups(files: dict[str, bytes], layout: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for path in files:
        top = path.split("/")[0]
        if layout == "iter1":
            name = f"{top}.tgz"
        elif path.endswith("_sessions.tsv"):
            name = "covid19_posi_sessions_tsv.tar.gz"
        elif path == "covid19_posi/participants.tsv":
            name = "covid19_posi_subjects.tar.gz"
        elif path.startswith("covid19_posi/derivatives/"):
            name = "covid19_posi_head.tar.gz"
        else:
            sub = path.split("/")[1]
            name = f"covid19_posi_subjects_part{'aa' if sub in ('sub-S03044', 'sub-S03045') else 'ab'}.tar.gz"
        groups.setdefault(name, []).append(path)
    return groups


def _tar_gz(files: dict[str, bytes], members: list[str]) -> tuple[bytes, str]:
    """A deterministic tar.gz with folder members, and its `tar -tvf` listing."""
    buffer, listing = io.BytesIO(), []
    folders = sorted({"/".join(m.split("/")[:i]) for m in members for i in range(1, len(m.split("/")))})
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted([*folders, *members]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = MTIME, "root", "root"
            if name in files:
                info.size, info.mode = len(files[name]), 0o644
                tar.addfile(info, io.BytesIO(files[name]))
                listing.append(f"-rw-r--r-- root/root {info.size:>9} 2020-10-08 00:00 {name}")
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                listing.append(f"drwxr-xr-x root/root {0:>9} 2020-10-08 00:00 {name}/")
    return gzip.compress(buffer.getvalue(), mtime=0), "\n".join(listing) + "\n"


def write_archives(folder: Path, files: dict[str, bytes], layout: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, members in sorted(_archive_groups(files, layout).items()):
        data, listing = _tar_gz(files, members)
        (folder / name).write_bytes(data)
        stem = name.removesuffix(".tgz") if name.endswith(".tgz") else name
        (folder / f"{stem}.tar-tvf.txt").write_text(listing, encoding="utf-8")
        written += [name, f"{stem}.tar-tvf.txt"]
    (folder / "00_extract_data.sh").write_text('for f in *.tar.gz; do tar xzf "$f"; done\n', encoding="utf-8")
    sums = {n: hashlib.sha1((folder / n).read_bytes(), usedforsecurity=False).hexdigest() for n in sorted(written)}
    (folder / "sha1sums.txt").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()), encoding="utf-8")
    (folder / "sha1sums-b.txt").write_text("".join(f"{h} *{n}\n" for n, h in sums.items()), encoding="utf-8")


def write_bimcv(folder: Path, seed: int = 0, *, layout: str = "iter12", archives: bool = False) -> SyntheticBimcv:
    """Write the synthetic release under `folder` as a tree (default) or as its archives."""
    files = release_files(layout, seed)
    if archives:
        write_archives(folder, files, layout)
    else:
        for path, data in files.items():
            target = folder.joinpath(*path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return SyntheticBimcv(root=folder, layout=layout, archives=archives, files=files)


def array_of(png: bytes) -> np.ndarray:
    """The stored pixel values of a synthetic PNG (for tests)."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        return np.array(img)
