"""A synthetic ieee8023 covid-chestxray-dataset folder: `metadata.csv` + `images/`.

Reproduces the real file's quirks: the trailing comma in the header (an unnamed column), patient ids
with letter suffixes (`324b`), `todo`/`Unknown` findings, CT slices and `volumes/`, a finding with a
trailing space, all 12 license spellings (incl. blank and a single space), `RT_PCR_positive` Y/Unclear
/blank, `AP Erect`, an upper-case `.JPG`, JPEG L/RGB and PNG RGB/RGBA images, a patient with two sexes,
an implausible temperature, notes spilling into the unnamed column, and a row whose image is missing.
Three header generations can be written.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from covid_cxr_unified.harmonize.synthetic.images import encode, synthetic_array

NEWEST_HEADER = [
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "RT_PCR_positive",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
    "",
]
MID_HEADER = [c for c in NEWEST_HEADER if c != "RT_PCR_positive"]
EARLY_HEADER = [
    "Patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "survival",
    "view",
    "date",
    "location",
    "filename",
    "doi",
    " url",
    "license",
    "notes",
]
HEADERS = {"newest": NEWEST_HEADER, "mid": MID_HEADER, "early": EARLY_HEADER}
MID_FINDINGS = {"Pneumonia/Viral/COVID-19": "COVID-19", "Pneumonia/Viral/SARS": "SARS"}

LICENSE_SPELLINGS = (
    "CC BY-NC-SA",
    "",
    "CC BY-NC-SA 4.0",
    "CC BY 3.0",
    "CC BY-NC-ND",
    "CC BY-NC-ND 4.0",
    "Apache 2.0",
    "listed as authorized for everyone",
    "CC BY 4.0",
    "CC BY",
    "CC BY-SA",
    " ",
)
FINDINGS = (
    "Pneumonia/Viral/COVID-19",
    "Pneumonia/Viral/COVID-19",
    "Pneumonia/Viral/COVID-19",
    "Pneumonia",
    "Pneumonia/Bacterial/Streptococcus",
    "No Finding",
    "Tuberculosis",
    "Pneumonia/Viral/SARS",
    "Pneumonia/Fungal/Pneumocystis",
)
IMAGE_KINDS = (("jpg", "JPEG", "L"), ("jpeg", "JPEG", "RGB"), ("png", "PNG", "RGB"), ("png", "PNG", "RGBA"))


@dataclass(frozen=True)
class Ieee8023Fixture:
    root: Path
    rows: int
    images: int
    expected_records: int
    expected_excluded: dict[str, int]
    expected_quarantined: dict[str, int]


def write_ieee8023(root: Path, *, seed: int = 0, patients: int = 40, generation: str = "newest") -> Ieee8023Fixture:
    """Write the folder and return what a correct adapter must find in it."""
    rng = random.Random(seed)
    header = HEADERS[generation]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    images = 0
    for index in range(patients):
        pid = f"{100 + index}" + ("b" if index % 7 == 3 else "")
        sex = rng.choice("MF")
        age = str(rng.randint(18, 90)) if index % 5 else ""
        finding = FINDINGS[index % len(FINDINGS)]
        for study in range(1 + index % 3):
            ext, fmt, mode = IMAGE_KINDS[(index + study) % len(IMAGE_KINDS)]
            filename = f"syn-{pid}-{study}.{ext}"
            row = _row(rng, pid, sex, age, finding, study, filename, index)
            rows.append(row)
            array = synthetic_array(rng, 48 + 8 * study, 56)
            (root / "images" / filename).write_bytes(encode(array, fmt=fmt, mode=mode))
            images += 1
    quirks = _quirk_rows(rng)
    rows += quirks
    for row in quirks:
        if row["folder"] == "images" and row["filename"] != "syn-missing.png":
            ext = row["filename"].rsplit(".", 1)[1].lower()
            fmt = "PNG" if ext == "png" else "JPEG"
            image = encode(synthetic_array(rng, 40, 40), fmt=fmt, mode="L")
            (root / "images" / row["filename"]).write_bytes(image)
            images += 1
    _write_csv(root / "metadata.csv", header, rows, generation)
    xray_rows = len(rows) - 4  # 2 CT slices, 1 volume and the todo/Unknown rows are excluded
    excluded = {
        "CT slice: not a chest X-ray": 1,
        "CT volume: not a chest X-ray": 1,
        "finding 'todo': not part of the dataset (ieee8023 #149)": 1,
        "finding 'Unknown': not part of the dataset (ieee8023 #149)": 1,
    }
    if generation == "early":  # no modality/folder columns: the volume row reads as a CT view
        excluded = {**excluded, "CT slice: not a chest X-ray": 2}
        excluded.pop("CT volume: not a chest X-ray")
    return Ieee8023Fixture(
        root=root,
        rows=len(rows),
        images=images,
        expected_records=xray_rows - 1,
        expected_excluded=excluded,
        expected_quarantined={"image missing": 1},
    )


def _row(
    rng: random.Random, pid: str, sex: str, age: str, finding: str, study: int, filename: str, index: int
) -> dict[str, str]:
    yn = ("Y", "N", "")
    return {
        "patientid": pid,
        "offset": str(study * rng.randint(1, 9)) if index % 4 else "",
        "sex": sex,
        "age": age,
        "finding": finding,
        "RT_PCR_positive": ("Y", "Unclear", "")[index % 3] if "COVID" in finding else "",
        "survival": rng.choice(yn),
        "intubated": rng.choice(yn),
        "intubation_present": rng.choice(yn),
        "went_icu": rng.choice(yn),
        "in_icu": rng.choice(yn),
        "needed_supplemental_O2": rng.choice(yn),
        "extubated": rng.choice(yn),
        "temperature": f"{rng.uniform(36, 40):.1f}" if index % 6 == 0 else "",
        "pO2_saturation": str(rng.randint(80, 99)) if index % 5 == 0 else "",
        "leukocyte_count": "",
        "neutrophil_count": "",
        "lymphocyte_count": "",
        "view": ("PA", "AP", "AP Supine", "L")[(index + study) % 4],
        "modality": "X-ray",
        "date": ("2020", "March 3, 2020", "03/06/20", "")[index % 4],
        "location": "Synthetic Hospital, Nowhere ",
        "folder": "images",
        "filename": filename,
        "doi": f"10.0000/synthetic.{index}",
        "url": f"https://example.org/case/{index}",
        "license": LICENSE_SPELLINGS[index % len(LICENSE_SPELLINGS)],
        "clinical_notes": f'Synthetic case {index}, day {study}, with a comma, and "quotes".',
        "other_notes": "",
        "": "",
    }


def _quirk_rows(rng: random.Random) -> list[dict[str, str]]:
    base = _row(rng, "900", "M", "50", "Pneumonia/Viral/COVID-19", 0, "", 0)
    return [
        {**base, "patientid": "901", "view": "Axial", "modality": "CT", "filename": "syn-ct.png"},
        {
            **base,
            "patientid": "902",
            "view": "Axial",
            "modality": "CT",
            "folder": "volumes",
            "filename": "syn-volume.nii.gz",
        },
        {**base, "patientid": "903", "finding": "todo", "filename": "syn-todo.jpg"},
        {**base, "patientid": "904", "finding": "Unknown", "filename": "syn-unknown.jpg"},
        {**base, "patientid": "905", "filename": "syn-missing.png"},
        {
            **base,
            "patientid": "906",
            "view": "AP Erect",
            "finding": "Pneumonia/Viral/Herpes ",
            "filename": "syn-herpes.JPG",
        },
        # one id, two people (sexes differ), as with the real patient 380
        {**base, "patientid": "907", "sex": "F", "filename": "syn-907-a.png"},
        {
            **base,
            "patientid": "907",
            "sex": "M",
            "filename": "syn-907-b.png",
            "temperature": "95",
            "clinical_notes": "Unquoted, commas",
            "other_notes": " shifted the note",
            "": " into the last column",
        },
    ]


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]], generation: str) -> None:
    early_names = {"Patientid": "patientid", " url": "url", "notes": "clinical_notes"}
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            if generation != "newest":
                row = {**row, "finding": MID_FINDINGS.get(row["finding"], row["finding"])}
            writer.writerow([row[early_names.get(column, column)] for column in header])
