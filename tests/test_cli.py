"""The CLI: thin, one-line errors with non-zero exits, JSON that reconciles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covid_cxr_unified.harmonize.cli import app
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023

runner = CliRunner()


def test_every_command_has_help_with_an_example() -> None:
    for command in ("build", "demo", "inspect", "schema"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example: covid-cxr" in result.output


def test_inspect_json_reconciles_and_writes_records(tmp_path: Path) -> None:
    root = write_ieee8023(tmp_path / "src", seed=0).root
    jsonl = tmp_path / "records.jsonl"
    result = runner.invoke(app, ["inspect", "ieee8023", str(root), "--json", "--records-jsonl", str(jsonl)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"source", "input_items", "records", "excluded", "quarantined", "unmapped", "notes"}
    assert data["input_items"] == data["records"] + sum(data["excluded"].values()) + sum(data["quarantined"].values())
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == data["records"]
    assert all("image_bytes" not in json.loads(line) for line in lines)


@pytest.mark.realdata
def test_inspect_real_metadata_only_reconciles(shared_data: Path) -> None:
    metadata = shared_data / "ieee8023" / "metadata.csv"
    result = runner.invoke(app, ["inspect", "ieee8023", str(metadata), "--metadata-only", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["input_items"] == 950 and data["unmapped"] == {} and data["quarantined"] == {}
    assert data["input_items"] == data["records"] + sum(data["excluded"].values())


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "covid_cxr_unified.harmonize", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["build", "--ieee8023", "missing-folder", "--no-progress"], 2, "error: ieee8023: no metadata.csv at"),
        (["build", "--no-progress"], 4, "error: nothing to build"),
        (["inspect", "chexpert", "x"], 1, "error: unknown source 'chexpert'"),
        (["build", "--ieee8023", "x", "--split-ratios", "0.9,0.9,0.1"], 1, "error: split ratios must"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_demo_builds_and_schema_check_passes(tmp_path: Path) -> None:
    result = _run("demo", "--out", "built", "--sources-dir", "sources", "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "built" / "README.md").is_file() and (tmp_path / "sources" / "ieee8023").is_dir()
    assert _run("schema", "--check", cwd=tmp_path).returncode == 0
