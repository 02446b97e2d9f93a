"""V7 Darwin adapter: every shape of the export, every trap, linkage to ieee8023, the real files."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import statistics
import sys
import tracemalloc
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from datasets import concatenate_datasets, load_dataset
from typer.testing import CliRunner

from covid_cxr_unified.adapters import ADAPTERS, v7_stream
from covid_cxr_unified.adapters.base import Emitted
from covid_cxr_unified.adapters.masks import Rle, decode, iou
from covid_cxr_unified.adapters.v7_darwin import V7DarwinAdapter, image_masks
from covid_cxr_unified.adapters.v7_formats import COCO, DARWIN_1, DARWIN_2, read_export
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
from covid_cxr_unified.harmonize.synthetic.ieee8023 import HEADERS, write_ieee8023
from covid_cxr_unified.harmonize.synthetic.v7_darwin import (
    MOJIBAKE_LOCATION,
    V7_ONLY_NAME,
    V7_REMOVED_NAME,
    V7Fixture,
    write_v7_darwin,
)
from covid_cxr_unified.schema.record import Record
from covid_cxr_unified.schema.vocab import Covid19Basis, Finding, LabelState, MaskLabel, Modality, Source, View

SHAPE_OF_INPUT = {
    "coco_json": "coco",
    "coco_zip": "coco",
    "darwin1_dir": "darwin-1.0",
    "darwin1_zip": "darwin-1.0",
    "darwin2_dir": "darwin-2.0",
}
INPUTS = tuple(SHAPE_OF_INPUT)


@pytest.fixture(scope="module")
def v7(tmp_path_factory: pytest.TempPathFactory) -> V7Fixture:
    root = tmp_path_factory.mktemp("v7src")
    ieee = write_ieee8023(root / "ieee8023", seed=0)
    return write_v7_darwin(root / "v7", ieee.root, seed=0)


def adapter_for(v7: V7Fixture, which: str, *, images: bool = False, linked: bool = True) -> V7DarwinAdapter:
    related = {Source.IEEE8023: v7.ieee8023} if linked else {}
    return V7DarwinAdapter(getattr(v7, which), images=v7.images_dir if images else None, related=related)


def emitted(adapter: V7DarwinAdapter) -> list[Emitted]:
    return list(adapter.run())


def records_by_file(adapter: V7DarwinAdapter) -> dict[str, Record]:
    return {e.record.record_id.removeprefix("v7_darwin:"): e.record for e in adapter.run()}


def test_registered_under_its_one_name() -> None:
    assert ADAPTERS[Source.V7_DARWIN] is V7DarwinAdapter and V7DarwinAdapter.name.value == "v7_darwin"


# --- every shape, metadata-only and with images ------------------------------------------------------------


@pytest.mark.parametrize("which", INPUTS)
def test_every_shape_reconciles_in_metadata_only_mode(v7: V7Fixture, which: str) -> None:
    adapter = adapter_for(v7, which)
    out = emitted(adapter)
    report = adapter.report
    assert report.reconciles()
    assert report.input_items == v7.images
    assert report.records == len(out) == v7.expected_records
    assert dict(report.excluded) == v7.expected_excluded
    assert dict(report.quarantined) == v7.expected_quarantined
    assert all(e.image_bytes is None and e.record.image is None for e in out)
    assert report.notes["format"] == SHAPE_OF_INPUT[which].replace("coco", COCO)
    notes = report.notes["annotations"]
    assert isinstance(notes, dict)
    assert notes["input"] == v7.annotations
    in_records = sum(notes["masks_in_records"].values()) + sum(notes["rejected_in_records"].values())  # type: ignore[union-attr]
    assert in_records + notes["on_images_without_record"] == v7.annotations  # type: ignore[operator]
    assert notes["rejected_in_records"] == dict(sorted(v7.expected_rejected[SHAPE_OF_INPUT[which]].items()))
    assert notes["repaired"] == v7.expected_repairs[SHAPE_OF_INPUT[which]]
    assert report.unmapped == {"annotation class": Counter({"Pacemaker": 1}), "tag": Counter({"Smoker/Y": 1})}


@pytest.mark.parametrize("which", ["coco_zip", "darwin1_dir", "darwin2_dir"])
def test_with_images_they_are_embedded_and_checked_against_the_annotated_size(v7: V7Fixture, which: str) -> None:
    adapter = adapter_for(v7, which, images=True)
    out = emitted(adapter)
    assert adapter.report.reconciles()
    assert len(out) == v7.expected_records_with_images
    assert dict(adapter.report.quarantined) == v7.expected_quarantined_with_images
    for e in out:
        assert e.image_bytes is not None and e.record.image is not None
        assert e.record.image.path == e.record.record_id.removeprefix("v7_darwin:")
        for mask in e.record.masks:
            assert mask.size == (e.record.image.height, e.record.image.width)
    missing = {n.key: n.reason for n in adapter.report.quarantined_items}
    assert missing[V7_ONLY_NAME] == "image missing"
    removed = next(e.record for e in out if e.record.record_id == f"v7_darwin:{V7_REMOVED_NAME}")
    assert removed.image is not None and removed.links == () and removed.license.license_id == "LicenseRef-unknown"


def _masks_of(records: dict[str, Record]) -> dict[str, list[tuple[str, str, int]]]:
    return {name: [(m.label.value, m.counts, m.area) for m in r.masks] for name, r in records.items()}


def test_the_same_image_gives_the_same_masks_whichever_shape_it_came_from(v7: V7Fixture) -> None:
    reference = _masks_of(records_by_file(adapter_for(v7, "coco_json")))
    assert sum(len(m) for m in reference.values()) > 40
    for which in INPUTS[1:]:
        assert _masks_of(records_by_file(adapter_for(v7, which))) == reference, which


def test_masks_carry_v7_cc_by_apart_from_the_image_license(v7: V7Fixture) -> None:
    records = records_by_file(adapter_for(v7, "coco_zip"))
    masks = [m for r in records.values() for m in r.masks]
    assert {m.annotation_source for m in masks} == {Source.V7_DARWIN}
    assert {m.annotation_license.license_id for m in masks} == {"CC-BY-4.0"}
    assert all(m.annotation_license.attribution == "V7 Labs COVID-19 chest X-ray dataset" for m in masks)
    expected = Counter(
        a.category.lower() for s in v7.specs if s.outcome == "record" for a in s.anns if a.expect == "mask"
    )
    assert Counter(m.label.value for m in masks) == expected
    for spec in v7.specs:  # the image license is ieee8023's, whatever the masks' license
        if spec.file_name in records and spec.ieee8023_row is not None:
            assert records[spec.file_name].license.raw == spec.ieee8023_row["license"]


# --- traps -----------------------------------------------------------------------------------------------------


def _spec_with(v7: V7Fixture, predicate: str) -> str:
    matches = {
        "swapped": lambda s: any(a.coco_rle == "swapped" for a in s.anns),
        "correct": lambda s: any(a.coco_rle == "correct" for a in s.anns),
        "clipped": lambda s: any(a.rings and min(a.rings[0][0::2]) < 0 for a in s.anns),
        "noise": lambda s: "19" in s.tags,
        "mojibake": lambda s: MOJIBAKE_LOCATION in s.tags,
        "lateral": lambda s: "View/Lateral" in s.tags,
        "untagged": lambda s: s.tags and all(t.startswith("PatientID:") for t in s.tags),
        "ct": lambda s: "CT" in s.tags,
        "no modality": lambda s: "View/Lateral" in s.tags and "X-ray" not in s.tags,
    }[predicate]
    return next(s.file_name for s in v7.specs if matches(s))


def test_swapped_size_rle_is_repaired_recorded_and_matches_the_polygon(v7: V7Fixture) -> None:
    name = _spec_with(v7, "swapped")
    from_coco = records_by_file(adapter_for(v7, "coco_json"))[name]
    from_darwin = records_by_file(adapter_for(v7, "darwin1_dir"))[name]
    ignore = [m for m in from_coco.masks if m.label is MaskLabel.IGNORE]
    assert len(ignore) == 1 and ignore[0].area > 0
    coco = json.loads(v7.coco_json.read_text(encoding="utf-8"))
    stated = next(a for a in coco["annotations"] if a["id"] == int(ignore[0].annotation_id or 0))
    spec = next(s for s in v7.specs if s.file_name == name)
    assert stated["area"] == 0 and stated["segmentation"]["size"] == [spec.width, spec.height]
    assert ignore[0].bbox == tuple(stated["bbox"])
    repairs = from_coco.provenance.repairs
    assert len(repairs) == 1 and "was [width, height]" in repairs[0] and ignore[0].annotation_id in repairs[0]
    assert from_darwin.provenance.repairs == ()  # the complex polygon needs no repair
    darwin_ignore = next(m for m in from_darwin.masks if m.label is MaskLabel.IGNORE)
    assert darwin_ignore.counts == ignore[0].counts


def test_complex_polygon_keeps_its_hole(v7: V7Fixture) -> None:
    name = _spec_with(v7, "correct")
    record = records_by_file(adapter_for(v7, "darwin2_dir"))[name]
    spec = next(s for s in v7.specs if s.file_name == name)
    ignore = next(m for m in record.masks if m.label is MaskLabel.IGNORE)
    pixels = decode(Rle(size=ignore.size, counts=ignore.counts, area=ignore.area, bbox=ignore.bbox))
    hole = next(a for a in spec.anns if a.coco_rle == "correct").rings[1]
    cx, cy = int((hole[0] + hole[2]) / 2), int((hole[1] + hole[5]) / 2)
    assert pixels[cy, cx] == 0 and pixels.sum() == ignore.area
    assert pixels[int(hole[1]) - 1, cx] == 1  # just above the hole: the ring itself


def test_clipped_polygon_is_a_recorded_repair(v7: V7Fixture) -> None:
    name = _spec_with(v7, "clipped")
    for which in ("coco_zip", "darwin1_zip", "darwin2_dir"):
        record = records_by_file(adapter_for(v7, which))[name]
        assert any("clipped to it" in r for r in record.provenance.repairs), which
        assert all(m.bbox[0] >= 0 and m.bbox[1] >= 0 for m in record.masks)


def test_laterals_are_records_without_masks_and_ct_slices_are_excluded(v7: V7Fixture) -> None:
    adapter = adapter_for(v7, "coco_zip")
    records = records_by_file(adapter)
    lateral = records[_spec_with(v7, "lateral")]
    assert lateral.masks == () and lateral.view.view is View.LATERAL and lateral.view.raw == "Lateral"
    ct = _spec_with(v7, "ct")
    assert ct not in records
    assert {n.key: n.reason for n in adapter.report.excluded_items} == {ct: "CT slice: not a chest X-ray"}


def test_missing_modality_tag_is_flagged_not_guessed_silently(v7: V7Fixture) -> None:
    record = records_by_file(adapter_for(v7, "coco_zip"))[_spec_with(v7, "no modality")]
    assert record.modality is Modality.XR
    assert any(f.startswith("modality tag missing") for f in record.provenance.flags)


def test_noise_tag_19_is_ignored_and_mojibake_kept(v7: V7Fixture) -> None:
    records = records_by_file(adapter_for(v7, "darwin1_zip"))
    noisy = records[_spec_with(v7, "noise")]
    assert any("noise tag '19'" in f for f in noisy.provenance.flags)
    assert {f.finding for f in noisy.findings} == {Finding.COVID19, Finding.PNEUMONIA, Finding.VIRAL_PNEUMONIA}
    assert noisy.offset_days is None
    garbled = records[_spec_with(v7, "mojibake")]
    assert MOJIBAKE_LOCATION in garbled.raw["tags"]  # type: ignore[operator]
    assert any("U+FFFD" in f for f in garbled.provenance.flags)


def test_covid19_tag_is_a_curator_annotation_and_no_tag_is_not_annotated(v7: V7Fixture) -> None:
    records = records_by_file(adapter_for(v7, "coco_json"))
    tagged = records["syn-100-0.jpg"]
    assert tagged.covid19.state is LabelState.POSITIVE and tagged.covid19.basis is Covid19Basis.ANNOTATION
    assert [e.raw for e in tagged.covid19.evidence] == ["COVID-19"]
    untagged = records[_spec_with(v7, "untagged")]
    assert untagged.covid19.state is LabelState.NOT_ANNOTATED and untagged.covid19.basis is Covid19Basis.NONE
    assert untagged.findings == () and untagged.view.view is View.UNKNOWN
    assert untagged.patient.sex is None and untagged.outcomes.survival is None  # None, never False


def test_tags_map_to_patient_and_clinical_fields(v7: V7Fixture) -> None:
    records = records_by_file(adapter_for(v7, "coco_json"))
    for spec in v7.specs:
        record = records.get(spec.file_name)
        row = spec.ieee8023_row
        if record is None or row is None or not any(t.startswith("Sex/") for t in spec.tags):
            continue
        assert record.patient.patient_id == f"v7_darwin:{row['patientid']}"
        assert record.patient.sex is not None and record.patient.sex.value == row["sex"]
        assert record.patient.age_years == (float(row["age"]) if row["age"] else None)
        assert record.outcomes.survival == {"Y": True, "N": False, "": None}[row["survival"]]
        assert record.clinical.po2_saturation == (float(row["pO2_saturation"]) if row["pO2_saturation"] else None)


# --- linkage -----------------------------------------------------------------------------------------------------


def test_linkage_links_record_and_patient_and_takes_the_image_license(v7: V7Fixture) -> None:
    adapter = adapter_for(v7, "coco_zip")
    records = records_by_file(adapter)
    linkage = adapter.report.notes["linkage"]
    assert isinstance(linkage, dict)
    assert linkage["matched"] == v7.expected_linked
    assert list(linkage["unmatched"]) == list(v7.expected_unmatched)  # type: ignore[call-overload]
    assert "not in ieee8023 metadata" in linkage["unmatched"][V7_ONLY_NAME]  # type: ignore[index]
    for spec in v7.specs:
        record = records.get(spec.file_name)
        if record is None or spec.ieee8023_row is None:
            continue
        (link,) = record.links
        assert link.record_id == f"ieee8023:{spec.file_name}" and link.relation == "same_image"
        assert link.patient_id == f"ieee8023:{spec.ieee8023_row['patientid']}"
        assert record.license.raw == spec.ieee8023_row["license"]
    orphan = records[V7_ONLY_NAME]
    assert orphan.links == () and orphan.license.license_id == "LicenseRef-unknown"
    assert not orphan.license.research and orphan.masks[0].annotation_license.license_id == "CC-BY-4.0"


def test_disagreements_with_ieee8023_are_reported_per_field(v7: V7Fixture) -> None:
    adapter = adapter_for(v7, "darwin1_dir")
    records = records_by_file(adapter)
    disagreements = adapter.report.notes["disagreements"]
    assert isinstance(disagreements, dict)
    assert disagreements["view"] == len(v7.view_disagreements) == 1
    assert disagreements["finding"] == len(v7.finding_disagreements) == 1
    (unknown,) = v7.finding_disagreements
    assert records[unknown].covid19.state is LabelState.POSITIVE  # V7's own statement is kept
    assert "V7 tag disagrees with ieee8023: finding" in records[unknown].provenance.flags
    assert disagreements["patientid"] == 0 and disagreements["sex"] == 0
    (relabelled,) = v7.view_disagreements
    assert records[relabelled].view.disagreements[0].startswith("ieee8023=")
    assert "V7 tag disagrees with ieee8023: view" in records[relabelled].provenance.flags


def test_without_ieee8023_nothing_is_linked_and_image_licenses_are_unknown(v7: V7Fixture) -> None:
    adapter = adapter_for(v7, "coco_json", linked=False)
    records = [e.record for e in adapter.run()]
    assert adapter.report.notes["linkage"] == "not attempted: no ieee8023 metadata given"
    assert all(r.links == () for r in records)
    assert {r.license.license_id for r in records} == {"LicenseRef-unknown"}


def test_linkage_accepts_the_metadata_csv_itself(v7: V7Fixture) -> None:
    adapter = V7DarwinAdapter(v7.coco_zip, related={Source.IEEE8023: v7.ieee8023 / "metadata.csv"})
    list(adapter.run())
    assert adapter.report.notes["linkage"]["matched"] == v7.expected_linked  # type: ignore[index,call-overload]


# --- detection and broken input ------------------------------------------------------------------------------


def test_shape_is_detected_from_content_not_from_the_name(v7: V7Fixture, tmp_path: Path) -> None:
    disguised = tmp_path / "disguised"
    disguised.mkdir()
    shutil.copy(v7.coco_json, disguised / "annotations-1676192.json")
    assert read_export(disguised, "").shape == COCO
    darwin_named_like_coco = tmp_path / "output.json"
    shutil.copy(next(iter(sorted(v7.darwin1_dir.iterdir()))), darwin_named_like_coco)
    assert read_export(darwin_named_like_coco, "").shape == DARWIN_1
    assert read_export(v7.darwin2_dir, "").shape == DARWIN_2


def test_missing_and_foreign_sources_are_typed_errors(v7: V7Fixture, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="covid-19-xray-dataset"):
        list(V7DarwinAdapter(tmp_path / "nothing").run())
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("notes.json", json.dumps({"hello": "world"}))
    with pytest.raises(SourceFormatError, match="neither a COCO export nor Darwin JSON"):
        list(V7DarwinAdapter(foreign).run())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(v7.coco_json, mixed / "output.json")
    shutil.copy(next(iter(sorted(v7.darwin1_dir.iterdir()))), mixed / "one.json")
    with pytest.raises(SourceFormatError, match="mixes a COCO export"):
        list(V7DarwinAdapter(mixed).run())


def test_unreadable_and_duplicate_darwin_files_are_quarantined_not_dropped(v7: V7Fixture, tmp_path: Path) -> None:
    folder = tmp_path / "darwin"
    shutil.copytree(v7.darwin1_dir, folder)
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / "zz-copy.json")
    (folder / "zz-broken.json").write_text('{"image": {"original_filename": "x.png"', encoding="utf-8")
    (folder / "zz-malformed.json").write_text(json.dumps({"image": {"filename": "y.png"}, "annotations": [1]}))
    adapter = V7DarwinAdapter(folder)
    list(adapter.run())
    assert adapter.report.reconciles() and adapter.report.input_items == v7.images + 3
    quarantined = adapter.report.quarantined
    assert quarantined["annotation file unreadable"] == 2 and quarantined["duplicate file_name"] == 1


def test_darwin_2_in_a_zip_reads_like_the_folder(v7: V7Fixture, tmp_path: Path) -> None:
    archive_path = tmp_path / "pull.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for path in sorted(v7.darwin2_dir.iterdir()):
            archive.write(path, f"releases/latest/annotations/{path.name}")
    zipped = V7DarwinAdapter(archive_path, related={Source.IEEE8023: v7.ieee8023})
    assert _masks_of(records_by_file(zipped)) == _masks_of(records_by_file(adapter_for(v7, "darwin2_dir")))
    assert zipped.report.notes["format"] == DARWIN_2


def test_darwin_2_without_darwin_py_says_how_to_install_it(v7: V7Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "darwin.utils", None)
    with pytest.raises(SourceFormatError, match=r"covid-cxr-unified\[darwin\]"):
        list(V7DarwinAdapter(v7.darwin2_dir).run())


def _export_with_darwin_py(v7: V7Fixture, out: Path) -> None:
    """Darwin JSON 2.0 written by darwin-py's own exporter from the synthetic 1.0 files."""
    orjson = pytest.importorskip("orjson")
    darwin_utils = pytest.importorskip("darwin.utils.utils")
    from darwin import datatypes
    from darwin.exporter.formats.darwin import build_image_annotation

    out.mkdir()
    for path in sorted(v7.darwin1_dir.iterdir()):
        data = json.loads(path.read_text(encoding="utf-8"))
        annotation_file = darwin_utils._parse_darwin_image(path, data, None)  # 1.0 is private in darwin-py 3
        for ann in data["annotations"]:  # darwin-py 3 drops complex polygons from 1.0: add them back
            if "complex_polygon" in ann:
                annotation_file.annotations.append(datatypes.make_polygon(ann["name"], ann["complex_polygon"]["path"]))
        (out / path.name).write_bytes(orjson.dumps(build_image_annotation(annotation_file, "v7-labs")))


def test_darwin_2_written_by_darwin_py_gives_the_same_masks(v7: V7Fixture, tmp_path: Path) -> None:
    exported = tmp_path / "exported-2.0"
    _export_with_darwin_py(v7, exported)
    theirs = V7DarwinAdapter(exported, related={Source.IEEE8023: v7.ieee8023})
    ours = adapter_for(v7, "darwin2_dir")
    assert read_export(exported, "").shape == DARWIN_2
    their_records, our_records = records_by_file(theirs), records_by_file(ours)
    assert _masks_of(their_records) == _masks_of(our_records)
    assert {k: r.covid19 for k, r in their_records.items()} == {k: r.covid19 for k, r in our_records.items()}


# --- discovery on disk ---------------------------------------------------------------------------------------


def _bulk_export(folder: Path, images: int) -> tuple[Path, Path]:
    """A COCO export of `images` images (one lung polygon each, a patient tag each) and the ieee8023
    metadata.csv listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    ring = [4.5, 4.5, 20.25, 4.5, 20.25, 20.25, 4.5, 20.25]
    coco = {
        "info": {"date_created": "2020/06/17"},
        "images": [
            {"id": i, "file_name": f"bulk-{i}.png", "width": 32, "height": 32, "tag_ids": [1000 + i, 1, 2]}
            for i in range(images)
        ],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 0, "segmentation": [ring], "area": 248.0625,
             "bbox": [4.5, 4.5, 15.75, 15.75]}
            for i in range(images)
        ],
        "categories": [{"id": 0, "name": "Lung"}],
        "tag_categories": [{"id": 1, "name": "X-ray"}, {"id": 2, "name": "COVID-19"}]
        + [{"id": 1000 + i, "name": f"PatientID:{i}"} for i in range(images)],
    }
    export = folder / "output.json"
    export.write_text(json.dumps(coco), encoding="utf-8")
    header = list(HEADERS["newest"])
    with (folder / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, header, restval="")
        writer.writeheader()
        for i in range(images):
            writer.writerow({"patientid": str(i), "filename": f"bulk-{i}.png", "view": "PA", "license": "CC BY 4.0"})
    return export, folder / "metadata.csv"


def _peak_of_a_run(folder: Path, images: int) -> int:
    """tracemalloc's peak over discovery and every unit (metadata only), in bytes."""
    export, metadata = _bulk_export(folder, images)
    adapter = V7DarwinAdapter(export, related={Source.IEEE8023: metadata}, workdir=folder / "index")
    tracemalloc.start()
    try:
        records = sum(1 for _ in adapter.run())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == images and adapter.report.notes["linkage"]["matched"] == images  # type: ignore[index,call-overload]
    return peak


def test_memory_does_not_grow_with_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(v7_stream, "CHUNK_BYTES", 1 << 14)  # so the small export already fills every buffer
    small, large = _peak_of_a_run(tmp_path / "small", 400), _peak_of_a_run(tmp_path / "large", 1600)
    # Holding the images, their annotations and the ieee8023 rows in memory took ~3.5 kB an image.
    assert large - small < 300_000, (small, large)


def test_a_pickled_copy_is_small_and_runs_its_units_from_the_index(v7: V7Fixture, tmp_path: Path) -> None:
    adapter = V7DarwinAdapter(v7.coco_zip, related={Source.IEEE8023: v7.ieee8023}, workdir=tmp_path)
    adapter.discover()
    pickled = pickle.dumps(adapter)
    assert len(pickled) < 10_000  # the discovered state is on disk: nothing per image is pickled
    copy = pickle.loads(pickled)
    records = []
    for unit in copy.units():
        worker = copy.unit_worker()
        records += [e.record.model_dump_json() for e in worker.run_unit(unit)]
    assert records == [e.record.model_dump_json() for e in adapter_for(v7, "coco_zip").run()]


def _records_json(adapter: V7DarwinAdapter) -> list[str]:
    """Every record, but its release (which names the export file's hash)."""
    return [e.record.model_dump_json(exclude={"release"}) for e in adapter.run()]


def test_coco_members_in_any_order_read_the_same(v7: V7Fixture, tmp_path: Path) -> None:
    document = json.loads(v7.coco_json.read_text(encoding="utf-8"))
    reordered = tmp_path / "output.json"
    reordered.write_text(json.dumps(dict(reversed(list(document.items())))), encoding="utf-8")
    theirs = V7DarwinAdapter(reordered, related={Source.IEEE8023: v7.ieee8023})
    assert _records_json(theirs) == _records_json(adapter_for(v7, "coco_json"))


def test_a_coco_key_given_twice_keeps_its_last_value_as_json_loads_does(v7: V7Fixture, tmp_path: Path) -> None:
    text = v7.coco_json.read_text(encoding="utf-8")
    twice = tmp_path / "output.json"
    twice.write_text('{"images": [{"id": 1, "file_name": "gone.png"}], ' + text.lstrip()[1:], encoding="utf-8")
    theirs = V7DarwinAdapter(twice, related={Source.IEEE8023: v7.ieee8023})
    assert _records_json(theirs) == _records_json(adapter_for(v7, "coco_json"))


def _coco_text(**members: Any) -> str:
    return "{" + ", ".join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in members.items()) + "}"


def test_coco_errors_come_in_the_order_reading_the_whole_file_gave(tmp_path: Path) -> None:
    export = tmp_path / "output.json"
    images = [{"id": 1, "file_name": "a.png", "tag_ids": [1]}]
    # The annotation's image_id fails first in the file, the categories' id first as read: categories win.
    export.write_text(
        _coco_text(images=images, annotations=[{"id": 1, "image_id": [1]}], categories=[{"id": {"a": 1}}]),
        encoding="utf-8",
    )
    with pytest.raises(SourceFormatError, match=r"COCO export \(TypeError: unhashable type: 'dict'\)"):
        read_export(export, "")
    # A list that is not one of objects outranks any such error; a JSON error anywhere outranks both.
    export.write_text(_coco_text(annotations=[{"image_id": [1]}], categories=[], images=[1]), encoding="utf-8")
    with pytest.raises(SourceFormatError, match="'images' is not a list of objects"):
        read_export(export, "")
    export.write_text(_coco_text(annotations=[{"image_id": [1]}], categories=[], images=[1])[:-1], encoding="utf-8")
    with pytest.raises(SourceFormatError, match="neither a COCO export nor Darwin JSON"):
        read_export(export, "")


def test_ieee8023_bytes_that_are_not_utf8_outrank_an_earlier_csv_error(v7: V7Fixture, tmp_path: Path) -> None:
    metadata = tmp_path / "metadata.csv"
    metadata.write_bytes(b"patientid,filename\n1,\"" + b"x" * 200_000 + b"\"\n2,b.png\n3,\xff.png\n")
    with pytest.raises(SourceFormatError, match="is not UTF-8"):
        list(V7DarwinAdapter(v7.coco_json, related={Source.IEEE8023: metadata}).run())
    metadata.write_bytes(metadata.read_bytes().replace(b"\xff", b"c"))
    with pytest.raises(SourceFormatError, match="line 2: field larger than field limit"):
        list(V7DarwinAdapter(v7.coco_json, related={Source.IEEE8023: metadata}).run())


# --- end to end ------------------------------------------------------------------------------------------------


def test_build_with_ieee8023_loads_the_v7_config(v7: V7Fixture, tmp_path: Path) -> None:
    out = tmp_path / "build"
    specs = [
        SourceSpec(Source.IEEE8023, v7.ieee8023),
        SourceSpec(Source.V7_DARWIN, v7.coco_zip, images=v7.images_dir),
    ]
    build(specs, BuildOptions(out=out, progress=False))
    rows = concatenate_datasets(list(load_dataset(str(out.resolve()), "v7_darwin").values()))
    assert rows.num_rows == v7.expected_records_with_images
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))["sources"]["v7_darwin"]
    assert report["records"] == v7.expected_records_with_images
    row = next(r for r in rows if r["record_id"] == "v7_darwin:syn-100-0.jpg")
    assert row["image"].size == (row["width"], row["height"])
    assert row["links"] == [
        {"record_id": "ieee8023:syn-100-0.jpg", "patient_id": "ieee8023:100", "relation": "same_image"}
    ]
    lungs = [m for m in row["masks"] if m["label"] == "lung"]
    assert len(lungs) == 2 and all(m["annotation_license_id"] == "CC-BY-4.0" for m in lungs)
    assert all(m["size"] == [row["height"], row["width"]] for m in row["masks"])


def test_inspect_cli_reconciles_with_linkage(v7: V7Fixture) -> None:
    result = CliRunner().invoke(
        app, ["inspect", "v7_darwin", str(v7.darwin1_zip), "--ieee8023", str(v7.ieee8023), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["input_items"] == v7.images and summary["records"] == v7.expected_records


# --- the real files --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_coco(shared_data: Path) -> Path:
    return shared_data / "v7" / "covid-only-coco.zip"


@pytest.mark.realdata
def test_real_export_accounts_for_517_images_and_1011_annotations(real_coco: Path, shared_data: Path) -> None:
    adapter = V7DarwinAdapter(real_coco, related={Source.IEEE8023: shared_data / "ieee8023" / "metadata.csv"})
    records = [e.record for e in adapter.run()]
    report = adapter.report
    assert report.input_items == 517 and report.reconciles()
    assert report.records == len(records) == 458
    assert dict(report.excluded) == {"CT slice: not a chest X-ray": 59}
    assert dict(report.quarantined) == {} and report.unmapped == {}
    notes = report.notes["annotations"]
    assert notes == {
        "input": 1011,
        "masks_in_records": {"ignore": 141, "lung": 868},
        "rejected_in_records": {},
        "repaired": 4,  # 2 swapped RLE sizes + 2 polygons reaching past the edge
        "on_images_without_record": 2,  # the two lung polygons of the coronal CT slice
    }
    assert sum(1 for r in records if not r.masks) == 24  # the laterals
    repaired = {r.record_id: r.provenance.repairs for r in records if any("RLE" in t for t in r.provenance.repairs)}
    assert sorted(repaired) == [
        "v7_darwin:16672_1_1.jpg",
        "v7_darwin:fff49165-b22d-4bb4-b9d1-d5d62c52436c.annot.original.png",
    ]
    assert "annotation 175: uncompressed RLE size [1200, 1125]" in repaired["v7_darwin:16672_1_1.jpg"][0]
    assert all(r.covid19.basis is Covid19Basis.ANNOTATION for r in records)


@pytest.mark.realdata
def test_real_masks_870_lung_141_ignore_areas_match_the_export(real_coco: Path) -> None:
    export = read_export(real_coco, "")
    made = [pair for image in export.images for pair in image_masks(image)[0]]
    failed = [pair for image in export.images for pair in image_masks(image)[1]]
    assert failed == [] and len(made) == 1011
    assert Counter(a.category for a, _ in made) == {"Lung": 870, "Ignore": 141}
    polygons = [(a, rle) for a, rle in made if a.rings is not None]
    assert len(polygons) == 1009
    relative = [abs(rle.area - a.stated_area) / a.stated_area for a, rle in polygons if a.stated_area]
    assert len(relative) == 1009 and max(relative) <= 0.10
    assert statistics.median(relative) <= 0.001


@pytest.mark.realdata
def test_real_swapped_rles_are_repaired_to_the_stated_boxes(real_coco: Path) -> None:
    export = read_export(real_coco, "")
    repaired = {
        a.annotation_id: (a, rle) for image in export.images for a, rle in image_masks(image)[0] if a.rle is not None
    }
    assert sorted(repaired) == ["175", "5327"]
    for annotation, rle in repaired.values():
        assert annotation.stated_area == 0 and annotation.stated_bbox is not None
        assert max(abs(x - y) for x, y in zip(rle.bbox, annotation.stated_bbox, strict=True)) <= 1.0
        assert rle.repairs and "was [width, height]" in rle.repairs[0]
    assert {k: v[1].area for k, v in repaired.items()} == {"175": 2478, "5327": 7963}


@pytest.mark.realdata
def test_real_darwin_samples_match_the_coco_masks(real_coco: Path, shared_data: Path) -> None:
    coco = {image.file_name: image for image in read_export(real_coco, "").images}
    samples = read_export(shared_data / "v7" / "darwin-json-sample", "")
    assert samples.shape == DARWIN_1 and len(samples.images) == 3
    for image in samples.images:
        theirs, ours = image_masks(coco[image.file_name])[0], image_masks(image)[0]
        assert len(theirs) == len(ours) == 2
        for (a, mine), (b, other) in zip(ours, theirs, strict=True):
            assert a.category == b.category and iou(mine, other) >= 0.99
        assert sorted(image.tags) == sorted(coco[image.file_name].tags)


@pytest.mark.realdata
def test_real_darwin_samples_as_darwin_2_via_darwin_py(real_coco: Path, shared_data: Path, tmp_path: Path) -> None:
    orjson = pytest.importorskip("orjson")
    darwin_utils = pytest.importorskip("darwin.utils.utils")
    from darwin.exporter.formats.darwin import build_image_annotation

    out = tmp_path / "pulled"
    out.mkdir()
    for path in sorted((shared_data / "v7" / "darwin-json-sample").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        annotation_file = darwin_utils._parse_darwin_image(path, data, None)
        (out / path.name).write_bytes(orjson.dumps(build_image_annotation(annotation_file, "v7-labs")))
    coco = {image.file_name: image for image in read_export(real_coco, "").images}
    pulled = read_export(out, "")
    assert pulled.shape == DARWIN_2
    for image in pulled.images:
        for (_, mine), (_, other) in zip(image_masks(image)[0], image_masks(coco[image.file_name])[0], strict=True):
            assert iou(mine, other) >= 0.99


@pytest.mark.realdata
def test_real_linkage_to_the_newest_metadata_509_of_517(real_coco: Path, shared_data: Path) -> None:
    adapter = V7DarwinAdapter(real_coco, related={Source.IEEE8023: shared_data / "ieee8023"})
    records = [e.record for e in adapter.run()]
    linkage = adapter.report.notes["linkage"]
    assert isinstance(linkage, dict) and linkage["images"] == 517 and linkage["matched"] == 509
    unmatched = linkage["unmatched"]
    assert isinstance(unmatched, dict)
    assert set(unmatched) == {
        "02b76460.jpg",
        "7c0d0e1d.jpg",
        "289cb15b.jpg",
        "730a0b8f.jpg",
        "f0864aff.jpg",
        "9eca9ade.jpg",
        "eb8e8a5b.jpg",
        "ciaa199.pdf-001-c.png",
    }
    assert all(
        isinstance(reason, str) and reason.startswith("not in ieee8023 metadata") for reason in unmatched.values()
    )
    disagreements = adapter.report.notes["disagreements"]
    assert isinstance(disagreements, dict)
    assert disagreements["view"] == 31 and disagreements["finding"] == 3
    assert disagreements["patientid"] == disagreements["sex"] == disagreements["age"] == 0
    linked = [r for r in records if r.links]
    assert all(r.links[0].record_id == "ieee8023:" + r.record_id.removeprefix("v7_darwin:") for r in linked)
    assert all(r.license.license_id != "CC-BY-4.0" or r.license.raw == "CC BY 4.0" for r in linked)
    unlinked = [r for r in records if not r.links]
    assert {r.license.license_id for r in unlinked} == {"LicenseRef-unknown"}


@pytest.mark.realdata
def test_real_images_are_embedded_when_present(real_coco: Path, shared_data: Path) -> None:
    adapter = V7DarwinAdapter(real_coco, images=shared_data / "ieee8023" / "images-sample")
    out = list(adapter.run())
    assert adapter.report.reconciles()
    # 27 of the 28 sample images are V7 images; one of them is a CT slice
    assert len(out) == 26 and all(e.image_bytes is not None for e in out)
    assert adapter.report.quarantined == {"image missing": 517 - 59 - 26}
    for e in out:
        assert e.record.image is not None
        assert all(m.size == (e.record.image.height, e.record.image.width) for m in e.record.masks)
