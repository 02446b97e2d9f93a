"""The `covid-cxr` command: a thin layer over the library. Typed errors become one line + exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from covid_cxr_unified.harmonize.errors import HarmonizeError

app = typer.Typer(
    name="covid-cxr",
    help="Harmonize public COVID-19 chest X-ray datasets into one Hugging Face `datasets` build.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

PathArg = Annotated[Path, typer.Argument(help="folder or file of the source, as its publisher ships it")]
OutOpt = Annotated[Path, typer.Option("--out", help="output folder of the build")]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="hide progress bars")]
# Input limits (defaults in covid_cxr_unified.adapters.limits); an item over a limit is quarantined.
MaxPixels = Annotated[
    int | None, typer.Option("--max-image-pixels", min=1, help="largest image, in pixels (default 100000000)")
]
MaxJson = Annotated[
    int | None, typer.Option("--max-json-bytes", min=1, help="largest JSON file, in bytes (default 64 MiB)")
]
MaxMembers = Annotated[
    int | None, typer.Option("--max-archive-members", min=1, help="most members of one archive (default 1000000)")
]


def _limits(pixels: int | None, json_bytes: int | None, members: int | None) -> dict[str, int]:
    """The limits given on the command line, as adapter keyword arguments."""
    given = {
        "max_image_pixels": pixels,
        "max_json_bytes": json_bytes,
        "max_archive_members": members,
    }
    return {name: value for name, value in given.items() if value is not None}


def _fail(exc: HarmonizeError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


@app.command()
def build(
    ieee8023: Annotated[
        Path | None, typer.Option("--ieee8023", help="ieee8023 dataset folder or its metadata.csv")
    ] = None,
    v7: Annotated[
        Path | None, typer.Option("--v7", help="V7 Darwin COCO export (json or zip) or Darwin JSON folder/zip")
    ] = None,
    bimcv: Annotated[
        Path | None, typer.Option("--bimcv", help="BIMCV COVID-19+ release folder or folder of .tar.gz parts")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="the ieee8023 images/ folder (also V7's images), if not beside metadata.csv"),
    ] = None,
    out: Annotated[
        str,
        typer.Option(
            "--out", help="output folder of the build, or an fsspec URL (e.g. s3://bucket/covid-cxr, needs s3fs)"
        ),
    ] = "covid_cxr_unified",
    metadata_only: Annotated[bool, typer.Option("--metadata-only", help="records without image bytes")] = False,
    split_ratios: Annotated[str, typer.Option("--split-ratios", help="train,validation,test")] = "0.8,0.1,0.1",
    license_policy: Annotated[
        str,
        typer.Option(
            "--license-policy", help="keep records whose licenses permit: any, research, redistributable, commercial"
        ),
    ] = "any",
    id_map: Annotated[
        Path | None, typer.Option("--id-map", help="CSV of patient_id_a,patient_id_b pairs that are one person")
    ] = None,
    no_progress: NoProgress = False,
    max_image_pixels: MaxPixels = None,
    max_json_bytes: MaxJson = None,
    max_archive_members: MaxMembers = None,
    num_proc: Annotated[
        int, typer.Option("--num-proc", min=1, help="processes for units, BIMCV archive scans, shards (same output)")
    ] = 1,
    engine: Annotated[
        str, typer.Option("--engine", help="local (this machine, --num-proc processes) or dask")
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (default: a LocalCluster)"),
    ] = None,
    no_resume: Annotated[
        bool, typer.Option("--no-resume", help="redo every unit, even those an interrupted build finished")
    ] = False,
    timings: Annotated[
        Path | None, typer.Option("--timings", help="write seconds per step as JSON here (not into the build)")
    ] = None,
    staging: Annotated[
        Path | None,
        typer.Option(
            "--staging",
            help="with a URL --out: local folder where the build is made (and resumed) before the upload "
            "(default: one per URL in the user cache); with --scheduler, a path every worker sees",
        ),
    ] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option("--storage-option", help="with a URL --out: KEY=VALUE for the fsspec filesystem (repeatable)"),
    ] = None,
) -> None:
    """Build the Hugging Face dataset folder from the given sources.

    Example: covid-cxr build --ieee8023 covid-chestxray-dataset/ --out covid_cxr_unified --num-proc 2

    Example: covid-cxr build --ieee8023 covid-chestxray-dataset/ --out s3://my-bucket/covid_cxr_unified
    """
    from covid_cxr_unified.adapters import limits
    from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec
    from covid_cxr_unified.harmonize.build import build as run_build
    from covid_cxr_unified.harmonize.engine import Engine
    from covid_cxr_unified.harmonize.license_policy import parse_policy
    from covid_cxr_unified.harmonize.remote import build_to_url, local_path, parse_storage_options, redact_url
    from covid_cxr_unified.harmonize.splits import SplitRatios
    from covid_cxr_unified.schema.vocab import Source

    if engine not in {e.value for e in Engine}:
        raise typer.BadParameter(f"{engine!r}: choose local or dask", param_hint="--engine")
    if scheduler is not None and engine != Engine.DASK:
        raise typer.BadParameter("--scheduler needs --engine dask", param_hint="--scheduler")
    out_path = local_path(out)
    if out_path is not None and (staging is not None or storage_option):
        hint = "--staging" if staging is not None else "--storage-option"
        raise typer.BadParameter(f"{hint} needs an fsspec URL as --out (e.g. s3://bucket/x)", param_hint=hint)
    uploaded = ""
    try:
        given = {Source.IEEE8023: ieee8023, Source.V7_DARWIN: v7, Source.BIMCV: bimcv}
        v7_images = images if images is not None or ieee8023 is None else _ieee8023_images(ieee8023)
        shared_images = {Source.IEEE8023: images, Source.V7_DARWIN: v7_images, Source.BIMCV: None}
        specs = [SourceSpec(s, path, shared_images[s]) for s, path in given.items() if path is not None]
        options = BuildOptions(
            out=out_path or Path("covid_cxr_unified"),  # a URL --out: build_to_url builds under --staging
            metadata_only=metadata_only,
            ratios=SplitRatios.parse(split_ratios),
            license_policy=parse_policy(license_policy),
            id_map=id_map,
            progress=not no_progress,
            max_image_pixels=max_image_pixels or limits.DEFAULT_MAX_IMAGE_PIXELS,
            max_json_bytes=max_json_bytes or limits.DEFAULT_MAX_JSON_BYTES,
            max_archive_members=max_archive_members or limits.DEFAULT_MAX_ARCHIVE_MEMBERS,
            num_proc=num_proc,
            engine=Engine(engine),
            scheduler=scheduler,
            resume=not no_resume,
        )
        if out_path is None:
            remote = build_to_url(specs, options, out, staging, parse_storage_options(storage_option or []))
            result = remote.build
            uploaded = (
                f"{len(remote.uploaded)} files ({remote.uploaded_bytes / 2**20:.1f} MiB) uploaded, "
                f"{len(remote.removed)} stale files removed"
            )
        else:
            result = run_build(specs, options)
    except HarmonizeError as exc:
        raise _fail(exc) from None
    for config in result.configs:
        counts = ", ".join(f"{split} {n}" for split, n in config.split_counts.items())
        typer.echo(f"{config.name}: {counts}")
    units = result.units
    typer.echo(f"units: {units.processed} processed, {units.resumed} reused from an interrupted build")
    typer.echo("seconds: " + ", ".join(f"{step} {seconds:.1f}" for step, seconds in result.timings.items()))
    if timings is not None:
        data = {"timings_s": result.timings, "units": {"processed": units.processed, "resumed": units.resumed}}
        timings.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if uploaded:
        typer.echo(f"wrote {redact_url(out)}: {uploaded} (report: build_report.md there)")
    else:
        typer.echo(f"wrote {result.out} (report: {result.out / 'build_report.md'})")


def _ieee8023_images(ieee8023: Path) -> Path:
    """V7 annotates ieee8023's images: by default read them from the ieee8023 folder."""
    return (ieee8023.parent if ieee8023.suffix == ".csv" else ieee8023) / "images"


@app.command()
def demo(
    out: OutOpt = Path("covid_cxr_unified"),
    sources_dir: Annotated[Path, typer.Option("--sources-dir", help="where the synthetic sources are written")] = Path(
        "demo-sources"
    ),
    seed: Annotated[int, typer.Option(help="seed of the synthetic sources")] = 0,
    no_progress: NoProgress = False,
) -> None:
    """Write small synthetic sources that mirror the real layouts, then build them.

    Example: covid-cxr demo --out covid_cxr_unified
    """
    from covid_cxr_unified.harmonize.build import BuildOptions
    from covid_cxr_unified.harmonize.build import build as run_build
    from covid_cxr_unified.harmonize.synthetic import write_demo_sources

    try:
        specs = write_demo_sources(sources_dir, seed=seed)
        result = run_build(specs, BuildOptions(out=out, progress=not no_progress))
    except HarmonizeError as exc:
        raise _fail(exc) from None
    for config in result.configs:
        counts = ", ".join(f"{split} {n}" for split, n in config.split_counts.items())
        typer.echo(f"{config.name}: {counts}")
    typer.echo(f"wrote {result.out}; load it with:")
    typer.echo(
        f'  HF_HUB_OFFLINE=1 python -c "from datasets import load_dataset; '
        f"print(load_dataset('{result.out}', 'all'))\""
    )


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="source name: ieee8023, v7_darwin or bimcv")],
    path: PathArg,
    images: Annotated[Path | None, typer.Option("--images", help="images folder, if not the default")] = None,
    ieee8023: Annotated[
        Path | None, typer.Option("--ieee8023", help="ieee8023 metadata to link against (for v7_darwin)")
    ] = None,
    metadata_only: Annotated[bool, typer.Option("--metadata-only", help="do not read images")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
    records_jsonl: Annotated[
        Path | None, typer.Option("--records-jsonl", help="write the harmonized records (no image bytes)")
    ] = None,
    no_progress: NoProgress = False,
    max_image_pixels: MaxPixels = None,
    max_json_bytes: MaxJson = None,
    max_archive_members: MaxMembers = None,
) -> None:
    """Parse a source without writing a dataset and account for every input item.

    Example: covid-cxr inspect ieee8023 covid-chestxray-dataset/metadata.csv --metadata-only --json
    """
    from covid_cxr_unified.harmonize.inspect import inspect_source

    try:
        report = inspect_source(
            source,
            path,
            images=images,
            metadata_only=metadata_only,
            records_jsonl=records_jsonl,
            related={} if ieee8023 is None else {"ieee8023": ieee8023},
            progress=not no_progress and not as_json,
            limits=_limits(max_image_pixels, max_json_bytes, max_archive_members),
        )
    except HarmonizeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(report.summary(), ensure_ascii=False, indent=2))
    else:
        typer.echo(
            f"{report.source}: {report.input_items} items = {report.records} records + "
            f"{sum(report.excluded.values())} excluded + {sum(report.quarantined.values())} quarantined"
        )
        for title, counts in (("excluded", report.excluded), ("quarantined", report.quarantined)):
            for reason, n in sorted(counts.items()):
                typer.echo(f"  {title}: {reason}: {n}")
        for field_name, counter in sorted(report.unmapped.items()):
            typer.echo(f"  unmapped {field_name}: {dict(counter)}")
    if not report.reconciles():
        typer.echo("error: counts do not reconcile", err=True)
        raise typer.Exit(1)


@app.command()
def schema(
    check: Annotated[bool, typer.Option("--check", help="fail if the committed schema is out of date")] = False,
) -> None:
    """Write (or --check) the JSON Schema of the record model.

    Example: covid-cxr schema --check
    """
    from covid_cxr_unified.schema.jsonschema import check_schema, write_schema

    try:
        if check:
            check_schema()
            typer.echo("record.schema.json is up to date")
        else:
            typer.echo(f"wrote {write_schema()}")
    except HarmonizeError as exc:
        raise _fail(exc) from None


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="a build folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the guard report as JSON")] = False,
) -> None:
    """Prove that no patient, linked patient group or duplicate picture appears in two splits.

    Example: covid-cxr verify covid_cxr_unified
    """
    from covid_cxr_unified.harmonize.guards import verify_splits
    from covid_cxr_unified.harmonize.report import guard_lines, label_by_source_lines

    try:
        report = verify_splits(folder)
    except HarmonizeError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo("\n".join([*guard_lines(report), *label_by_source_lines(report)]))
    if not report.ok:
        for leak in report.leaks:
            typer.echo(f"leak: {leak.describe()}", err=True)
        raise typer.Exit(6)


@app.command()
def publish(
    folder: Annotated[Path, typer.Argument(help="a build folder")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset repo, ORG/NAME")],
    private: Annotated[bool, typer.Option("--private", help="create the repo private")] = False,
) -> None:
    """Upload a build to the Hugging Face Hub, refusing any record whose license forbids redistribution.

    Example: covid-cxr publish covid_cxr_unified --repo-id my-org/covid-cxr-unified
    """
    from covid_cxr_unified.harmonize.publish import publish as run_publish

    try:
        run_publish(folder, repo_id, private=private)
    except HarmonizeError as exc:
        raise _fail(exc) from None
    typer.echo(f"published {folder} to {repo_id}")


@app.command()
def benchmark(
    folder: Annotated[Path, typer.Argument(help="a built folder (from covid-cxr build or covid-cxr demo)")],
    task: Annotated[str, typer.Option("--task", help="covid19, survival or finding:<name>")] = "covid19",
    out: Annotated[
        Path | None, typer.Option("--out", help="report folder (Markdown, JSON, PNG plots); default benchmark-<task>")
    ] = None,
    lung_masked: Annotated[
        bool, typer.Option("--lung-masked", help="only records with lung masks; pixels outside the lungs zeroed")
    ] = False,
    size: Annotated[int, typer.Option("--size", help="the baseline sees size x size pixels")] = 32,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="bootstrap resamples of the intervals")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and the model")] = 0,
    max_per_source: Annotated[
        int | None, typer.Option("--max-per-source", help="read at most N records per source and split")
    ] = None,
) -> None:
    """Train a small baseline per source, score it on every source's test split, and audit shortcuts.

    Example: covid-cxr benchmark covid_cxr_unified --task covid19 --out benchmark-covid19
    """
    from covid_cxr_unified.harmonize.benchmark import BenchmarkOptions, benchmark_build
    from covid_cxr_unified.harmonize.benchmark_report import render_text, write_report

    report = out or Path(f"benchmark-{task.replace(':', '-')}")
    try:
        options = BenchmarkOptions(
            task=task,
            seed=seed,
            n_bootstrap=bootstrap,
            lung_masked=lung_masked,
            size=size,
            max_per_source=max_per_source,
        )
        result = benchmark_build(folder, options)
        write_report(result, report)
    except HarmonizeError as exc:
        raise _fail(exc) from None
    typer.echo(render_text(result))
    typer.echo(f"wrote {report / 'benchmark.md'}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
