"""Every case of the bad-input corpus (tests/badinputs.py) ends as its table says, and counts reconcile.

A typed error is also checked through the CLI: a non-zero exit, exactly one stderr line starting
`error:`, no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from badinputs import BUILDERS, TABLE, CaseInput, Row, ieee_row, picture, resolve_key, write_ieee
from typer.testing import CliRunner

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.adapters.base import Adapter
from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.schema.record import Record

runner = CliRunner()


def _adapter(case: CaseInput) -> Adapter:
    return adapter_class(case.source.value)(
        case.path, images=case.images, related=case.related, metadata_only=case.metadata_only, **case.limits
    )


def _cli_args(case: CaseInput) -> list[str]:
    args = ["inspect", case.source.value, str(case.path), "--json", "--no-progress"]
    if case.images is not None:
        args += ["--images", str(case.images)]
    for path in case.related.values():
        args += ["--ieee8023", str(path)]
    if case.metadata_only:
        args.append("--metadata-only")
    for name, value in case.limits.items():  # max_json_bytes -> --max-json-bytes
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def test_the_table_is_complete_and_large_enough() -> None:
    ids = [row.case_id for row in TABLE]
    assert len(ids) == len(set(ids)), "duplicate case id"
    assert set(ids) == set(BUILDERS), set(ids) ^ set(BUILDERS)
    per_source = Counter(row.source.value for row in TABLE)
    assert len(TABLE) >= 60 and all(per_source[s] >= 15 for s in ("ieee8023", "v7_darwin", "bimcv")), per_source


@pytest.mark.parametrize("row", TABLE, ids=[row.case_id for row in TABLE])
def test_bad_input(row: Row, tmp_path: Path) -> None:
    case = BUILDERS[row.case_id](tmp_path)
    expected = row.expected
    adapter = _adapter(case)
    if expected.kind == "error":
        with pytest.raises(HarmonizeError) as caught:
            list(adapter.run())
        error = caught.value
        assert type(error).__name__ == expected.what, f"{type(error).__name__}: {error}"
        message = str(error)
        assert expected.fragment in message and "\n" not in message, message
        _check_cli(case, type(error).exit_code)
        return
    records = {r.record.record_id: r.record for r in adapter.run()}
    report = adapter.report
    assert report.reconciles(), report.summary()
    for each in records.values():  # every record and the report can be written as a build writes them
        assert "token=" not in each.model_dump_json()
    json.dumps(report.details(), ensure_ascii=False).encode("utf-8")
    key = resolve_key(row.case_id, expected.key, case)
    source_named = expected.key == "ABSOLUTE"  # the CSV itself names a local path: reported as written
    local = [n.detail for n in report.quarantined_items if str(tmp_path) in n.detail and not source_named]
    assert not local, f"a local path in a quarantine detail (it would reach build_report.json): {local}"
    if expected.kind == "quarantined":
        notes = [(n.reason, n.detail) for n in report.quarantined_items if n.key == key]
        assert any(reason == expected.what and expected.fragment in detail for reason, detail in notes), (
            key,
            notes,
            report.summary(),
        )
    elif expected.kind == "excluded":
        assert any(n.key == key and n.reason == expected.what for n in report.excluded_items), report.summary()
    elif expected.kind == "record":
        assert key in records, (key, sorted(records), report.details()["quarantined_items"])
        record: Record = records[key]
        said = [*record.provenance.flags, *record.provenance.repairs]
        assert not expected.fragment or any(expected.fragment in s for s in said), said
    elif expected.kind == "unmapped":
        assert report.unmapped.get(expected.what, Counter())[expected.fragment] == expected.count, report.unmapped
    elif expected.kind == "note":
        note = report.notes[expected.what.split(".")[0]][expected.what.split(".")[1]]  # type: ignore[index]
        assert expected.fragment in str(note[key]), report.notes  # type: ignore[index]
    else:  # pragma: no cover - a typo in the table
        pytest.fail(f"unknown expected kind {expected.kind!r}")


def _check_cli(case: CaseInput, exit_code: int) -> None:
    result = runner.invoke(app, _cli_args(case))
    assert result.exit_code == exit_code != 0, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash caught by the runner
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output


def test_a_typed_error_is_one_line_from_the_real_entry_point(tmp_path: Path) -> None:
    """The installed CLI (a separate process) prints no traceback for a bad archive."""
    case = BUILDERS["bimcv-tar-symlink"](tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "covid_cxr_unified.harmonize", *_cli_args(case)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr and "is a link" in done.stderr


def test_limits_reach_the_adapters_through_build_options_and_the_cli(tmp_path: Path) -> None:
    """`covid-cxr build --max-image-pixels` quarantines a larger image; the default keeps it."""
    rows = [ieee_row(), ieee_row(patientid="2", filename="b.png"), ieee_row(patientid="3", filename="c.png")]
    root = write_ieee(tmp_path / "src", rows, images={"c.png": picture(size=(40, 40))})
    for flag, quarantined in ((["--max-image-pixels", "1500"], 1), ([], 0)):
        out = tmp_path / f"out{len(flag)}"
        result = runner.invoke(app, ["build", "--ieee8023", str(root), "--out", str(out), "--no-progress", *flag])
        assert result.exit_code == 0, result.output
        report = (out / "build_report.json").read_text(encoding="utf-8")
        assert ('"image too large": 1' in report) == bool(quarantined), report


def test_a_lone_surrogate_cannot_break_a_build(tmp_path: Path) -> None:
    """A JSON `\\ud800` escape once crashed the build report (UnicodeEncodeError); now it is U+FFFD."""
    from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build

    case = BUILDERS["v7-coco-lone-surrogate"](tmp_path)
    result = build([SourceSpec(case.source, case.path)], BuildOptions(out=tmp_path / "out", progress=False))
    assert result.configs[0].report is not None and result.configs[0].report.records == 2
    ids = [
        i
        for shard in (tmp_path / "out" / "data" / "v7_darwin").glob("*.parquet")
        for i in pq.read_table(shard, columns=["record_id"]).column("record_id").to_pylist()
    ]
    assert "v7_darwin:a\ufffd.png" in ids, ids


def test_a_file_name_with_undecodable_bytes_cannot_break_a_build(tmp_path: Path) -> None:
    """A BIMCV tree file named with a Latin-1 byte is quarantined (outside the MIDS grammar); the
    build report writes its name escaped instead of crashing with UnicodeEncodeError."""
    import os

    from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build

    case = BUILDERS["bimcv-tsv-bom"](tmp_path)  # any well-formed tree
    folder = os.fsencode(case.path / "covid19_posi" / "sub-S03044" / "ses-E06790" / "mod-rx")
    Path(os.fsdecode(folder + b"/sub-S03044_ses-E06790_run-7_bp-chest\xe9_dx.png")).write_bytes(picture())
    out = tmp_path / "out"
    build([SourceSpec(case.source, case.path)], BuildOptions(out=out, progress=False))
    report = (out / "build_report.json").read_text(encoding="utf-8")
    assert "run-7_bp-chest\\udce9_dx.png" in report and "file name outside the MIDS grammar" in report


def test_the_table_renders_for_people() -> None:
    from badinputs import markdown_table

    text = markdown_table()
    assert text.count("\n") == len(TABLE) + 2 and "| bimcv-tar-symlink | bimcv |" in text


ARCHIVE_ERRORS = [row for row in TABLE if row.case_id.startswith("bimcv-tar") and row.expected.kind == "error"]


@pytest.mark.parametrize("row", ARCHIVE_ERRORS, ids=[row.case_id for row in ARCHIVE_ERRORS])
def test_an_archive_error_is_the_same_from_worker_processes(row: Row, tmp_path: Path) -> None:
    """Archives are scanned in worker processes with num_proc > 1: each error comes back whole."""
    case = BUILDERS[row.case_id](tmp_path)
    seen = []
    for num_proc in (1, 3):
        adapter = adapter_class(case.source.value)(case.path, images=case.images, num_proc=num_proc, **case.limits)
        with pytest.raises(HarmonizeError) as caught:
            list(adapter.run())
        seen.append((type(caught.value).__name__, str(caught.value)))
    assert seen[0] == seen[1] and seen[0][0] == row.expected.what and row.expected.fragment in seen[0][1], seen
