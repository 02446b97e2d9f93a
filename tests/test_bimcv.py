"""BIMCV COVID-19+ adapter on the seeded synthetic release: both layouts, tree and archives, each defect."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from datasets import concatenate_datasets, load_dataset
from PIL import Image
from pycocotools import mask as coco_mask
from typer.testing import CliRunner

from covid_cxr_unified.adapters import bimcv
from covid_cxr_unified.adapters.bimcv import BimcvAdapter, _Image
from covid_cxr_unified.adapters.bimcv_vocab import LABELS
from covid_cxr_unified.adapters.disk_index import DiskTable
from covid_cxr_unified.adapters.tar_reader import ChecksumMismatchError, UnsafeMemberError
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.display import display_array
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError
from covid_cxr_unified.harmonize.synthetic.bimcv import (
    SERIES,
    Series,
    _sidecar,
    release_files,
    write_archives,
    write_bimcv,
)
from covid_cxr_unified.schema.record import Record
from covid_cxr_unified.schema.vocab import Covid19Basis, Finding, LabelState, Modality, Sex, Source, View, ViewBasis

VARIANTS = [("iter12", False), ("iter12", True), ("iter1", False), ("iter1", True)]
S44_E6138 = "bimcv:sub-S03044/ses-E06138/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr"
S44_E6790 = "bimcv:sub-S03044/ses-E06790/sub-S03044_ses-E06790_run-1_bp-chest_vp-pa_dx"
S45_E6139 = "bimcv:sub-S03045/ses-E06139/sub-S03045_ses-E06139_run-1_bp-chest_vp-ap_dx"
S45_ACQ1 = "bimcv:sub-S03045/ses-E06910/sub-S03045_ses-E06910_acq-1_run-1_bp-chest_vp-ll_dx"
S45_ACQ2 = "bimcv:sub-S03045/ses-E06910/sub-S03045_ses-E06910_acq-2_run-1_bp-chest_vp-ll_dx"
S47 = "bimcv:sub-S03047/ses-E06214/sub-S03047_ses-E06214_run-1_bp-chest_cr"
S50_RUN4 = "bimcv:sub-S03050/ses-E06300/sub-S03050_ses-E06300_run-4_bp-chest_vp-pa_dx"
S50_E6301 = "bimcv:sub-S03050/ses-E06301/sub-S03050_ses-E06301_run-1_bp-chest_vp-ap_dx"


def _run(root: Path, **kwargs: object) -> tuple[BimcvAdapter, dict[str, Record], dict[str, bytes | None]]:
    adapter = BimcvAdapter(root, **kwargs)
    emitted = list(adapter.run())
    return (
        adapter,
        {e.record.record_id: e.record for e in emitted},
        {e.record.record_id: e.image_bytes for e in emitted},
    )


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    base = tmp_path_factory.mktemp("bimcv")
    return {
        (layout, archives): write_bimcv(base / f"{layout}-{archives}", seed=3, layout=layout, archives=archives).root
        for layout, archives in VARIANTS
    }


@pytest.fixture(scope="module")
def tree(releases: dict[tuple[str, bool], Path]) -> tuple[BimcvAdapter, dict[str, Record], dict[str, bytes | None]]:
    return _run(releases[("iter12", False)])


@pytest.fixture(scope="module")
def iter1(releases: dict[tuple[str, bool], Path]) -> tuple[BimcvAdapter, dict[str, Record], dict[str, bytes | None]]:
    return _run(releases[("iter1", False)])


# --- accounting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "archives"), VARIANTS)
def test_every_image_file_is_accounted(releases: dict[tuple[str, bool], Path], layout: str, archives: bool) -> None:
    adapter, records, _ = _run(releases[(layout, archives)])
    report = adapter.report
    assert report.reconciles()
    assert report.notes["image_files"] == {"nii.gz": 1, "png": 12}
    assert report.notes["read_from"] == ("archives" if archives else "folder")
    assert len(records) == report.records == 9
    assert dict(report.excluded) == {"CT volume: not a chest X-ray": 1}
    expected = {"image empty (0 bytes)": 1, "image not grayscale (RGB)": 1, "image unreadable": 1}
    if layout == "iter1":
        expected["ROI unreadable"] = 1
    assert dict(report.quarantined) == expected
    assert report.input_items == 13 + (layout == "iter1")


def test_participants_label_rows_and_tests_are_accounted(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    notes = tree[0].report.notes
    assert notes["participants"] == {"rows": 6, "junk row (not sub-*)": 1, "no image": 1, "record": 4}
    assert notes["label_rows"] == {
        "rows": 9,
        "record": 7,
        "no image": 1,  # ses-E07712: a report without images
        "duplicate row of a session (first kept)": 1,
    }
    assert notes["test_rows"] == {"rows": 9, "record": 8, "no image": 1}  # sub-S03125 has tests, no images
    assert notes["partitions"] == {"rows": 14, "listed_without_file": 1, "file_not_listed": 0}
    assert notes["subjects_not_in_participants"] == []


def test_inspect_json_reconciles(releases: dict[tuple[str, bool], Path]) -> None:
    result = CliRunner().invoke(app, ["inspect", "bimcv", str(releases[("iter1", True)]), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    accounted = summary["records"] + sum(summary["excluded"].values()) + sum(summary["quarantined"].values())
    assert summary["input_items"] == accounted == 14
    assert summary["unmapped"] == {"report label": {"central venous ca": 1}}


def test_metadata_only_reads_no_pixels_and_still_reconciles(releases: dict[tuple[str, bool], Path]) -> None:
    adapter, records, images = _run(releases[("iter12", True)], metadata_only=True)
    assert adapter.report.reconciles()
    assert len(records) == 12  # 0-byte, RGB and truncated PNGs are only caught when pixels are read
    assert all(r.image is None for r in records.values()) and set(images.values()) == {None}


# --- tables --------------------------------------------------------------------------------------


def test_participants_two_ages_none_gender_and_junk_row(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    records = tree[1]
    s45 = records[S45_E6139]
    assert s45.patient.age_years == 66.0 and s45.patient.sex is Sex.MALE
    assert any("minimum of [66, 67]" in r for r in s45.provenance.repairs)
    s50 = records[S50_RUN4]  # gender "None", age [] and no usable sidecar: unknown, never 0 or False
    assert s50.patient.sex is None and s50.patient.age_years is None
    assert s50.patient.patient_id == "bimcv:sub-S03050"
    assert not any(r.patient.patient_id.endswith("derivatives") for r in records.values())


def test_sex_and_age_from_dicom_when_participants_says_none(
    tree: tuple[BimcvAdapter, dict[str, Record], object],
) -> None:
    record = tree[1][S50_E6301.replace("run-1", "run-2")]  # gender "None", age []: DICOM says M, 071Y
    assert record.patient.sex is Sex.MALE and record.patient.age_years == 71.0


def test_study_dates_from_sessions_tsv_else_dicom(
    tree: tuple[BimcvAdapter, dict[str, Record], object], iter1: tuple[BimcvAdapter, dict[str, Record], object]
) -> None:
    import datetime as dt

    assert tree[1][S44_E6138].study.study_date == dt.date(2020, 3, 18)
    assert tree[1][S44_E6138].study.study_id == "ses-E06138"
    # empty study_date in sessions.tsv and an unparsable sidecar: the session's other image dates it
    assert tree[1][S50_E6301].study.study_date == dt.date(2020, 4, 2)
    assert iter1[1][S44_E6790].study.study_date == dt.date(2020, 3, 25)  # no sessions.tsv: DICOM 00080020
    assert iter1[1][S44_E6790].study.date_raw == "20200325"


def test_labels_leading_spaces_empty_items_and_cuis(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    first = tree[1][S44_E6138]
    by_finding = {f.finding: f for f in first.findings}
    assert set(by_finding) == {Finding.COVID19, Finding.PNEUMONIA, Finding.INFILTRATES}
    assert by_finding[Finding.PNEUMONIA].raw == " pneumonia" and by_finding[Finding.PNEUMONIA].cui == "C0032285"
    assert by_finding[Finding.COVID19].cui == "C5203670"
    acq1 = {f.finding for f in tree[1][S45_ACQ1].findings}  # ['', 'ground glass pattern', ' COVID 19']
    assert acq1 == {Finding.GROUND_GLASS_PATTERN, Finding.COVID19}
    normal = tree[1][S45_E6139].findings
    assert [(f.finding, f.state, f.cui) for f in normal] == [(Finding.NO_FINDING, LabelState.POSITIVE, "C0205307")]


def test_unchanged_is_resolved_from_the_previous_study(
    tree: tuple[BimcvAdapter, dict[str, Record], object], iter1: tuple[BimcvAdapter, dict[str, Record], object]
) -> None:
    for records in (tree[1], iter1[1]):
        record = records[S44_E6790]  # ['unchanged', ' ground glass pattern'], previous study ses-E06138
        findings = {f.finding: f for f in record.findings}
        assert set(findings) == {Finding.GROUND_GLASS_PATTERN, Finding.COVID19, Finding.PNEUMONIA, Finding.INFILTRATES}
        assert findings[Finding.PNEUMONIA].raw == "pneumonia (unchanged, from ses-E06138)"
        assert "'unchanged' in ses-E06790 resolved from the previous study ses-E06138" in record.provenance.repairs
        assert "report marker: unchanged" in record.provenance.flags


def test_duplicate_report_rows_keep_the_first(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    findings = {f.finding for f in tree[1][S44_E6790].findings}
    assert Finding.NO_FINDING not in findings  # the second row of ses-E06790 says 'normal'


def test_truncated_labels_cell_keeps_whole_items_and_counts_the_fragment(
    tree: tuple[BimcvAdapter, dict[str, Record], object],
) -> None:
    record = tree[1][S50_RUN4]
    assert {f.finding for f in record.findings} == {
        Finding.AORTIC_ELONGATION,
        Finding.CARDIOMEGALY,
        Finding.TRACHEOSTOMY_TUBE,
    }
    assert "labels cell truncated" in record.provenance.flags
    assert dict(tree[0].report.unmapped["report label"]) == {"central venous ca": 1}
    assert isinstance(record.raw["labels"], dict) and "central venous ca" in str(record.raw["labels"]["Labels"])


def test_unlabelled_report_gives_no_findings_and_markers_are_flags(
    tree: tuple[BimcvAdapter, dict[str, Record], object],
) -> None:
    nan_row = tree[1][S47]
    assert nan_row.findings == () and "report not labelled" in nan_row.provenance.flags
    assert all(e.basis is not Covid19Basis.REPORT for e in nan_row.covid19.evidence)
    marked = tree[1][S50_E6301]  # ['COVID 19 uncertain', ' suboptimal study', ' exclude', ' consolidation']
    assert {(f.finding, f.state) for f in marked.findings} == {
        (Finding.COVID19, LabelState.UNCERTAIN),
        (Finding.CONSOLIDATION, LabelState.POSITIVE),
    }
    assert {"report marker: exclude", "report marker: suboptimal study"} <= set(marked.provenance.flags)


def test_iteration1_tab_separated_cells_parse_like_iterations_1_2(
    tree: tuple[BimcvAdapter, dict[str, Record], object], iter1: tuple[BimcvAdapter, dict[str, Record], object]
) -> None:
    assert set(tree[1]) == set(iter1[1])
    for record_id, record in tree[1].items():
        other = iter1[1][record_id]
        assert [(f.finding, f.state, f.cui) for f in record.findings] == [
            (f.finding, f.state, f.cui) for f in other.findings
        ]
        assert record.covid19.evidence == other.covid19.evidence  # Spanish test columns read the same
    assert iter1[1][S44_E6138].release.startswith("BIMCV-COVID19+ iteration 1;")
    assert tree[1][S44_E6138].release.startswith("BIMCV-COVID19+ iterations 1+2;")


def test_covid19_from_tests_and_report_both_kept(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    import datetime as dt

    first = tree[1][S44_E6138]
    assert (first.covid19.state, first.covid19.basis) == (LabelState.POSITIVE, Covid19Basis.PCR)
    evidence = {(e.basis, e.state, e.date) for e in first.covid19.evidence}
    assert (Covid19Basis.PCR, LabelState.POSITIVE, dt.date(2020, 3, 17)) in evidence
    assert (Covid19Basis.PCR, LabelState.NEGATIVE, dt.date(2020, 3, 28)) in evidence
    assert (Covid19Basis.REPORT, LabelState.POSITIVE, None) in evidence
    assert first.offset_days == 1 and first.offset_reference is not None
    assert first.offset_reference.value == "first_positive_test"
    antigen = tree[1][S47]  # PCR INDETERMINADO, ACT POSITIVO two days later, study before both
    assert (antigen.covid19.state, antigen.covid19.basis) == (LabelState.POSITIVE, Covid19Basis.ANTIGEN)
    assert (Covid19Basis.PCR, LabelState.UNCERTAIN) in {(e.basis, e.state) for e in antigen.covid19.evidence}
    assert antigen.offset_days == -1
    serology = tree[1][S50_RUN4]  # PCR NEGATIVO, IGM POSITIVO
    assert (serology.covid19.state, serology.covid19.basis) == (LabelState.POSITIVE, Covid19Basis.SEROLOGY)
    assert tree[1][S50_E6301].offset_days == 14  # IGM POSITIVO 19.03.2020 -> study 02.04.2020


# --- images and sidecars ---------------------------------------------------------------------------


def test_16bit_pixels_are_embedded_unchanged(
    tree: tuple[BimcvAdapter, dict[str, Record], dict[str, bytes | None]], releases: dict[tuple[str, bool], Path]
) -> None:
    record, data = tree[1][S44_E6138], tree[2][S44_E6138]
    path = releases[("iter12", False)] / "covid19_posi" / (record.image.path if record.image else "")
    assert data == path.read_bytes()
    assert record.image is not None and record.image.mode == "I;16"
    assert record.image.sha256 == hashlib.sha256(data).hexdigest()
    assert record.image.path == "sub-S03044/ses-E06138/mod-rx/sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr.png"
    assert record.image.bits_stored == 12 and tree[1][S44_E6790].image.bits_stored == 14  # type: ignore[union-attr]
    assert record.modality is Modality.CR and tree[1][S44_E6790].modality is Modality.DX


def test_monochrome1_is_flagged_and_display_helper_inverts(
    tree: tuple[BimcvAdapter, dict[str, Record], dict[str, bytes | None]],
) -> None:
    record, data = tree[1][S44_E6138], tree[2][S44_E6138]
    assert record.image is not None and record.image.photometric_interpretation == "MONOCHROME1"
    assert "MONOCHROME1: invert for display" in record.provenance.flags
    assert data is not None
    stored = np.array(Image.open(io.BytesIO(data)))
    shown = display_array(data, photometric_interpretation="MONOCHROME1", bits_stored=12)
    assert shown.dtype == np.uint8 and shown.shape == stored.shape
    # inverted: the brightest stored pixel (air in MONOCHROME1) is among the darkest displayed
    assert shown.flat[int(stored.argmax())] <= np.percentile(shown, 5)
    assert tree[1][S44_E6790].image.photometric_interpretation == "MONOCHROME2"  # type: ignore[union-attr]


def test_pixel_spacing_prefers_0028_0030(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    assert tree[1][S44_E6138].image.pixel_spacing_mm == (0.143, 0.143)  # type: ignore[union-attr]
    assert tree[1][S44_E6790].image.pixel_spacing_mm == (0.194556, 0.194556)  # type: ignore[union-attr]


def test_bad_images_are_quarantined_with_reasons(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    notes = {n.key: n.reason for n in tree[0].report.quarantined_items}
    assert notes == {
        "sub-S03050/ses-E06300/mod-rx/sub-S03050_ses-E06300_run-1_bp-chest_vp-ap_dx.png": "image empty (0 bytes)",
        "sub-S03050/ses-E06300/mod-rx/sub-S03050_ses-E06300_run-2_bp-chest_vp-ap_dx.png": "image not grayscale (RGB)",
        "sub-S03050/ses-E06300/mod-rx/sub-S03050_ses-E06300_run-3_bp-chest_vp-ap_dx.png": "image unreadable",
    }
    assert [n.key for n in tree[0].report.excluded_items] == [
        "sub-S03047/ses-E06214/mod-rx/sub-S03047_ses-E06214_run-2_bp-chest_ct.nii.gz"
    ]


def test_missing_and_unparsable_sidecars_are_flagged(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    assert "sidecar missing" in tree[1][S50_RUN4].provenance.flags
    assert "sidecar unreadable" in tree[1][S50_E6301].provenance.flags
    assert tree[1][S50_RUN4].raw["dicom"] is None
    dicom = tree[1][S45_ACQ2].raw["dicom"]
    assert isinstance(dicom, dict) and dicom["00200010"] == {"vr": "SH"}  # kept as published


def test_view_priority_and_disagreements(tree: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    views = {rid: (r.view.view, r.view.basis, r.view.disagreements) for rid, r in tree[1].items()}
    assert views[S44_E6138] == (View.AP, ViewBasis.DICOM_VIEW_POSITION, ())
    assert views[S44_E6790] == (View.PA, ViewBasis.DICOM_VIEW_CODE_SEQUENCE, ())
    assert views[S45_ACQ1] == (View.PA, ViewBasis.DICOM_VIEW_POSITION, ("filename=vp-ll",))  # the vp- token lies
    assert views[S45_ACQ2] == (View.LATERAL, ViewBasis.DICOM_VIEW_POSITION, ())
    assert views[S47] == (View.PA, ViewBasis.DICOM_SERIES_DESCRIPTION, ())  # no vp-, no View Position
    assert views[S50_RUN4] == (View.PA, ViewBasis.FILENAME, ())
    assert "view: file name vp- token is wrong" in tree[1][S45_ACQ1].provenance.flags
    assert tree[1][S45_ACQ2].view.raw == "LL"
    assert set(tree[0].report.unmapped) == {"report label"}  # every view value met is in a table


# --- ROIs ----------------------------------------------------------------------------------------


def test_roi_polygons_become_finding_masks(iter1: tuple[BimcvAdapter, dict[str, Record], object]) -> None:
    record = iter1[1][S44_E6138]
    assert [m.finding for m in record.masks] == [Finding.GROUND_GLASS_PATTERN, Finding.CONSOLIDATION]
    first = record.masks[0]
    assert first.size == (48, 64) and first.annotation_license.license_id == "LicenseRef-BIMCV-COVID19-RUA"
    decoded = coco_mask.decode({"size": list(first.size), "counts": first.counts.encode()})
    assert decoded.shape == (48, 64) and int(decoded.sum()) == first.area > 300
    assert decoded[20, 16] == 1 and decoded[2, 2] == 0  # inside / outside the drawn quadrilateral
    assert iter1[0].report.notes["roi_files"] == {"files": 2, "attached to a record": 1, "unreadable (quarantined)": 1}
    quarantined = [n for n in iter1[0].report.quarantined_items if n.reason == "ROI unreadable"]
    assert len(quarantined) == 1 and "\\" in quarantined[0].key  # the release's back-slashed path


# --- archives ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["iter12", "iter1"])
def test_tree_and_archives_give_identical_records(releases: dict[tuple[str, bool], Path], layout: str) -> None:
    _, from_tree, tree_bytes = _run(releases[(layout, False)])
    _, from_archives, archive_bytes = _run(releases[(layout, True)])
    assert set(from_tree) == set(from_archives)
    for record_id, record in from_tree.items():
        other = from_archives[record_id]
        assert (
            other.image is not None
            and other.image.archive is not None
            and other.image.archive.endswith((".tar.gz", ".tgz"))
        )
        assert record.image is not None and record.image.archive is None
        unify = {"image": other.image.model_copy(update={"archive": None})}
        assert record == other.model_copy(update=unify)
        assert tree_bytes[record_id] == archive_bytes[record_id]


def _rewrite_sums(folder: Path) -> None:
    names = sorted(
        p.name for p in folder.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".txt")) and "sha1" not in p.name
    )
    lines = [f"{hashlib.sha1((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in names]
    (folder / "sha1sums.txt").write_text("".join(lines), encoding="utf-8")


def test_tampered_archive_is_refused(tmp_path: Path) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    part = root / "covid19_posi_subjects_partab.tar.gz"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"covid19_posi_subjects_partab\.tar\.gz"):
        BimcvAdapter(root).discover()


def _add_member(part: Path, info: tarfile.TarInfo, payload: bytes = b"") -> None:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(part.read_bytes()))) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, content in members:
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
        info.size = len(payload) if info.isfile() else 0
        tar.addfile(info, io.BytesIO(payload) if info.isfile() else None)
    part.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("../x", tarfile.REGTYPE, "climbs out"),
        ("covid19_posi/../../x", tarfile.REGTYPE, "climbs out"),
        ("/etc/x", tarfile.REGTYPE, "absolute"),
        ("covid19_posi/sub-S03047/link", tarfile.SYMTYPE, "link"),
        ("covid19_posi/sub-S03047/hard", tarfile.LNKTYPE, "link"),
        ("covid19_posi/sub-S03047/dev", tarfile.CHRTYPE, "device"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path: Path, name: str, kind: bytes, message: str) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "../../../etc/passwd"
    _add_member(root / "covid19_posi_subjects_partab.tar.gz", info, b"x")
    _rewrite_sums(root)  # a consistent checksum does not make a member trustworthy
    with pytest.raises(UnsafeMemberError, match=message):
        BimcvAdapter(root).discover()
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("num_proc", [1, 3])
def test_archives_scanned_at_once_give_the_same_index_records_and_notes(
    releases: dict[tuple[str, bool], Path], num_proc: int
) -> None:
    root = releases[("iter12", True)]
    one, records, images = _run(root)
    many, many_records, many_images = _run(root, num_proc=num_proc)
    tables = [name for name, value in vars(one.ix).items() if isinstance(value, DiskTable)]
    assert len(tables) > 20 and len(list(one.ix.found)) > 9
    for name in tables:
        assert list(getattr(many.ix, name).items()) == list(getattr(one.ix, name).items()), name
    assert many_records == records and many_images == images
    assert many.report.notes["archives"] == one.report.notes["archives"]
    assert not list(many.ix.index.path.parent.glob("archive*.sqlite"))  # each scan's file is merged, then removed


@pytest.mark.parametrize("num_proc", [1, 3])
def test_a_member_in_two_archives_names_both(tmp_path: Path, num_proc: int) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    info = tarfile.TarInfo("covid19_posi/participants.tsv")
    info.type = tarfile.REGTYPE
    _add_member(root / "covid19_posi_subjects_partab.tar.gz", info, b"participant\tage\tgender\n")
    _rewrite_sums(root)
    both = r"covid19_posi/participants\.tsv is in both covid19_posi_subjects\.tar\.gz and covid19_posi_subjects_partab"
    with pytest.raises(SourceFormatError, match=both):
        BimcvAdapter(root, num_proc=num_proc).discover()


@pytest.mark.parametrize("num_proc", [1, 3])
def test_of_two_broken_archives_the_first_in_order_is_reported(tmp_path: Path, num_proc: int) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    for name in ("covid19_posi_subjects_partaa.tar.gz", "covid19_posi_subjects_partab.tar.gz"):
        data = bytearray((root / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (root / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match=r"^covid19_posi_subjects_partaa\.tar\.gz: sha1"):
        BimcvAdapter(root, num_proc=num_proc).discover()


def test_archive_scanning_shows_progress(
    releases: dict[tuple[str, bool], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    BimcvAdapter(releases[("iter1", True)], progress=True).discover()
    done = r"bimcv: verify and index archives: 100%\|.*\| (?P<n>[\d.]+k)/(?P=n) \[.*[kMG]?B/s\]"
    assert re.search(done, capsys.readouterr().err)
    BimcvAdapter(releases[("iter1", True)]).discover()
    assert "verify and index" not in capsys.readouterr().err


def test_archive_missing_from_sha1sums_and_missing_sha1sums(tmp_path: Path) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    sums = (root / "sha1sums.txt").read_text(encoding="utf-8").splitlines()
    (root / "sha1sums.txt").write_text("\n".join(s for s in sums if "partaa" not in s) + "\n", encoding="utf-8")
    with pytest.raises(SourceFormatError, match=r"covid19_posi_subjects_partaa.tar.gz is not listed"):
        BimcvAdapter(root).discover()
    (root / "sha1sums.txt").unlink()
    with pytest.raises(SourceNotFoundError, match=r"sha1sums\.txt is missing"):
        BimcvAdapter(root).discover()


# --- discovery -----------------------------------------------------------------------------------


def test_missing_and_empty_folders_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="does not exist"):
        BimcvAdapter(tmp_path / "nope").discover()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match=r"no participants.tsv and no .tar.gz parts"):
        BimcvAdapter(tmp_path / "empty").discover()


def test_two_releases_in_one_folder_are_refused(tmp_path: Path) -> None:
    write_bimcv(tmp_path / "both" / "a", layout="iter1")
    write_bimcv(tmp_path / "both" / "b", layout="iter12")
    with pytest.raises(SourceFormatError, match="2 releases"):
        BimcvAdapter(tmp_path / "both").discover()


def test_release_found_at_any_depth(tmp_path: Path) -> None:
    write_bimcv(tmp_path / "downloads" / "nested" / "BIMCV-COVID19-cIter_1_2")
    _, records, _ = _run(tmp_path / "downloads")
    assert len(records) == 9
    _, direct, _ = _run(tmp_path / "downloads" / "nested" / "BIMCV-COVID19-cIter_1_2" / "covid19_posi")
    assert direct == records  # the MIDS root itself, or any folder above it


def test_unknown_release_names_what_it_found(tmp_path: Path) -> None:
    root = write_bimcv(tmp_path / "rel").root
    labels = root / "covid19_posi" / "derivatives" / "labels"
    (labels / "labels_covid_posi.tsv").rename(labels / "Labels_covid_123.tsv")
    with pytest.raises(SourceFormatError, match=r"found Labels_covid_123\.tsv"):
        BimcvAdapter(root).discover()


# --- generator -----------------------------------------------------------------------------------


def test_generator_is_seeded_and_deterministic(tmp_path: Path) -> None:
    assert release_files("iter12", seed=1) == release_files("iter12", seed=1)
    a, b = release_files("iter12", seed=1), release_files("iter12", seed=2)
    pngs = [p for p in a if p.endswith(".png") and a[p]]
    assert any(a[p] != b[p] for p in pngs)
    assert all(a[p] == b[p] for p in a if p.endswith(".tsv"))
    one = write_bimcv(tmp_path / "x", seed=1, archives=True).root
    two = write_bimcv(tmp_path / "y", seed=1, archives=True).root
    assert (one / "sha1sums.txt").read_bytes() == (two / "sha1sums.txt").read_bytes()


def test_generator_writes_the_real_defects() -> None:
    files = release_files("iter12")
    assert files["covid19_posi/derivatives/partitions.tsv"].startswith(b"subject session filepath\n")
    assert b"derivatives\t[]\t[]\t[]\tNone" in files["covid19_posi/participants.tsv"]
    assert files["covid19_posi/derivatives/EHR/sil_reg_covid_posi.tsv"].splitlines()[1].endswith(b"\t")
    assert b"[,C3544344,C5203670]" in files["covid19_posi/derivatives/labels/labels_covid_posi.tsv"]
    iteration1 = release_files("iter1")
    head = "bimcv_covid19_posi_head_iter1/derivatives"
    assert iteration1[f"{head}/EHR/sil_reg_covid.tsv"].startswith(b"Subject\tfecha\tprueba\tresultado\tparticipant")
    assert b"\"['COVID 19'\t ' pneumonia'" in iteration1[f"{head}/labels/labels_covid19_posi.tsv"]
    pngs = [p for p in files if p.endswith(".png")]
    assert len(pngs) == len(SERIES)
    with Image.open(io.BytesIO(files[next(p for p in pngs if "E06790" in p)])) as img:
        assert img.mode == "I;16" and int(np.array(img).max()) < 2**14


def test_every_report_label_maps_to_a_distinct_finding() -> None:
    assert len(set(LABELS.values())) == len(LABELS)
    assert LABELS["normal"] is Finding.NO_FINDING and LABELS["pneumonia"] is Finding.PNEUMONIA
    assert "unchanged" not in LABELS and "exclude" not in LABELS and "COVID 19" not in LABELS


# --- end to end ----------------------------------------------------------------------------------


def test_build_and_load_bimcv_config_bit_exact(releases: dict[tuple[str, bool], Path], tmp_path: Path) -> None:
    out = tmp_path / "build"
    build([SourceSpec(Source.BIMCV, releases[("iter12", True)])], BuildOptions(out=out, progress=False))
    ds = load_dataset(str(out.resolve()), "bimcv")
    rows = concatenate_datasets(list(ds.values()))
    assert len(rows) == 9
    files = release_files("iter12", seed=3)
    for row in rows:
        original = files[f"covid19_posi/{row['image_path']}"]
        with Image.open(io.BytesIO(original)) as img:
            expected = np.array(img)
        loaded = row["image"]
        assert loaded.mode == "I;16"
        assert np.array_equal(np.array(loaded), expected)
        assert row["image_sha256"] == hashlib.sha256(original).hexdigest()
        assert row["license_id"] == "LicenseRef-BIMCV-COVID19-RUA" and row["license_redistribution"] is False
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Local-only build" in card
    report = json.loads((out / "build_report.json").read_text(encoding="utf-8"))
    assert report["sources"]["bimcv"]["reconciles"] is True


def test_archive_listings_are_checked(tmp_path: Path) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    adapter = BimcvAdapter(root)
    adapter.discover()
    assert adapter.report.notes["archives"] == {"archives": 5, "listing_differs": []}
    listing = root / "covid19_posi_head.tar.gz.tar-tvf.txt"
    listing.write_text(listing.read_text(encoding="utf-8") + "-rw-r--r-- root/root 1 2020-10-08 00:00 x\n")
    with pytest.raises(ChecksumMismatchError, match=r"covid19_posi_head\.tar\.gz\.tar-tvf\.txt"):
        BimcvAdapter(root).discover()  # listings are covered by sha1sums.txt too
    _rewrite_sums(root)
    adapter = BimcvAdapter(root)
    adapter.discover()
    assert adapter.report.notes["archives"] == {"archives": 5, "listing_differs": ["covid19_posi_head.tar.gz"]}


def test_bimcv_quality_control_sessions_are_flagged(
    releases: dict[tuple[str, bool], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from covid_cxr_unified.adapters import bimcv_vocab

    monkeypatch.setitem(bimcv_vocab.KNOWN_SESSION_ISSUES, ("sub-S03045", "ses-E06139"), "inverted")
    _, records, _ = _run(releases[("iter12", False)])
    assert "BIMCV quality control: inverted" in records[S45_E6139].provenance.flags
    assert not any("quality control" in f for f in records[S45_ACQ1].provenance.flags)


def test_image_gone_between_discovery_and_reading_is_quarantined(tmp_path: Path) -> None:
    root = write_bimcv(tmp_path / "rel", archives=True).root
    adapter = BimcvAdapter(root)
    adapter.discover()
    images = adapter.ix.images
    gone = next(p for p in images if "S03047" in p and p.endswith(".png"))
    moved = _Image(*images[gone])._replace(name="covid19_posi/elsewhere.png")  # a member the archive lacks
    images[gone] = moved.to_json()
    adapter.discover = lambda: None  # type: ignore[method-assign]
    records = list(adapter.run())
    assert adapter.report.reconciles() and len(records) == 8
    assert ("image missing", gone) in {(n.reason, n.key) for n in adapter.report.quarantined_items}


def test_an_image_linked_out_of_the_tree_is_quarantined(tmp_path: Path) -> None:
    release = write_bimcv(tmp_path / "release", seed=0)
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png16())
    image = next(p for p in sorted(release.root.rglob("*.png")) if p.stat().st_size > 0)
    image.unlink()
    image.symlink_to(outside)
    adapter = BimcvAdapter(release.root)
    records = list(adapter.run())
    assert adapter.report.quarantined["image path unsafe"] == 1
    assert adapter.report.reconciles()
    assert all(image.name not in r.record.record_id for r in records)


def _png16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- memory: nothing per image in Python containers ------------------------------------------------


def _release_of(images: int) -> dict[str, bytes]:
    """An iterations 1+2 release of `images` metadata-only images: two per subject, one per session."""
    meta = "covid19_posi"
    files: dict[str, bytes] = {}
    participants = ["participant\tage\tgender"]
    labels = ["\tPatientID\tReportID\tReport\tLabels\tlabelCUIS"]
    tests = ["participant\tdate\ttest\tresult"]
    for i in range(images):
        sub, ses = f"sub-S{100_000 + i // 2}", f"ses-E{200_000 + i}"
        stem = f"{sub}_{ses}_run-1_bp-chest_vp-pa_dx"
        folder = f"{meta}/{sub}/{ses}/mod-rx"
        files[f"{folder}/{stem}.png"] = b""
        sidecar = _sidecar(Series(stem, "DX", "20200318", view_position="PA"), uid=i)
        files[f"{folder}/{stem}.json"] = json.dumps(sidecar).encode()
        labels.append(f"{i}\t{sub}\t{ses}\tr .\t['COVID 19']\t[C5203670]")
        if i % 2 == 0:
            participants.append(f"{sub}\t[{40 + i % 50}]\tM")
            tests.append(f"{sub}\t17.03.2020\tPCR\tPOSITIVO")
            files[f"{meta}/{sub}/{sub}_sessions.tsv"] = f"session_id\tstudy_date\n{ses}\t20200318\n".encode()
    files[f"{meta}/participants.tsv"] = "\n".join(participants).encode() + b"\n"
    files[f"{meta}/derivatives/labels/labels_covid_posi.tsv"] = "\n".join(labels).encode() + b"\n"
    files[f"{meta}/derivatives/EHR/sil_reg_covid_posi.tsv"] = "\n".join(tests).encode() + b"\n"
    return files


def _write_release(folder: Path, files: dict[str, bytes], archives: bool) -> Path:
    if archives:
        write_archives(folder, files, "iter12")
        return folder
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _containers(adapter: BimcvAdapter) -> dict[str, int]:
    """The size of every container the adapter holds (its bounded look-up cache apart)."""
    assert len(adapter._recent) <= bimcv.RECENT
    kinds = (list, tuple, set, dict, bytes, bytearray)
    return {name: len(value) for name, value in vars(adapter).items() if isinstance(value, kinds) and name != "_recent"}


@pytest.mark.parametrize("archives", [False, True])
def test_the_adapter_holds_nothing_per_image(tmp_path: Path, archives: bool) -> None:
    sizes = []
    for images in (10, 100):
        root = _write_release(tmp_path / f"{images}", _release_of(images), archives)
        adapter = BimcvAdapter(root, metadata_only=True)
        adapter.discover()
        discovered = _containers(adapter)
        records = list(adapter.run())
        assert len(records) == images and adapter.report.notes["participants"]["record"] == images // 2
        sizes.append((discovered, _containers(adapter)))
    assert sizes[0] == sizes[1]
