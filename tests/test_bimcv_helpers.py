"""Unit tests of the BIMCV helper modules: tables, DICOM JSON, tar reading, AIM ROIs, display."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from covid_cxr_unified.adapters import aim_roi
from covid_cxr_unified.adapters.bimcv_tables import (
    derepr_text,
    parse_labels,
    parse_participants,
    parse_partitions,
    parse_sessions,
    parse_tests,
    split_list_cell,
)
from covid_cxr_unified.adapters.dicom_json import DicomJson, SidecarError, dicom_age_years
from covid_cxr_unified.adapters.tar_reader import (
    ChecksumMismatchError,
    UnsafeMemberError,
    check_member,
    iter_archive,
    iter_archive_pieces,
    read_sha1sums,
    verify_sha1,
)
from covid_cxr_unified.harmonize.display import display_array
from covid_cxr_unified.harmonize.errors import SourceFormatError

# --- list cells ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "items", "truncated", "fragment"),
    [
        ("['COVID 19', ' pneumonia', ' infiltrates']", ("COVID 19", " pneumonia", " infiltrates"), False, None),
        ("['COVID 19'\t 'pneumonia']", ("COVID 19", "pneumonia"), False, None),  # iteration 1
        ("['', 'ground glass pattern', ' COVID 19']", ("ground glass pattern", " COVID 19"), False, None),
        (
            "['aortic elongation', ' cardiomegaly', 'central venous ca",
            ("aortic elongation", " cardiomegaly"),
            True,
            "central venous ca",
        ),
        ("", (), False, None),
        ("[]", (), False, None),
    ],
)
def test_split_list_cell(cell: str, items: tuple[str, ...], truncated: bool, fragment: str | None) -> None:
    assert split_list_cell(cell) == (items, truncated, fragment)


def test_labels_table_cuis_with_empty_slots_and_tab_variant() -> None:
    data = (
        b"\tPatientID\tReportID\tReport\tLabels\tLocalizations\tLabelsLocalizationsBySentence\tlabelCUIS\tLocalizationsCUIS\n"
        b"0\tsub-S1\tses-E1\tr .\t['a', ' b']\t[]\t[]\t[,C3544344,C5203670]\t[]\n"
        b"1\tsub-S1\tses-E2\tr .\t\"['a'\t 'b']\"\t[]\t[]\t\"[C5203670\tC3544344]\"\t[]\n"
        b"2\tsub-S1\tses-E3\t\t\t\t\t\t\n"
    )
    rows = list(parse_labels(data, "labels.tsv"))
    assert [r.cuis for r in rows] == [("C3544344", "C5203670"), ("C5203670", "C3544344"), ()]
    assert rows[0].labels == ("a", " b") and rows[1].labels == ("a", "b")
    assert rows[2].labels_missing and not rows[0].labels_missing and rows[2].report is None


def test_participants_junk_two_ages_none() -> None:
    data = (
        b"participant\tmodality_dicom\tbody_parts\tage\tgender\n"
        b"sub-S1\t['DX']\t[['chest']]\t[66, 67]\tM\nsub-S2\t[]\t[]\t[]\tNone\nderivatives\t[]\t[]\t[]\tNone\n"
    )
    rows = list(parse_participants(data, "participants.tsv"))
    people = [p for p in rows if p is not None]
    assert [(p.participant, p.ages, p.gender) for p in people] == [("sub-S1", (66, 67), "M"), ("sub-S2", (), None)]
    assert [number for number, p in enumerate(rows, start=1) if p is None] == [3]


def test_sessions_dates_and_report_text() -> None:
    data = (
        b"session_id\tstudy_date\tmedical_evaluation\n"
        b"ses-E1\t20200318\t['Rx torax AP.\\nInfiltrados.']\nses-E2\t\t\nses-E3\t20200325.0\t['a', 'b']\n"
    )
    sessions = list(parse_sessions(data, "sub-S1_sessions.tsv"))
    assert [s.study_date for s in sessions] == [dt.date(2020, 3, 18), None, dt.date(2020, 3, 25)]
    assert sessions[0].medical_evaluation == "Rx torax AP.\nInfiltrados."
    assert sessions[1].medical_evaluation is None and derepr_text("['a', 'b']") == "a\nb"


def test_tests_both_namings() -> None:
    newer = b"label\tsubject\tdate\ttest\tresult\tparticipant\t\n1\t1\t17.03.2020\tPCR\tPOSITIVO\tsub-S1\t\n"
    older = b"Subject\tfecha\tprueba\tresultado\tparticipant\n1\t17.03.2020\tPCR\tPOSITIVO\tsub-S1\n"
    for data in (newer, older):
        (test,) = list(parse_tests(data, "sil.tsv"))
        assert (test.participant, test.date, test.test, test.result) == (
            "sub-S1",
            dt.date(2020, 3, 17),
            "PCR",
            "POSITIVO",
        )
    with pytest.raises(SourceFormatError, match="lacks column"):
        parse_tests(b"a\tb\n1\t2\n", "sil.tsv")


def test_partitions_irregular_header() -> None:
    data = b"subject session filepath\nsub-S1\tses-E1\t./sub-S1/ses-E1/mod-rx/x_cr.png\n"
    assert list(parse_partitions(data, "partitions.tsv")) == ["sub-S1/ses-E1/mod-rx/x_cr.png"]


# --- DICOM JSON ----------------------------------------------------------------------------------


def test_dicom_json_pn_sq_and_empty_elements() -> None:
    sidecar = DicomJson.parse(
        b'{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "654321"}]}, "00080090": {"vr": "PN", "Value": '
        b'[{"Alphabetic": " "}]}, "00200010": {"vr": "SH"}, "00181164": {"vr": "DS", "Value": [0.19, 0.19]},'
        b' "00540220": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["R-10214"]}}]}}'
    )
    assert sidecar.text("00100010") == "654321" and sidecar.text("00080090") is None
    assert sidecar.text("00200010") is None and sidecar.values("00200010") == []
    assert sidecar.numbers("00181164") == (0.19, 0.19)
    assert sidecar.items("00540220")[0].text("00080100") == "R-10214"
    with pytest.raises(SidecarError, match="upper-case hex"):
        DicomJson.parse(b'{"0008103e": {"vr": "LO"}}')
    with pytest.raises(SidecarError, match="not JSON"):
        DicomJson.parse(b'{"00080060": {"vr": "CS", "Val')
    assert dicom_age_years("083Y") == 83.0 and dicom_age_years("006M") == 0.5 and dicom_age_years("83") is None


# --- tar -----------------------------------------------------------------------------------------


def test_sha1sums_both_formats_and_verification(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"payload")
    digest = hashlib.sha1(b"payload").hexdigest()
    (tmp_path / "s.txt").write_text(f"{digest}  a.tar.gz\n{digest} *b.tar.gz\n", encoding="utf-8")
    sums = read_sha1sums(tmp_path / "s.txt")
    assert sums == {"a.tar.gz": digest, "b.tar.gz": digest}
    verify_sha1(archive, sums)
    archive.write_bytes(b"payloaD")
    with pytest.raises(ChecksumMismatchError, match=r"a.tar.gz: sha1 .* differs"):
        verify_sha1(archive, sums)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/abs", "C:/x", "\\\\server\\x"])
def test_check_member_refuses_escaping_names(name: str) -> None:
    with pytest.raises(UnsafeMemberError):
        check_member("a.tar.gz", tarfile.TarInfo(name))


def test_check_member_normalizes_safe_names() -> None:
    assert check_member("a.tar.gz", tarfile.TarInfo("./covid19_posi//sub-S1/x.png")) == "covid19_posi/sub-S1/x.png"


def test_iter_archive_streams_and_reads_only_wanted(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("r/a.png", b"A"), ("r/b.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "p.tar.gz"
    path.write_bytes(buffer.getvalue())
    got = [(n, d) for n, _, d in iter_archive(path, lambda n: n.endswith(".json"))]
    assert got == [("r/a.png", None), ("r/b.json", b"{}")]
    path.write_bytes(b"not a tar")
    with pytest.raises(SourceFormatError, match="not a readable tar"):
        list(iter_archive(path, lambda n: True))


def test_iter_archive_pieces_never_holds_a_member_whole(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("r/big.tsv", bytes(range(256)) * 5), ("r/empty.json", b""), ("r/a.png", b"A")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "p.tar.gz"
    path.write_bytes(buffer.getvalue())
    pieces = iter_archive_pieces(path, lambda n: not n.endswith(".png"), piece_bytes=512)
    got = [(n, offset, piece) for n, _, offset, piece in pieces]
    assert [(n, offset, len(piece or b"")) for n, offset, piece in got] == [
        ("r/big.tsv", 0, 512),
        ("r/big.tsv", 512, 512),
        ("r/big.tsv", 1024, 256),
        ("r/empty.json", 0, 0),
        ("r/a.png", 0, 0),
    ]
    assert b"".join(piece or b"" for n, _, piece in got if n == "r/big.tsv") == bytes(range(256)) * 5
    assert got[3][2] == b"" and got[4][2] is None  # an empty member read, a member left unread


# --- ROIs ----------------------------------------------------------------------------------------


def test_roi_stem_from_back_slashed_path() -> None:
    path = (
        "derivatives/roi/sub-S03044/derivatives\\roi\\sub-S03044\\ses-E06138\\mod-rx\\"
        "sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_mod-cr_roi.xml"
    )
    assert aim_roi.image_stem_of_roi(path) == "sub-S03044_ses-E06138_run-1_bp-chest_vp-ap_cr"
    assert aim_roi.image_stem_of_roi("derivatives/roi/readme.xml") is None


def test_aim_parse_and_rasterize() -> None:
    ns = "gme://caCORE.caCORE/4.4/edu.northwestern.radiology.AIM"
    coords = "".join(
        f"<TwoDimensionSpatialCoordinate><coordinateIndex value='{i}'/><x value='{x}'/><y value='{y}'/>"
        "</TwoDimensionSpatialCoordinate>"
        for i, (x, y) in enumerate([(2, 2), (12, 2), (12, 8), (2, 8)])
    )
    xml = (
        f"<ImageAnnotationCollection xmlns='{ns}'><imageAnnotations><ImageAnnotation>"
        "<uniqueIdentifier root='2.25.1'/><name value='consolidation'/><markupEntityCollection><MarkupEntity>"
        f"<twoDimensionSpatialCoordinateCollection>{coords}</twoDimensionSpatialCoordinateCollection>"
        "</MarkupEntity></markupEntityCollection></ImageAnnotation></imageAnnotations></ImageAnnotationCollection>"
    ).encode()
    (polygon,) = aim_roi.parse_aim(xml)
    assert polygon.label == "consolidation" and polygon.annotation_id == "2.25.1" and len(polygon.points) == 4
    rle = aim_roi.polygon_rle(polygon.points, width=16, height=10)
    assert rle.size == (10, 16) and rle.area == 11 * 7 and rle.bbox == (2.0, 2.0, 11.0, 7.0)
    with pytest.raises(aim_roi.RoiError, match="3 points"):
        aim_roi.polygon_rle(((1.0, 1.0), (2.0, 2.0)), 4, 4)
    with pytest.raises(aim_roi.RoiError, match="DTD"):
        aim_roi.parse_aim(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")
    with pytest.raises(aim_roi.RoiError, match="well-formed"):
        aim_roi.parse_aim(xml[:100])


# --- display -------------------------------------------------------------------------------------


def test_display_array_inverts_monochrome1_and_windows() -> None:
    stored = np.array([[0, 1024, 4095], [5000, 2048, 3000]], dtype=np.uint16)
    mono2 = display_array(stored, bits_stored=12, window_center=2048, window_width=4096)
    mono1 = display_array(
        stored, photometric_interpretation="MONOCHROME1", bits_stored=12, window_center=2048, window_width=4096
    )
    assert mono2[0, 0] == 0 and mono2[0, 2] == 255 and mono2[1, 0] == 255  # 5000 is clipped to 4095
    assert np.array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert display_array(stored).dtype == np.uint8
    with pytest.raises(ValueError, match="single-channel"):
        display_array(np.zeros((2, 2, 3)))
