"""A build whose output is an fsspec URL: the same files and bytes as a local build, stale files removed,
foreign folders and missing protocols refused in one line, no credential printed. No network: the
remote is fsspec's in-process `memory://` filesystem."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from treedigest import tree_digest
from typer.testing import CliRunner

from covid_cxr_unified.harmonize import build as build_module
from covid_cxr_unified.harmonize.build import BUILD_MARKER, BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.remote import (
    UPLOAD_MARKER,
    build_to_url,
    default_staging,
    redact_url,
    upload_build,
    upload_order,
)
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.harmonize.synthetic.v7_darwin import write_v7_darwin
from covid_cxr_unified.schema.vocab import Source

runner = CliRunner()
SECRET = "SeCrEtToKeN"


@pytest.fixture(autouse=True)
def memory_fs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[MemoryFileSystem]:
    """An empty in-process filesystem per test; the default staging folders go under tmp_path."""
    monkeypatch.setenv("COVID_CXR_UNIFIED_CACHE", str(tmp_path / "cache"))
    fs = MemoryFileSystem()
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[SourceSpec]:
    """ieee8023 with images and a V7 export on them: small, several configs and shards."""
    root = tmp_path_factory.mktemp("sources")
    ieee = write_ieee8023(root / "ieee8023", seed=4, patients=30)
    v7 = write_v7_darwin(root / "v7_darwin", ieee.root, seed=4)
    return [SourceSpec(Source.IEEE8023, ieee.root), SourceSpec(Source.V7_DARWIN, v7.coco_zip, images=v7.images_dir)]


@pytest.fixture(scope="module")
def local_build(sources: list[SourceSpec], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The serial local build of `sources` (read-only)."""
    out = tmp_path_factory.mktemp("local") / "covid_cxr_unified"
    build(sources, BuildOptions(out=out, progress=False))
    return out


def remote_digest(url: str) -> dict[str, str]:
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    return {
        path[len(root) + 1 :]: hashlib.sha256(fs.cat_file(path)).hexdigest()
        for path in sorted(fs.find(root, withdirs=False))
    }


def test_memory_url_gets_the_same_files_and_bytes_as_a_local_build(
    sources: list[SourceSpec], local_build: Path, tmp_path: Path
) -> None:
    result = build_to_url(sources, BuildOptions(progress=False), "memory://bucket/cxr")
    assert remote_digest("memory://bucket/cxr") == tree_digest(local_build)
    assert {"README.md", BUILD_MARKER, "data/all/train-00000-of-00001.parquet"} <= set(result.uploaded)
    assert result.uploaded[-2:] == ["README.md", BUILD_MARKER]  # the card, then the marker, last
    assert result.removed == [] and not (default_staging("memory://bucket/cxr") / "build").exists()


def test_upload_order_puts_the_card_and_the_marker_last(local_build: Path) -> None:
    order = upload_order(local_build)
    assert order[:-2] == sorted(order[:-2]) and order[-2:] == ["README.md", BUILD_MARKER]
    assert sorted(order) == sorted(tree_digest(local_build))


def test_file_url_works_like_a_path(sources: list[SourceSpec], local_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "via-url"
    result = runner.invoke(app, ["build", *_source_args(sources), "--out", f"file://{out}", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert tree_digest(out) == tree_digest(local_build)
    assert f"wrote {out}" in result.output


def test_rebuild_with_changed_content_removes_stale_files(
    sources: list[SourceSpec], local_build: Path, memory_fs: MemoryFileSystem, tmp_path: Path
) -> None:
    url = "memory://bucket/rebuilt"
    upload_build(local_build, url, progress=False)  # the previous build: ieee8023 and v7_darwin
    first = remote_digest(url)
    assert first == tree_digest(local_build) and any(name.startswith("data/v7_darwin/") for name in first)

    ieee_only = [s for s in sources if s.source is Source.IEEE8023]
    result = build_to_url(ieee_only, BuildOptions(progress=False), url, staging=tmp_path / "staging")
    fresh = tmp_path / "fresh"
    build(ieee_only, BuildOptions(out=fresh, progress=False))
    expected = tree_digest(fresh)
    assert remote_digest(url) == expected
    assert "data/v7_darwin/train-00000-of-00001.parquet" in result.removed
    assert sorted(result.removed) == sorted(set(first) - set(expected))
    rewritten = {name for name in expected if first.get(name) != expected[name]}
    assert {"README.md", BUILD_MARKER, "croissant.json"} <= rewritten  # replaced in place
    assert not memory_fs.exists("/bucket/rebuilt/data/v7_darwin")  # no empty folder left behind


def test_interrupted_remote_build_resumes_its_units_in_the_staging_folder(
    sources: list[SourceSpec], local_build: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "memory://bucket/resumed"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise BuildError("interrupted after the units")

    with monkeypatch.context() as patch:
        patch.setattr(build_module, "group_records", interrupted)
        with pytest.raises(BuildError, match="interrupted"):
            build_to_url(sources, BuildOptions(progress=False), url)
    assert remote_digest(url) == {}  # nothing uploaded
    result = build_to_url(sources, BuildOptions(progress=False), url)
    assert result.build.units.resumed > 0 and result.build.units.processed == 0
    assert remote_digest(url) == tree_digest(local_build)


def test_non_build_remote_folder_is_refused_in_one_line(sources: list[SourceSpec], memory_fs: MemoryFileSystem) -> None:
    memory_fs.pipe_file("/bucket/photos/holiday.jpg", b"not a build")
    result = runner.invoke(app, ["build", *_source_args(sources), "--out", "memory://bucket/photos", "--no-progress"])
    assert result.exit_code == 4
    assert result.stderr.strip().splitlines() == [
        "error: memory://bucket/photos is not empty and is not a covid-cxr build; choose another --out or remove it"
    ]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert memory_fs.cat_file("/bucket/photos/holiday.jpg") == b"not a build"
    assert memory_fs.find("/bucket/photos") == ["/bucket/photos/holiday.jpg"]


def test_interrupted_first_upload_is_recognised_as_ours(local_build: Path, memory_fs: MemoryFileSystem) -> None:
    memory_fs.pipe_file(f"/bucket/half/{UPLOAD_MARKER}", b"covid-cxr-unified: upload in progress\n")
    memory_fs.pipe_file("/bucket/half/data/all/train-00000-of-00009.parquet", b"partial")
    uploaded, size, removed = upload_build(local_build, "memory://bucket/half", progress=False)
    assert remote_digest("memory://bucket/half") == tree_digest(local_build)
    assert removed == ["data/all/train-00000-of-00009.parquet"] and size == sum(
        (local_build / name).stat().st_size for name in uploaded
    )


def _missing_protocol() -> tuple[str, str]:
    for protocol, package in (("s3", "s3fs"), ("gcs", "gcsfs"), ("abfs", "adlfs")):
        if importlib.util.find_spec(package) is None:
            return protocol, package
    pytest.skip("s3fs, gcsfs and adlfs are all installed")


@pytest.mark.parametrize("kind", ["not installed", "unknown"])
def test_missing_or_unknown_protocol_is_a_one_line_error(kind: str, sources: list[SourceSpec]) -> None:
    protocol, package = _missing_protocol() if kind == "not installed" else ("nosuchproto", "")
    result = runner.invoke(app, ["build", *_source_args(sources), "--out", f"{protocol}://bucket/x", "--no-progress"])
    assert result.exit_code == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to {protocol}://bucket/x: ")
    assert package in lines[0] if package else "Protocol not known: nosuchproto" in lines[0]
    assert "Traceback" not in result.output


def test_no_credential_is_printed_nor_kept_in_the_staging_path(
    sources: list[SourceSpec], memory_fs: MemoryFileSystem, tmp_path: Path
) -> None:
    url = f"memory://alice:{SECRET}@bucket/signed?token={SECRET}"
    assert SECRET not in redact_url(url) and SECRET not in str(default_staging(url))
    result = runner.invoke(app, ["build", *_source_args(sources), "--out", url])  # progress bars on
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "alice" not in result.output
    assert "wrote memory://bucket/signed?token=***: " in result.stdout
    # an error naming the URL does not show it either
    memory_fs.pipe_file(f"/alice:{SECRET}@bucket/other/x.txt", b"x")
    refused = runner.invoke(app, ["build", *_source_args(sources), "--out", f"memory://alice:{SECRET}@bucket/other"])
    assert refused.exit_code == 4 and SECRET not in refused.output and "error: memory://bucket/other " in refused.stderr
    assert all(SECRET not in str(p) for p in (tmp_path / "cache").rglob("*"))


def test_staging_and_storage_options_need_a_url_out(sources: list[SourceSpec], tmp_path: Path) -> None:
    args = ["build", *_source_args(sources), "--out", str(tmp_path / "out"), "--no-progress"]
    for extra in (["--staging", str(tmp_path / "s")], ["--storage-option", "anon=true"]):
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 2 and "needs an fsspec URL" in result.output
    bad = runner.invoke(app, [*args[:-3], "--out", "memory://bucket/o", "--storage-option", "novalue"])
    assert bad.exit_code == 1 and "error: storage option 'novalue' is not KEY=VALUE" in bad.stderr


@pytest.mark.usefixtures("loopback_only")
def test_dask_local_cluster_to_memory_url_is_byte_identical_to_the_serial_local_build(
    sources: list[SourceSpec], local_build: Path, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    url = "memory://bucket/dask"
    args = ["--engine", "dask", "--num-proc", "2", "--staging", str(tmp_path / "staging"), "--no-progress"]
    result = runner.invoke(app, ["build", *_source_args(sources), "--out", url, *args])
    assert result.exit_code == 0, result.output
    assert remote_digest(url) == tree_digest(local_build)


def _source_args(sources: list[SourceSpec]) -> list[str]:
    by_source = {s.source: s for s in sources}
    args = ["--ieee8023", str(by_source[Source.IEEE8023].path)]
    if Source.V7_DARWIN in by_source:  # its images are the ieee8023 images/ folder, the CLI's default
        args += ["--v7", str(by_source[Source.V7_DARWIN].path)]
    return args
