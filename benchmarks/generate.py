"""Large synthetic sources for the benchmarks: ieee8023, V7 (COCO zip) and BIMCV (tree and/or archives).

    python benchmarks/generate.py OUT --records 10000 --side 1024 [--archives [--images-per-part N]] [--metadata-only]

`--records` counts image records: 30 % ieee8023 (8-bit PNG and JPEG), 70 % BIMCV (16-bit PNG holding 12
or 14 bits, as the real CR/DX files), and V7 annotates a third of the ieee8023 images (lung polygons).
`--side` is the longest image side in pixels (real: 2000-3000 px; BIMCV PNGs are ~5-10 MB each).
Every picture is distinct at the scale of the perceptual hash (no false near-duplicate groups) and
carries noise, so PNG sizes are realistic for their pixel count. `--metadata-only` writes the tables
and annotation files but no image bytes (for metadata-only builds of 100k+ records).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import random
import tarfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covid_cxr_unified.harmonize.synthetic.bimcv import Series, _sidecar
from covid_cxr_unified.harmonize.synthetic.ieee8023 import NEWEST_HEADER
from covid_cxr_unified.harmonize.synthetic.images import synthetic_array

IMAGES_PER_BIMCV_PART = 1000
FINDINGS = ("Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial", "No Finding", "Pneumonia/Viral/SARS")
LICENSES = ("CC BY 4.0", "CC BY-NC-SA 4.0", "Apache 2.0", "CC BY-NC-ND 4.0")


def picture(seed: int, width: int, height: int, top: int) -> np.ndarray:
    """A chest-like picture in [0, top]: anatomy drawn at 1/8 scale, upsampled, plus a per-record
    coarse pattern (distinct dHash) and full-resolution noise (realistic compressed size)."""
    rng = random.Random(seed)
    small = synthetic_array(rng, max(width // 8, 16), max(height // 8, 16), max_value=1)
    pattern = np.random.default_rng(seed).random((4, 4)) * 0.35
    small = (
        small
        + np.kron(pattern, np.ones((math.ceil(small.shape[0] / 4), math.ceil(small.shape[1] / 4))))[
            : small.shape[0], : small.shape[1]
        ]
    )
    big = np.asarray(
        Image.fromarray(small.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )
    noise = np.random.default_rng(seed + 1).normal(0.0, 0.002, size=big.shape)
    scaled = (big - big.min()) / (np.ptp(big) or 1.0) * 0.9 + 0.05 + noise
    clipped: np.ndarray = np.clip(scaled * top, 0, top)
    return clipped


def _encode(array: np.ndarray, fmt: str, bits16: bool) -> bytes:
    img = Image.fromarray(array.astype(np.uint16)) if bits16 else Image.fromarray(array.astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _size(seed: int, side: int) -> tuple[int, int]:
    rng = random.Random(seed)
    return side, int(side * rng.uniform(0.8, 1.0))  # (width, height): portrait-ish to square


def _ieee_image(task: tuple[Path, int, int, str]) -> tuple[int, int]:
    path, seed, side, fmt = task
    width, height = _size(seed, side)
    path.write_bytes(_encode(picture(seed, width, height, 255), fmt, bits16=False))
    return width, height


def _bimcv_image(task: tuple[Path, int, int, int]) -> None:
    path, seed, side, bits = task
    width, height = _size(seed, side)
    path.write_bytes(_encode(picture(seed, width, height, 2**bits - 1), "PNG", bits16=True))


def write_ieee8023(root: Path, count: int, side: int, images: bool, pool: ProcessPoolExecutor) -> list[dict[str, Any]]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    tasks = []
    for i in range(count):
        fmt = "PNG" if i % 2 else "JPEG"
        filename = f"bench-{i:07d}.{'png' if fmt == 'PNG' else 'jpg'}"
        row: dict[str, Any] = dict.fromkeys(NEWEST_HEADER, "")
        row.update(
            patientid=str(10_000 + i // 2),
            offset=str(i % 2 * 3),
            sex="MF"[i // 2 % 2],
            age=str(20 + i // 2 % 70),
            finding=FINDINGS[i // 2 % len(FINDINGS)],
            view=("PA", "AP", "AP Supine")[i % 3],
            modality="X-ray",
            date="2020",
            folder="images",
            filename=filename,
            url=f"https://example.org/case/{i // 2}",
            license=LICENSES[i % len(LICENSES)],
        )
        rows.append(row)
        tasks.append((root / "images" / filename, 1_000_000 + i, side, fmt))
    if images:
        sizes = list(pool.map(_ieee_image, tasks, chunksize=32))
    else:
        sizes = [_size(1_000_000 + i, side) for i in range(count)]
    for row, (width, height) in zip(rows, sizes, strict=True):
        row["_size"] = (width, height)
    with (root / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(NEWEST_HEADER)
        writer.writerows([row[c] for c in NEWEST_HEADER] for row in rows)
    return rows


def write_v7(root: Path, rows: list[dict[str, Any]]) -> Path:
    """A COCO export (zip) annotating every third ieee8023 image with two lung polygons."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, row in enumerate(rows[::3], start=1):
        width, height = row["_size"]
        tags = [f"PatientID:{row['patientid']}", "X-ray", f"View/{row['view'].replace(' ', '_')}", f"Sex/{row['sex']}"]
        tags += ["COVID-19", "Viral Pneumonia"] if "COVID" in row["finding"] else []
        images.append({"id": number, "file_name": row["filename"], "width": width, "height": height, "tags": tags})
        for side in (-1, 1):
            cx, cy, rx, ry = width * (0.5 + side * 0.2), height * 0.5, width * 0.16, height * 0.34
            ring = [
                v for k in range(16) for v in (cx + rx * math.cos(k * math.pi / 8), cy + ry * math.sin(k * math.pi / 8))
            ]
            xs, ys = ring[0::2], ring[1::2]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": 0,
                    "segmentation": [ring],
                    "area": math.pi * rx * ry,
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "iscrowd": 0,
                    "extra": {},
                }
            )
    tag_names = sorted({t for image in images for t in image["tags"]})
    tag_ids = {name: i for i, name in enumerate(tag_names)}
    coco = {
        "info": {"description": "Exported from Darwin", "year": 2020, "date_created": "2020/06/17"},
        "licenses": [{"url": "n/a", "id": 0, "name": "placeholder license"}],
        "images": [
            {
                "license": 0,
                "file_name": i["file_name"],
                "height": i["height"],
                "width": i["width"],
                "id": i["id"],
                "tag_ids": [tag_ids[t] for t in i["tags"]],
            }
            for i in images
        ],
        "annotations": annotations,
        "categories": [
            {"id": 0, "name": "Lung", "supercategory": "root"},
            {"id": 1, "name": "Ignore", "supercategory": "root"},
        ],
        "tag_categories": [{"id": i, "name": name} for name, i in tag_ids.items()],
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "covid-only-coco.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("output.json", json.dumps(coco))
    return path


def write_bimcv(root: Path, count: int, side: int, images: bool, pool: ProcessPoolExecutor) -> list[str]:
    """An iterations 1+2 release tree (`covid19_posi/`); returns the image paths (release-relative)."""
    meta = root / "covid19_posi"
    participants = ["participant\tmodality_dicom\tbody_parts\tage\tgender"]
    labels = [
        "\tPatientID\tReportID\tReport\tLabels\tLocalizations\tLabelsLocalizationsBySentence\tlabelCUIS"
        "\tLocalizationsCUIS"
    ]
    tests = ["label\tsubject\tdate\ttest\tresult\tparticipant\t"]
    paths, tasks = [], []
    for i in range(count):
        subject, session = f"sub-S{100_000 + i // 3}", f"ses-E{200_000 + i // 2}"
        bits = 12 if i % 2 else 14
        modality = "CR" if i % 2 else "DX"
        stem = f"{subject}_{session}_run-{i % 2 + 1}_bp-chest_vp-{('pa', 'ap')[i % 2]}_{modality.lower()}"
        folder = meta / subject / session / "mod-rx"
        folder.mkdir(parents=True, exist_ok=True)
        day = f"202003{10 + i % 19:02d}"
        series = Series(stem, modality, day, bits, view_position=("PA", "AP")[i % 2], sex="MF"[i % 2], age="060Y")
        (folder / f"{stem}.json").write_text(json.dumps(_sidecar(series, 500_000 + i)), encoding="utf-8")
        paths.append(f"covid19_posi/{subject}/{session}/mod-rx/{stem}.png")
        tasks.append((folder / f"{stem}.png", 2_000_000 + i, side, bits))
        if i % 3 == 0:
            participants.append(f"{subject}\t['{modality}']\t[['chest']]\t[{40 + i % 50}]\t{'MF'[i % 2]}")
            tests.append(f"{i}\t{i}\t{10 + i % 18:02d}.03.2020\tPCR\tPOSITIVO\t{subject}\t")
        if i % 2 == 0:
            labels.append(
                f"{i}\t{subject}\t{session}\tneumonia covid .\t['COVID 19', 'pneumonia']\t['loc bilateral']"
                "\t['COVID 19', 'pneumonia', 'loc bilateral']\t[C5203670,C0032285]\t[]"
            )
    if images:
        list(pool.map(_bimcv_image, tasks, chunksize=32))
    else:  # the adapter finds images by their files: empty placeholders, never read by a metadata-only build
        for path, *_ in tasks:
            path.touch()
    (meta / "derivatives" / "labels").mkdir(parents=True, exist_ok=True)
    (meta / "derivatives" / "EHR").mkdir(parents=True, exist_ok=True)
    (meta / "participants.tsv").write_text("\n".join(participants) + "\n", encoding="utf-8")
    (meta / "derivatives" / "labels" / "labels_covid_posi.tsv").write_text("\n".join(labels) + "\n", encoding="utf-8")
    (meta / "derivatives" / "EHR" / "sil_reg_covid_posi.tsv").write_text("\n".join(tests) + "\n", encoding="utf-8")
    return paths


def write_bimcv_archives(tree: Path, out: Path, images_per_part: int = IMAGES_PER_BIMCV_PART) -> None:
    """The tree as the release ships it: a head part (tables) and subject parts, plus sha1sums.txt."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    head = [f for f in files if "/derivatives/" in f or f.endswith("participants.tsv")]
    subjects = [f for f in files if f not in head]
    parts = {"covid19_posi_head.tar.gz": head}
    per_part = images_per_part * 2  # png + json
    for n, start in enumerate(range(0, len(subjects), per_part)):
        parts[f"covid19_posi_subjects_part{n:03d}.tar.gz"] = subjects[start : start + per_part]
    sums = []
    for name, members in parts.items():
        with tarfile.open(out / name, "w:gz", compresslevel=1) as tar:
            for member in members:
                tar.add(tree / member, arcname=member, recursive=False)
        sums.append(f"{hashlib.sha1((out / name).read_bytes(), usedforsecurity=False).hexdigest()}  {name}\n")
    (out / "sha1sums.txt").write_text("".join(sums), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=1000, help="image records (30%% ieee8023, 70%% BIMCV)")
    parser.add_argument("--side", type=int, default=1024, help="longest image side, pixels")
    parser.add_argument("--archives", action="store_true", help="also write BIMCV as .tar.gz parts + sha1sums")
    parser.add_argument("--images-per-part", type=int, default=IMAGES_PER_BIMCV_PART, help="BIMCV images per part")
    parser.add_argument("--metadata-only", action="store_true", help="tables and annotations only, no image files")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    ieee_count = args.records * 3 // 10
    with ProcessPoolExecutor(args.workers) as pool:
        rows = write_ieee8023(args.out / "ieee8023", ieee_count, args.side, not args.metadata_only, pool)
        write_v7(args.out / "v7_darwin", rows)
        write_bimcv(args.out / "bimcv", args.records - ieee_count, args.side, not args.metadata_only, pool)
    if args.archives:
        write_bimcv_archives(args.out / "bimcv", args.out / "bimcv-archives", args.images_per_part)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(
        f"wrote {args.records} image records ({ieee_count} ieee8023 + {len(rows[::3])} V7 annotations + "
        f"{args.records - ieee_count} BIMCV), {size / 1e9:.2f} GB, in {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
