"""Work units and engines: units partition a source, and a pool or a Dask cluster gives the serial bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from treedigest import tree_digest

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.engine import Engine
from covid_cxr_unified.harmonize.errors import BuildError
from covid_cxr_unified.harmonize.synthetic import write_demo_sources
from covid_cxr_unified.harmonize.synthetic.bimcv import write_bimcv
from covid_cxr_unified.schema.vocab import Source


@pytest.fixture
def small_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units of 3 items, so that the small synthetic sources make several units each."""
    monkeypatch.setattr(Adapter, "unit_items", 3)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[SourceSpec]:
    root = tmp_path_factory.mktemp("sources")
    specs = write_demo_sources(root, seed=3)
    archives = write_bimcv(root / "bimcv-archives", seed=3, archives=True).root
    return [s for s in specs if s.source is not Source.BIMCV] + [SourceSpec(Source.BIMCV, archives)]


def _adapter(spec: SourceSpec, specs: list[SourceSpec]) -> Adapter:
    related = {s.source: s.path for s in specs}
    return adapter_class(spec.source.value)(spec.path, images=spec.images, related=related)


@pytest.mark.parametrize("source", [Source.IEEE8023, Source.V7_DARWIN, Source.BIMCV])
def test_units_partition_the_items_and_run_gives_the_same_records(
    source: Source, sources: list[SourceSpec], small_units: None, tmp_path: Path
) -> None:
    specs = [*sources, SourceSpec(Source.BIMCV, write_bimcv(tmp_path / "tree", seed=3).root)]
    for spec in (s for s in specs if s.source is source):
        adapter = _adapter(spec, sources)
        adapter.discover()
        units = adapter.units()
        assert len(units) > 1 and [u.index for u in units] == list(range(len(units)))
        by_units = [item.key for unit in units for item in adapter.items_of(unit)]
        assert sorted(by_units) == sorted(item.key for item in adapter.items())
        assert len(by_units) == len(set(by_units))
        # every unit alone, on its own copy, then merged in order == the serial run
        merged = _adapter(spec, sources)
        merged.discover()
        records = []
        for unit in units:
            worker = merged.unit_worker()
            records += [e.record for e in worker.run_unit(unit)]
            merged.absorb(worker.delta())
        merged.finish()
        serial = _adapter(spec, sources)
        assert [e.record for e in serial.run()] == records
        assert serial.report.details() == merged.report.details()
        assert merged.report.reconciles()


def test_bimcv_tree_units_hold_whole_subjects(small_units: None, tmp_path: Path) -> None:
    adapter = adapter_class("bimcv")(write_bimcv(tmp_path / "tree", seed=1).root)
    adapter.discover()
    subjects_seen: dict[str, int] = {}
    for unit in adapter.units():
        for item in adapter.items_of(unit):
            if item.fields.get("kind") == "image":
                subject = item.key.split("/")[0]
                assert subjects_seen.setdefault(subject, unit.index) == unit.index


def test_bimcv_archive_units_are_the_archives(sources: list[SourceSpec]) -> None:
    spec = next(s for s in sources if s.source is Source.BIMCV)
    adapter = _adapter(spec, sources)
    adapter.discover()
    archives = [u.archive for u in adapter.units() if u.archive]
    assert archives and all(archive.endswith((".tar.gz", ".tgz")) for archive in archives)
    assert adapter.unit_checksum(adapter.units()[0]).startswith("sha1:")


def test_process_pool_build_is_byte_identical_to_serial(
    sources: list[SourceSpec], small_units: None, tmp_path: Path
) -> None:
    serial = build(sources, BuildOptions(out=tmp_path / "serial", progress=False))
    pooled = build(sources, BuildOptions(out=tmp_path / "pooled", progress=False, num_proc=2))
    assert serial.units.processed == pooled.units.processed > 6
    assert tree_digest(tmp_path / "serial") == tree_digest(tmp_path / "pooled")
    assert serial.fingerprint == pooled.fingerprint


def test_num_proc_below_one_is_a_typed_error(sources: list[SourceSpec], tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="num_proc"):
        build(sources, BuildOptions(out=tmp_path / "out", progress=False, num_proc=0))


def test_dask_local_cluster_build_is_byte_identical_to_serial(
    sources: list[SourceSpec], small_units: None, loopback_only: None, tmp_path: Path
) -> None:
    pytest.importorskip("distributed")
    serial = build(sources, BuildOptions(out=tmp_path / "serial", progress=False))
    on_dask = build(sources, BuildOptions(out=tmp_path / "dask", progress=False, engine=Engine.DASK, num_proc=2))
    assert on_dask.units.processed == serial.units.processed
    assert tree_digest(tmp_path / "serial") == tree_digest(tmp_path / "dask")


def test_unreachable_dask_scheduler_is_a_typed_error(
    sources: list[SourceSpec], loopback_only: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dask = pytest.importorskip("dask")
    pytest.importorskip("distributed")
    monkeypatch.setitem(dask.config.config["distributed"]["comm"]["timeouts"], "connect", "2s")
    options = BuildOptions(
        out=tmp_path / "out", progress=False, engine=Engine.DASK, scheduler="tcp://127.0.0.1:9"
    )
    with pytest.raises(BuildError, match="dask scheduler"):
        build(sources[:1], options)


def test_every_long_step_shows_a_progress_bar(
    sources: list[SourceSpec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build(sources, BuildOptions(out=tmp_path / "out", progress=True))
    shown = capsys.readouterr().err
    steps = ["discover", "bimcv: verify and index archives", "units: records", "route shards", "card figures"]
    for step in steps:
        assert re.search(rf"\r{re.escape(step)}: 100%\|", shown), step
