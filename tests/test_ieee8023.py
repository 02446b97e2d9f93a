"""ieee8023 adapter: synthetic fixtures (all three header generations) and the real metadata.csv."""

from __future__ import annotations

import csv
import io
import pickle
from collections import Counter
from pathlib import Path

import pytest
from badinputs import ieee_csv, ieee_row

from covid_cxr_unified.adapters import ieee8023
from covid_cxr_unified.adapters.ieee8023 import FINDINGS, LICENSES, VIEWS, Ieee8023Adapter
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
from covid_cxr_unified.harmonize.synthetic.ieee8023 import LICENSE_SPELLINGS, write_ieee8023
from covid_cxr_unified.schema.record import Record
from covid_cxr_unified.schema.vocab import Covid19Basis, Finding, LabelState, Sex, View


def run(adapter: Ieee8023Adapter) -> list[Record]:
    return [e.record for e in adapter.run()]


@pytest.mark.parametrize("generation", ["newest", "mid", "early"])
def test_synthetic_generations_reconcile(tmp_path: Path, generation: str) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=3, generation=generation)
    adapter = Ieee8023Adapter(fixture.root)
    records = run(adapter)
    report = adapter.report
    assert report.input_items == fixture.rows
    assert report.records == len(records) == fixture.expected_records
    assert dict(report.excluded) == fixture.expected_excluded
    assert dict(report.quarantined) == fixture.expected_quarantined
    assert report.reconciles()
    assert report.unmapped == {}
    expected_generation = {"newest": "2020-07+", "mid": "2020-04..06", "early": "2020-03"}[generation]
    assert adapter.generation.startswith(expected_generation)


def test_every_record_has_an_image_probe(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=1)
    emitted = list(Ieee8023Adapter(fixture.root).run())
    modes = Counter((e.record.image.format, e.record.image.mode) for e in emitted if e.record.image)
    assert {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA")} <= set(modes)
    for e in emitted:
        assert e.image_bytes is not None and e.record.image is not None
        assert e.record.image.width > 0 and len(e.record.image.sha256) == 64


def test_quirks_are_kept_not_invented(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    adapter = Ieee8023Adapter(fixture.root)
    by_file = {r.record_id.split(":", 1)[1]: r for r in run(adapter)}
    herpes = by_file["syn-herpes.JPG"]
    assert herpes.view.view is View.AP and herpes.view.raw == "AP Erect"
    assert Finding.HERPES in {f.finding for f in herpes.findings}
    assert herpes.findings[0].raw == "Pneumonia/Viral/Herpes "
    assert herpes.image is not None and herpes.image.format == "JPEG"
    spilled = by_file["syn-907-b.png"]
    assert "sex conflicts within patient" in spilled.provenance.flags
    assert "implausible temperature" in spilled.provenance.flags
    assert "notes spilled into the unnamed trailing column" in spilled.provenance.flags
    assert spilled.clinical.temperature_c == 95.0  # kept as published, flagged
    assert adapter.report.notes["sex_conflicts"] == {"907": ["F", "M"]}
    assert any(r.patient.patient_id.endswith("b") for r in by_file.values())  # '103b' stays a string


def test_label_states_are_not_collapsed(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    records = run(Ieee8023Adapter(fixture.root))
    states = Counter((r.findings[-1].raw, r.covid19.state, r.covid19.basis) for r in records)
    assert states[("Pneumonia", LabelState.NOT_MENTIONED, Covid19Basis.NONE)] > 0
    assert states[("No Finding", LabelState.NEGATIVE, Covid19Basis.PUBLICATION)] > 0
    covid = [r for r in records if r.covid19.state is LabelState.POSITIVE]
    pcr = Counter(e.state for r in covid for e in r.covid19.evidence if e.basis is Covid19Basis.PCR)
    assert pcr[LabelState.POSITIVE] > 0 and pcr[LabelState.UNCERTAIN] > 0
    for r in covid:
        confirmed = any(e.basis is Covid19Basis.PCR and e.state is LabelState.POSITIVE for e in r.covid19.evidence)
        assert r.covid19.basis is (Covid19Basis.PCR if confirmed else Covid19Basis.PUBLICATION)
    unknown_age = [r for r in records if r.raw["age"] == ""]
    assert unknown_age and all(r.patient.age_years is None for r in unknown_age)
    blank_survival = [r for r in records if r.raw["survival"] == ""]
    assert blank_survival and all(r.outcomes.survival is None for r in blank_survival)


def test_all_license_spellings_of_the_fixture_map(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    records = run(Ieee8023Adapter(fixture.root))
    seen = {r.license.raw: r.license for r in records}
    assert set(LICENSE_SPELLINGS) <= set(seen)
    assert seen[" "].license_id == seen[""].license_id == "LicenseRef-unknown"
    assert not any([seen[""].research, seen[""].commercial, seen[""].redistribution])
    assert seen["CC BY-NC-SA"].license_id == "LicenseRef-CC-BY-NC-SA-unversioned"
    assert seen["CC BY-NC-ND 4.0"].derivatives is False and seen["CC BY-NC-ND 4.0"].commercial is False


def test_metadata_only_reads_no_image(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    adapter = Ieee8023Adapter(fixture.root / "metadata.csv", metadata_only=True)
    emitted = list(adapter.run())
    assert all(e.image_bytes is None and e.record.image is None for e in emitted)
    assert adapter.report.quarantined == {}  # the missing image matters only when images are read
    assert adapter.report.reconciles()


def test_unknown_vocabulary_is_counted_not_guessed(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    path = fixture.root / "metadata.csv"
    text = path.read_text(encoding="utf-8").replace(",AP Supine,", ",AP Semi-erect,", 1)
    text = text.replace(",Tuberculosis,", ",Tuberculosis/Miliary,", 1)
    path.write_text(text, encoding="utf-8")
    adapter = Ieee8023Adapter(fixture.root, metadata_only=True)
    records = run(adapter)
    assert adapter.report.unmapped["view"] == {"AP Semi-erect": 1}
    assert adapter.report.unmapped["finding"] == {"Tuberculosis/Miliary": 1}
    semi = next(r for r in records if r.view.raw == "AP Semi-erect")
    assert semi.view.view is View.UNKNOWN
    miliary = next(r for r in records if r.raw["finding"] == "Tuberculosis/Miliary")
    assert miliary.findings == () and miliary.covid19.state is LabelState.NOT_MENTIONED


def test_impossible_age_is_unmapped_and_the_row_kept(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    path = fixture.root / "metadata.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    header = lines[0].rstrip("\n").split(",")
    first = next(csv.reader([lines[1]]))
    first[header.index("age")] = "250"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(first)
    path.write_text("".join([lines[0], buffer.getvalue(), *lines[2:]]), encoding="utf-8")
    adapter = Ieee8023Adapter(fixture.root, metadata_only=True)
    records = run(adapter)
    assert adapter.report.unmapped["age"] == {"250": 1}
    assert adapter.report.records == fixture.expected_records + 1  # the missing image is not read here
    row = next(r for r in records if r.raw["age"] == "250")
    assert row.patient.age_years is None


def test_malformed_row_and_duplicate_filename_are_quarantined(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    path = fixture.root / "metadata.csv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join([*lines, lines[1], "1,2,3\n"]), encoding="utf-8")
    adapter = Ieee8023Adapter(fixture.root, metadata_only=True)
    run(adapter)
    assert adapter.report.quarantined == {"duplicate filename": 1, "malformed row": 1}
    assert adapter.report.reconciles()


def test_missing_source_and_bad_header_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"no metadata\.csv"):
        list(Ieee8023Adapter(tmp_path / "nowhere").run())
    (tmp_path / "metadata.csv").write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(SourceFormatError, match="lacks column"):
        list(Ieee8023Adapter(tmp_path).run())
    (tmp_path / "metadata.csv").write_bytes(b"patientid,finding\n\xff\xfe\n")
    with pytest.raises(SourceFormatError, match="not UTF-8"):
        list(Ieee8023Adapter(tmp_path).run())


# --- discovery keeps its rows on disk -----------------------------------------------------------


def test_discovery_keeps_no_per_row_containers(tmp_path: Path) -> None:
    rows = 600  # a few blocks
    text = ieee_csv([ieee_row(patientid=str(i // 2), filename=f"{i}.png") for i in range(rows)])
    (tmp_path / "metadata.csv").write_text(text, encoding="utf-8")
    adapter = Ieee8023Adapter(tmp_path, metadata_only=True, workdir=tmp_path / "index")
    adapter.discover()
    sizes = {name: len(value) for name, value in vars(adapter).items() if isinstance(value, list | tuple | dict | set)}
    assert max(sizes.values()) <= len(adapter.header), sizes  # nothing per row or per patient
    assert list((tmp_path / "index").rglob("ieee8023.sqlite"))
    assert len(pickle.dumps(adapter)) < 10_000  # what each process of a pool receives
    assert sum(len(list(adapter.items_of(unit))) for unit in adapter.units()) == rows


def test_a_pickled_copy_runs_its_units_from_the_index(tmp_path: Path) -> None:
    fixture = write_ieee8023(tmp_path / "src", seed=0)
    reference = Ieee8023Adapter(fixture.root, metadata_only=True)
    expected = [r.model_dump_json() for r in run(reference)]
    adapter = Ieee8023Adapter(fixture.root, metadata_only=True, workdir=tmp_path / "index")
    adapter.discover()
    pickled: Ieee8023Adapter = pickle.loads(pickle.dumps(adapter))  # reads the index of `adapter`
    records = []
    for unit in pickled.units():
        worker = pickled.unit_worker()
        records += [e.record.model_dump_json() for e in worker.run_unit(unit)]
        pickled.absorb(worker.delta())
    assert records == expected
    assert pickled.report.summary() == reference.report.summary()


def test_duplicates_and_sex_conflicts_are_found_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ieee8023, "ROWS_PER_BLOCK", 2)
    rows = [
        ieee_row(patientid="1", sex="M", filename="a.png"),
        ieee_row(patientid="2", sex="F", filename="b.png"),
        ieee_row(patientid="1", sex="F", filename="c.png"),
        ieee_row(patientid="3", sex="M", filename="b.png"),
        ieee_row(patientid="4", sex="M", filename="a.png", modality="CT"),  # out of scope: no duplicate
    ]
    (tmp_path / "metadata.csv").write_text(ieee_csv(rows), encoding="utf-8")
    adapter = Ieee8023Adapter(tmp_path, metadata_only=True)
    records = {r.record_id: r for r in run(adapter)}
    assert adapter.report.quarantined == {"duplicate filename": 1}
    assert adapter.report.quarantined_items[0].key == "b.png"
    assert records["ieee8023:b.png"].patient.patient_id == "ieee8023:2"
    assert adapter.report.notes["sex_conflicts"] == {"1": ["F", "M"]}
    flagged = {r.record_id for r in records.values() if "sex conflicts within patient" in r.provenance.flags}
    assert flagged == {"ieee8023:a.png", "ieee8023:c.png"}


def test_a_byte_that_is_not_utf8_is_found_past_a_bom_a_csv_error_and_a_chunk(tmp_path: Path) -> None:
    path = tmp_path / "metadata.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ieee_csv([ieee_row()]).encode() + b"\xff\n")
    with pytest.raises(SourceFormatError, match="line 3 is not UTF-8"):  # the BOM is no line's byte
        Ieee8023Adapter(tmp_path).discover()
    huge_cell = ieee_csv([ieee_row(clinical_notes="x" * 200_000)]).encode()  # over csv's field limit
    path.write_bytes(huge_cell + b"\n\n\xff\n")
    with pytest.raises(SourceFormatError, match="line 5 is not UTF-8"):  # reported first, as before
        Ieee8023Adapter(tmp_path).discover()
    head = ieee_csv([ieee_row()]).encode()
    padding = b"x" * ((1 << 20) - len(head) - 1)  # "é" straddles the first 1 MiB chunk of the check
    path.write_bytes(head + padding + "é\n".encode() + b"\xc3\n")
    with pytest.raises(SourceFormatError, match="line 4 is not UTF-8"):
        Ieee8023Adapter(tmp_path).discover()


# --- the real newest metadata.csv --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_metadata(shared_data: Path) -> Path:
    return shared_data / "ieee8023" / "metadata.csv"


def _real_column(path: Path, column: str) -> Counter[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return Counter(row[column] for row in csv.DictReader(handle))


@pytest.mark.realdata
def test_real_metadata_reconciles_all_950_rows(real_metadata: Path) -> None:
    adapter = Ieee8023Adapter(real_metadata, metadata_only=True)
    records = run(adapter)
    report = adapter.report
    assert report.input_items == 950
    assert report.reconciles() and report.quarantined == {}
    assert report.excluded == {
        "CT slice: not a chest X-ray": 63,
        "CT volume: not a chest X-ray": 21,
        "finding 'todo': not part of the dataset (ieee8023 #149)": 83,
        "finding 'Unknown': not part of the dataset (ieee8023 #149)": 1,
    }
    assert report.records == len(records) == 950 - 63 - 21 - 83 - 1
    assert report.unmapped == {}
    assert adapter.generation.startswith("2020-07+")


@pytest.mark.realdata
def test_real_vocabularies_are_covered_by_the_tables(real_metadata: Path) -> None:
    assert set(_real_column(real_metadata, "license")) == set(LICENSES)
    assert len(LICENSES) == 12
    findings = {f.strip() for f in _real_column(real_metadata, "finding")} - {"todo", "Unknown"}
    assert findings <= set(FINDINGS)
    xray_views = {"PA", "AP", "AP Supine", "AP Erect", "L"}
    assert set(_real_column(real_metadata, "view")) == xray_views | {"Axial", "Coronal"}
    assert xray_views == set(VIEWS)
    assert set(_real_column(real_metadata, "RT_PCR_positive")) == {"Y", "Unclear", ""}


@pytest.mark.realdata
def test_real_ids_sexes_and_licenses(real_metadata: Path) -> None:
    adapter = Ieee8023Adapter(real_metadata, metadata_only=True)
    records = run(adapter)
    pids = {r.patient.patient_id for r in records}
    assert "ieee8023:324b" in pids and "ieee8023:311a" in pids
    assert "380" in adapter.report.notes["sex_conflicts"]  # one id, two people
    flagged = [r for r in records if "sex conflicts within patient" in r.provenance.flags]
    assert {r.patient.sex for r in flagged} == {Sex.MALE, Sex.FEMALE}  # kept, not resolved
    licenses = Counter(r.license.license_id for r in records)
    assert licenses["LicenseRef-unknown"] > 0 and "CC-BY-3.0" in licenses
    assert all(r.covid19.state is not LabelState.NOT_ANNOTATED for r in records)
    assert sum(r.covid19.state is LabelState.POSITIVE for r in records) > 400


@pytest.mark.realdata
def test_real_images_sample_is_embedded_as_published(shared_data: Path, real_metadata: Path) -> None:
    images = shared_data / "ieee8023" / "images-sample"
    adapter = Ieee8023Adapter(real_metadata, images=images)
    emitted = list(adapter.run())
    on_disk = {p.name for p in images.iterdir()}
    excluded = {n.key for n in adapter.report.excluded_items}
    assert {e.record.image.path for e in emitted if e.record.image} == on_disk - excluded
    assert len(emitted) == len(on_disk - excluded) == 27  # one of the 28 sample images is a CT slice
    for e in emitted:
        assert e.image_bytes == (images / e.record.record_id.split(":", 1)[1]).read_bytes()
    report = adapter.report
    assert report.quarantined == {"image missing": report.input_items - report.records - sum(report.excluded.values())}
    assert report.reconciles()
    modes = {(e.record.image.format, e.record.image.mode) for e in emitted if e.record.image}
    assert {("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "RGBA")} <= modes
    assert any(e.record.record_id.endswith(".JPG") for e in emitted)
