"""Benchmarks of the build, measured in one run on the same inputs (run on demand, not in CI).

    python benchmarks/generate.py /tmp/bench/g10k --records 10000 --side 512
    python benchmarks/generate.py /tmp/bench/m100k --records 100000 --metadata-only
    python benchmarks/run.py /tmp/bench/g10k --metadata-only-sources /tmp/bench/m100k --work /tmp/bench/work

Prints one line per measurement and a Markdown table (paste it into benchmarks/RESULTS.md). Every
build runs in its own process (`covid-cxr build`), so its peak RSS is its own (`wait4`). Inputs are read
from the page cache in every measurement alike (the raw read runs first and warms it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def build_cmd(sources: Path, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "covid_cxr_unified.harmonize", "build", "--ieee8023", str(sources / "ieee8023")]
    cmd += [
        "--v7",
        str(sources / "v7_darwin" / "covid-only-coco.zip"),
        "--images",
        str(sources / "ieee8023" / "images"),
    ]
    cmd += ["--bimcv", str(sources / "bimcv"), "--out", str(out), "--no-progress", "--no-resume"]
    return [*cmd, *extra]


def records_of(build: Path) -> int:
    report = json.loads((build / "build_report.json").read_text(encoding="utf-8"))
    return sum(source["records"] for source in report["sources"].values())


def image_files(sources: Path) -> list[Path]:
    return sorted((sources / "ieee8023" / "images").iterdir()) + sorted((sources / "bimcv").rglob("*.png"))


def raw_read(files: list[Path]) -> tuple[float, int]:
    """Every image file read once: the physical limit of any build that embeds the bytes."""
    started = time.perf_counter()
    total = sum(len(path.read_bytes()) for path in files)
    return time.perf_counter() - started, total


def raw_read_archives(folder: Path) -> tuple[float, int]:
    """Every member of every part read once (one gunzip each): the limit of a build from the archives."""
    started = time.perf_counter()
    total = 0
    for archive in sorted(folder.glob("*.tar.gz")):
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                total += len(handle.read()) if handle is not None else 0
    return time.perf_counter() - started, total


def archive_builds(archives: Path, work: Path) -> dict[str, Any]:
    """BIMCV from its .tar.gz parts: the read limit, and builds on 1 and 2 processes with their steps
    (discovery checks the sha1 of every part and gunzips it; the units gunzip it again)."""
    seconds, total = raw_read_archives(archives)
    result: dict[str, Any] = {"parts": len(list(archives.glob("*.tar.gz"))), "raw_read_s": seconds, "bytes": total}
    for label, extra in (("1proc", ()), ("2proc", ("--num-proc", "2"))):
        out, timings = work / f"archives_{label}", work / f"archives_{label}.json"
        cmd = [sys.executable, "-m", "covid_cxr_unified.harmonize", "build", "--bimcv", str(archives)]
        cmd += ["--out", str(out), "--no-progress", "--no-resume", "--timings", str(timings), *extra]
        seconds, rss = _run(cmd)
        steps = json.loads(timings.read_text())["timings_s"]
        result[label] = {"s": seconds, "rss_mb": rss, "records": records_of(out), "steps": steps}
        print("archives", label, f"{seconds:.1f} s", f"{rss:.0f} MB", flush=True)
    return result


def decode_once(files: list[Path]) -> float:
    """Every image read and decoded once (what grouping needs: size, pixel hash, dHash)."""
    from PIL import Image

    started = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            img.load()
    return time.perf_counter() - started


IMAGEFOLDER = """
import sys, datasets
files = open(sys.argv[1]).read().split("\\n")
ds = datasets.load_dataset("imagefolder", data_files={"train": files}, split="train", cache_dir=sys.argv[2])
ds.save_to_disk(sys.argv[3])
"""

LOAD = """
import sys, time, datasets
started = time.perf_counter()
ds = datasets.load_dataset(sys.argv[1], "all")
print(time.perf_counter() - started, sum(d.num_rows for d in ds.values()))
"""


def imagefolder(files: list[Path], work: Path) -> float:
    listing = work / "imagefolder-files.txt"
    listing.write_text("\n".join(str(p) for p in files), encoding="utf-8")
    shutil.rmtree(work / "imagefolder-cache", ignore_errors=True)
    shutil.rmtree(work / "imagefolder-out", ignore_errors=True)
    cmd = [
        sys.executable,
        "-c",
        IMAGEFOLDER,
        str(listing),
        str(work / "imagefolder-cache"),
        str(work / "imagefolder-out"),
    ]
    return _run(cmd)[0]


def load_times(build: Path, work: Path) -> tuple[float, float]:
    env = {**ENV, "HF_DATASETS_CACHE": str(work / "load-cache")}
    shutil.rmtree(work / "load-cache", ignore_errors=True)
    times = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", LOAD, str(build)], env=env, capture_output=True, text=True, check=True
        )
        times.append(float(out.stdout.split()[0]))
    return times[0], times[1]


def guard_and_license(work: Path, n: int) -> dict[str, float]:
    """verify_splits on a build folder of n rows and filter_by_license on a Dataset of n rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    from covid_cxr_unified.harmonize.features import FEATURES
    from covid_cxr_unified.harmonize.guards import verify_splits
    from covid_cxr_unified.harmonize.license_policy import filter_by_license
    from covid_cxr_unified.schema.licenses import LICENSES

    folder = work / f"guard-{n}"
    rng = np.random.default_rng(0)
    schema = FEATURES.arrow_schema
    patients = np.arange(n) // 3
    if not (folder / "data").is_dir():
        words = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64)
        sha = [f"{a:016x}{b:016x}{c:016x}{d:016x}" for a, b, c, d in words]
        table = pa.table(
            {
                "record_id": pa.array([f"src:{i:08d}" for i in range(n)]),
                "source": pa.array(np.array(["bimcv", "ieee8023", "v7_darwin"])[np.arange(n) % 3]),
                "patient_id": pa.array([f"src:p{p}" for p in patients]),
                "links": pa.array([[] for _ in range(n)], type=schema.field("links").type),
                "image_sha256": pa.array(sha),
                "image_pixel_sha256": pa.array([s[::-1] for s in sha]),
                "image_phash": pa.array([f"{b:016x}{a:016x}{d:016x}{c:016x}" for a, b, c, d in words]),
                "covid19": pa.array(rng.integers(0, 3, size=n), type=schema.field("covid19").type),
                "age_years": pa.array(rng.uniform(1, 90, size=n)),
            }
        )
        splits = rng.choice(np.array(["train", "validation", "test"]), size=patients.max() + 1, p=[0.8, 0.1, 0.1])[
            patients
        ]
        (folder / "data" / "all").mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation", "test"):
            pq.write_table(
                table.filter(pa.array(splits == split)), folder / "data" / "all" / f"{split}-00000-of-00001.parquet"
            )
    result = {}
    for label, bits in (("verify_splits (incl. near-duplicate search)", 14), ("verify_splits (exact keys only)", None)):
        started = time.perf_counter()
        report = verify_splits(folder, bits)
        result[label] = time.perf_counter() - started
        assert report.records == n
    mask = {
        "label": "lung",
        "finding": None,
        "size": [10, 10],
        "counts": "12",
        "area": 1,
        "bbox": [0.0, 0.0, 1.0, 1.0],
        "annotation_source": "v7_darwin",
        "annotation_id": "1",
        "annotation_license_id": "CC-BY-4.0",
        "annotation_attribution": "V7",
    }
    ids = np.array(list(LICENSES), dtype=object)[rng.integers(0, len(LICENSES), n)]
    masks = pa.array([[mask, mask] if i % 3 == 0 else [] for i in range(n)], type=schema.field("masks").type)
    dataset = Dataset(pa.table({"license_id": pa.array(ids), "masks": masks}))
    started = time.perf_counter()
    filter_by_license(dataset, "commercial")
    result["filter_by_license"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", type=Path, help="a benchmarks/generate.py folder with images")
    parser.add_argument(
        "--metadata-only-sources", type=Path, nargs="*", default=[], help="generate.py --metadata-only folders"
    )
    parser.add_argument("--work", type=Path, default=Path("bench-work"))
    parser.add_argument("--guard-records", type=int, default=1_000_000)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "python": sys.version.split()[0],
    }
    files = image_files(args.sources)
    seconds, total = raw_read(files)  # also warms the page cache for everything after
    seconds, total = raw_read(files)
    results["images"], results["image_gb"] = len(files), total / 1e9
    results["raw_read_s"] = seconds
    results["decode_once_s"] = decode_once(files)
    for label, extra in (("build_1proc", ()), ("build_2proc", ("--num-proc", "2"))):
        seconds, rss = _run(build_cmd(args.sources, work / label, *extra, "--timings", str(work / f"{label}.json")))
        results[f"{label}_s"], results[f"{label}_rss_mb"] = seconds, rss
        results[f"{label}_steps"] = json.loads((work / f"{label}.json").read_text())["timings_s"]
        results["records"] = records_of(work / label)
        print(label, results["records"], f"{seconds:.1f} s", f"{rss:.0f} MB", flush=True)
    if (args.sources / "bimcv-archives").is_dir():  # generate.py --archives
        results["archives"] = archive_builds(args.sources / "bimcv-archives", work)
    results["imagefolder_s"] = imagefolder(files, work)
    print("imagefolder", results["imagefolder_s"], flush=True)
    results["load_first_s"], results["load_cached_s"] = load_times(work / "build_1proc", work)
    for folder in [args.sources, *args.metadata_only_sources]:
        seconds, rss = _run(build_cmd(folder, work / f"meta-{folder.name}", "--metadata-only"))
        n = records_of(work / f"meta-{folder.name}")
        results.setdefault("metadata_only", []).append({"records": n, "s": seconds, "rss_mb": rss})
        print("metadata-only", n, f"{seconds:.1f} s", f"{rss:.0f} MB", flush=True)
    results["guard"] = guard_and_license(work, args.guard_records)
    (work / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
