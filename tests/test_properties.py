"""Property-based tests: arbitrary bytes and strings never make a parser raise anything but its typed error.

Allowed per parser: the project's HarmonizeError subclasses, QuarantineItem/ExcludeItem, pydantic's
ValidationError for the record model, and the module-level typed errors that their callers turn into
quarantines or flags (GeometryError in masks, SidecarError in dicom_json, RoiError in aim_roi). Anything
else (KeyError, TypeError, RecursionError, zlib.error, ...) is a bug. Example counts stay modest so the
whole file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from badinputs import coco, darwin1, ieee_csv, ieee_row, picture
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from covid_cxr_unified.adapters import aim_roi, bimcv_tables
from covid_cxr_unified.adapters.base import ExcludeItem, QuarantineItem, probe_image
from covid_cxr_unified.adapters.dicom_json import DicomJson, SidecarError, dicom_age_years
from covid_cxr_unified.adapters.ieee8023 import Ieee8023Adapter
from covid_cxr_unified.adapters.masks import GeometryError, polygon_rle, uncompressed_rle, validate_ring
from covid_cxr_unified.adapters.tar_reader import check_member, iter_archive, read_sha1sums
from covid_cxr_unified.adapters.urls import strip_url_secrets
from covid_cxr_unified.adapters.v7_darwin import V7DarwinAdapter, parse_tags
from covid_cxr_unified.adapters.v7_formats import detect_shape
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.schema.record import Record

FAST = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
TYPED = (HarmonizeError, QuarantineItem, ExcludeItem)

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
text_lines = st.lists(st.text(st.characters(blacklist_categories=["Cs"]), max_size=40), max_size=6)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("properties")


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer[:cut] if cut is not None else buffer)


mutations = st.tuples(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, 2_000),
)


# --- CSV (ieee8023 metadata.csv and the V7 linkage reader) ----------------------------------------------


def _run(adapter: Any) -> None:
    try:
        for _ in adapter.run():
            pass
    except HarmonizeError as exc:
        assert "\n" not in str(exc)
        return
    assert adapter.report.reconciles(), adapter.report.summary()


@FAST
@given(data=st.binary(max_size=400))
def test_ieee8023_csv_reader_on_arbitrary_bytes(scratch: Path, data: bytes) -> None:
    (scratch / "metadata.csv").write_bytes(b"patientid,finding,view,filename,license\n" + data)
    _run(Ieee8023Adapter(scratch / "metadata.csv", metadata_only=True))


@FAST
@given(lines=text_lines, cells=st.lists(st.text(max_size=10), min_size=1, max_size=8))
def test_ieee8023_csv_reader_on_arbitrary_rows(scratch: Path, lines: list[str], cells: list[str]) -> None:
    row = ieee_row(finding=cells[0], view=cells[-1], age=cells[len(cells) // 2], date=cells[0], offset=cells[-1])
    text = ieee_csv([row]) + "\n".join(lines)
    (scratch / "metadata.csv").write_text(text, encoding="utf-8")
    _run(Ieee8023Adapter(scratch / "metadata.csv", metadata_only=True))


# --- BIMCV TSV and list-cell parsers -----------------------------------------------------------------------

TSV_PARSERS = (
    (bimcv_tables.parse_participants, b"participant\tage\tgender\n"),
    (bimcv_tables.parse_sessions, b"session_id\tstudy_date\tmedical_evaluation\n"),
    (bimcv_tables.parse_labels, b"\tPatientID\tReportID\tReport\tLabels\tLocalizations\tlabelCUIS\n"),
    (bimcv_tables.parse_tests, b"participant\tfecha\tprueba\tresultado\n"),
    (bimcv_tables.parse_partitions, b"subject session filepath\n"),
)


@FAST
@given(which=st.integers(0, len(TSV_PARSERS) - 1), body=st.binary(max_size=300), header=st.booleans())
def test_bimcv_tsv_parsers_on_arbitrary_bytes(which: int, body: bytes, header: bool) -> None:
    parse, head = TSV_PARSERS[which]
    try:
        list(parse((head if header else b"") + body, "table.tsv"))  # the rows stream: read them all
    except HarmonizeError as exc:
        assert "\n" not in str(exc)


@FAST
@given(
    which=st.integers(0, len(TSV_PARSERS) - 1), lines=st.lists(st.lists(st.text(max_size=15), max_size=8), max_size=5)
)
def test_bimcv_tsv_parsers_on_arbitrary_cells(which: int, lines: list[list[str]]) -> None:
    parse, head = TSV_PARSERS[which]
    body = "\n".join("\t".join(cells) for cells in lines).encode("utf-8", "surrogatepass")
    with contextlib.suppress(HarmonizeError):
        list(parse(head + body, "table.tsv"))


@FAST
@given(raw=st.text(max_size=80) | st.from_regex(r"\[('[a-z ]{0,8}'(, |\t )?){0,4}\]?", fullmatch=True))
def test_list_cell_and_text_parsers_never_raise(raw: str) -> None:
    items, truncated, fragment = bimcv_tables.split_list_cell(raw)
    assert all(item.strip() for item in items) and (fragment is None or truncated)
    bimcv_tables.derepr_text(raw)
    bimcv_tables.parse_yyyymmdd(raw)
    bimcv_tables.missing(raw)
    dicom_age_years(raw)
    parse_tags((raw, f"PatientID:{raw}", f"View/{raw}"))


# --- DICOM JSON sidecars --------------------------------------------------------------------------------

TAGS = ("00080060", "00080020", "00280004", "00280010", "00280011", "00280030", "00280101", "00540220", "00185101")
element = st.fixed_dictionaries({"vr": st.text(max_size=2)}, optional={"Value": json_value})
sidecar = st.dictionaries(st.sampled_from(TAGS) | st.from_regex(r"[0-9A-F]{8}", fullmatch=True), element | json_value)


@FAST
@given(data=st.binary(max_size=200) | sidecar.map(lambda d: json.dumps(d).encode()))
def test_dicom_json_sidecar_parser(data: bytes) -> None:
    try:
        parsed = DicomJson.parse(data)
    except SidecarError:
        return
    for tag in TAGS:
        parsed.text(tag)
        parsed.number(tag)
        parsed.numbers(tag)
        for item in parsed.items(tag):
            item.text("00080100")
    parsed.as_json()


# --- Darwin / COCO JSON -----------------------------------------------------------------------------------


def _coco_variant(draw: Any) -> Any:
    document: dict[str, Any] = coco()
    for _ in range(draw(st.integers(0, 3))):
        section = draw(st.sampled_from(["images", "annotations", "categories", "tag_categories"]))
        entries = document[section]
        if isinstance(entries, list) and entries and draw(st.booleans()):
            entry = entries[draw(st.integers(0, len(entries) - 1))]
            if isinstance(entry, dict) and entry:
                entry[draw(st.sampled_from(sorted(entry)))] = draw(json_value)
        else:
            document[section] = draw(json_value)
    return document


@st.composite
def v7_documents(draw: Any) -> Any:
    kind = draw(st.sampled_from(["coco", "darwin", "darwin2", "any"]))
    if kind == "coco":
        return _coco_variant(draw)
    if kind == "darwin2":  # read by darwin-py: its exceptions must not escape either
        item = {
            "name": "a.png",
            "path": "/",
            "slots": draw(
                json_value
                | st.just(
                    [
                        {
                            "type": "image",
                            "slot_name": "0",
                            "width": 32,
                            "height": 32,
                            "source_files": [{"file_name": "a.png"}],
                        }
                    ]
                )
            ),
        }
        annotations = draw(
            json_value
            | st.just(
                [
                    {
                        "id": "1",
                        "name": "Lung",
                        "polygon": {"paths": [[{"x": 4, "y": 4}, {"x": 20, "y": 4}, {"x": 20, "y": 20}]]},
                        "slot_names": ["0"],
                    }
                ]
            )
        )
        return {"version": "2.0", "schema_ref": draw(json_value), "item": item, "annotations": annotations}
    if kind == "darwin":
        document = darwin1("a.png", "1")
        target = draw(st.sampled_from(["image", "annotations", "dataset"]))
        if target == "image" and draw(st.booleans()):
            document["image"][draw(st.sampled_from(sorted(document["image"])))] = draw(json_value)
        elif target == "annotations" and draw(st.booleans()):
            document["annotations"][0] = draw(json_value)
        else:
            document[target] = draw(json_value)
        return document
    return draw(json_value)


@FAST
@given(document=v7_documents(), raw=st.none() | st.binary(max_size=100))
def test_darwin_and_coco_readers(scratch: Path, document: Any, raw: bytes | None) -> None:
    detect_shape(document)
    folder = scratch / "v7"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    (folder / "a.json").write_bytes(raw if raw is not None else json.dumps(document).encode())
    if raw is None and detect_shape(document) != "coco":
        (folder / "b.json").write_text(json.dumps(darwin1("b.png", "2")), encoding="utf-8")
    _run(V7DarwinAdapter(folder))


# --- polygon and RLE validators -----------------------------------------------------------------------------

coordinate = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-100, 100),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
size = st.integers(1, 40)


@FAST
@given(rings=st.lists(st.lists(coordinate, max_size=12), max_size=3), height=size, width=size)
def test_polygon_validators(rings: list[list[Any]], height: int, width: int) -> None:
    for ring in rings:
        with contextlib.suppress(GeometryError):
            validate_ring(ring, height, width)
    try:
        rle = polygon_rle(rings, height, width)
    except GeometryError:
        return
    assert rle.area > 0 and rle.size == (height, width)


@FAST
@given(
    counts=json_value | st.lists(st.integers(-5, 400), max_size=8),
    shape=json_value | st.lists(st.integers(-2, 40), max_size=3),
    height=size,
    width=size,
    bbox=st.none() | st.lists(st.floats(-50, 50), min_size=4, max_size=4),
)
def test_rle_validator(counts: Any, shape: Any, height: int, width: int, bbox: list[float] | None) -> None:
    try:
        rle = uncompressed_rle({"counts": counts, "size": shape}, height, width, bbox)
    except GeometryError:
        return
    assert rle.area > 0 and rle.size == (height, width)


# --- AIM ROI ------------------------------------------------------------------------------------------------

AIM = (
    b'<?xml version="1.0" encoding="UTF-8"?><ImageAnnotationCollection><imageAnnotations><ImageAnnotation>'
    b'<uniqueIdentifier root="1.2"/><name value="consolidation"/><markupEntityCollection><MarkupEntity>'
    b"%s</MarkupEntity></markupEntityCollection></ImageAnnotation></imageAnnotations></ImageAnnotationCollection>"
)


def _coord(index: str, x: str, y: str) -> bytes:
    return (
        f'<TwoDimensionSpatialCoordinate><coordinateIndex value="{index}"/><x value="{x}"/><y value="{y}"/>'
        "</TwoDimensionSpatialCoordinate>"
    ).encode()


@FAST
@given(
    data=st.binary(max_size=200),
    coords=st.lists(st.tuples(st.text(max_size=4), st.text(max_size=6), st.text(max_size=6)), max_size=5),
    numbers=st.lists(st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)), max_size=6),
    width=size,
    height=size,
)
def test_aim_roi_parser(
    data: bytes, coords: list[tuple[str, str, str]], numbers: list[tuple[float, float]], width: int, height: int
) -> None:
    escaped = [tuple(v.replace("&", "").replace("<", "").replace('"', "") for v in c) for c in coords]
    for document in (data, AIM % b"".join(_coord(*c) for c in escaped)):
        with contextlib.suppress(aim_roi.RoiError):
            aim_roi.parse_aim(document)
    aim_roi.image_stem_of_roi(data.decode("utf-8", "replace"))
    try:
        rle = aim_roi.polygon_rle(tuple(numbers), width, height)
    except aim_roi.RoiError:
        return
    assert rle.area > 0


# --- tar reader ------------------------------------------------------------------------------------------


def _tar_bytes(names: list[str], types: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, kind in zip(names, types, strict=False):
            info = tarfile.TarInfo(name or "x")
            info.type = kind
            info.linkname = "target" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = b"data" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


tar_names = st.lists(
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), min_size=1, max_size=20), max_size=4
)
tar_types = st.lists(
    st.sampled_from(
        [
            tarfile.REGTYPE,
            tarfile.DIRTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
            tarfile.CHRTYPE,
            tarfile.BLKTYPE,
            tarfile.FIFOTYPE,
        ]
    ),
    max_size=4,
)


@FAST
@given(names=tar_names, types=tar_types, mutation=mutations, raw=st.none() | st.binary(max_size=300))
def test_tar_reader(scratch: Path, names: list[str], types: list[bytes], mutation: Any, raw: bytes | None) -> None:
    data = raw if raw is not None else _tar_bytes(names, types)
    if raw is None and mutation[0]:
        data = _mutate(data, *mutation)
    archive = scratch / "part.tar.gz"
    archive.write_bytes(data)
    try:
        for name, _member, content in iter_archive(archive, lambda n: True, max_members=3):
            assert not name.startswith("/") and ".." not in name.split("/")
            assert content is not None
    except HarmonizeError as exc:
        assert "\n" not in str(exc)


@FAST
@given(name=tar_names.filter(bool).map(lambda n: n[0]), kind=tar_types.filter(bool).map(lambda t: t[0]))
def test_check_member(name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    try:
        safe = check_member("part.tar.gz", info)
    except HarmonizeError:
        return
    assert not safe.startswith("/") and ".." not in safe.split("/")


@FAST
@given(data=st.binary(max_size=200))
def test_sha1sums_reader(scratch: Path, data: bytes) -> None:
    (scratch / "sha1sums.txt").write_bytes(data)
    with contextlib.suppress(HarmonizeError):
        read_sha1sums(scratch / "sha1sums.txt")


# --- images ------------------------------------------------------------------------------------------------

SEEDS = [picture(mode, fmt=fmt) for mode, fmt in (("L", "PNG"), ("I;16", "PNG"), ("P", "PNG"), ("RGB", "JPEG"))]


@FAST
@given(which=st.integers(0, len(SEEDS) - 1), mutation=mutations, raw=st.none() | st.binary(max_size=200))
def test_probe_image(which: int, mutation: Any, raw: bytes | None) -> None:
    data = raw if raw is not None else _mutate(SEEDS[which], *mutation)
    try:
        probe = probe_image(data, max_pixels=1_000_000)
    except QuarantineItem as exc:
        assert exc.reason in {"image empty (0 bytes)", "image unreadable", "image too large"}
        return
    assert probe.width * probe.height <= 1_000_000


# --- URLs ----------------------------------------------------------------------------------------------------


@FAST
@given(
    value=json_value, query=st.lists(st.tuples(st.sampled_from(["token", "a", "Token", "sig"]), st.text(max_size=5)))
)
def test_url_scrubbing(value: Any, query: list[tuple[str, str]]) -> None:
    from urllib.parse import urlencode

    url = "https://darwin.v7labs.com/x?" + urlencode(query)
    clean, found = strip_url_secrets({"v": value, "url": url, "nested": [url]})
    assert "token=" not in json.dumps(clean).lower()
    assert bool(found) == any(k.lower() in {"token", "sig"} for k, _ in query)


# --- the record model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def valid_record(scratch: Path) -> dict[str, Any]:
    from badinputs import write_ieee

    root = write_ieee(scratch / "record")
    adapter = Ieee8023Adapter(root)
    record = next(iter(adapter.run())).record
    dumped: dict[str, Any] = json.loads(record.model_dump_json())
    return dumped


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [prefix] + [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [prefix] + [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return [prefix]


@FAST
@given(data=st.data())
def test_record_model_validate(valid_record: dict[str, Any], data: st.DataObject) -> None:
    document = json.loads(json.dumps(valid_record))
    paths = [p for p in _paths(document) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = document
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = data.draw(json_value)
        except (KeyError, IndexError, TypeError):
            continue
    with contextlib.suppress(ValidationError):
        Record.model_validate(document)


@FAST
@given(document=json_value)
def test_record_model_validate_on_anything(document: Any) -> None:
    assume(document is not None)
    with pytest.raises(ValidationError):
        Record.model_validate(document)


# --- the BIMCV adapter end to end, on fuzzed tables and sidecars -------------------------------------------

cell_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\t\r\n\"'"), max_size=12)
list_cell = st.lists(cell_text | st.sampled_from(["unchanged", "COVID 19", "normal", "exclude", ""]), max_size=4).map(
    lambda items: "[" + ", ".join(f"'{item}'" for item in items) + "]"
)


@FAST
@given(
    labels=st.lists(list_cell | cell_text, min_size=1, max_size=9),
    ages=st.lists(cell_text | st.just("[66, 67]"), min_size=1, max_size=6),
    genders=st.lists(cell_text | st.sampled_from(["M", "F", "None"]), min_size=1, max_size=6),
    sidecar_value=json_value,
    tag=st.sampled_from(TAGS),
)
def test_bimcv_adapter_on_fuzzed_tables_and_sidecars(
    scratch: Path, labels: list[str], ages: list[str], genders: list[str], sidecar_value: Any, tag: str
) -> None:
    from badinputs import B_FILE, B_LABELS, B_PARTICIPANTS, _release, _write_tree

    from covid_cxr_unified.adapters.bimcv import BimcvAdapter

    files = dict(_release("iter12"))
    lines = files[B_LABELS].decode().split("\n")
    for index in range(1, len(lines) - 1):  # the Labels column (5th cell) of every row
        cells = lines[index].split("\t")
        cells[4] = labels[index % len(labels)]
        lines[index] = "\t".join(cells)
    files[B_LABELS] = "\n".join(lines).encode()
    people = files[B_PARTICIPANTS].decode().split("\n")
    for index in range(1, len(people) - 1):
        cells = people[index].split("\t")
        cells[3], cells[4] = ages[index % len(ages)], genders[index % len(genders)]
        people[index] = "\t".join(cells)
    files[B_PARTICIPANTS] = "\n".join(people).encode()
    sidecar = json.loads(files[f"{B_FILE}.json"])
    sidecar[tag] = {"vr": "XX", "Value": sidecar_value}
    files[f"{B_FILE}.json"] = json.dumps(sidecar).encode()
    root = scratch / "bimcv-fuzz"
    _write_tree(root, files)
    _run(BimcvAdapter(root, metadata_only=True))
