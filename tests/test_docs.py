"""The README's set-up commands are the ones CI runs, and its documented commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from covid_cxr_unified.harmonize.cli import app

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)]


def test_readme_opens_with_the_two_setup_commands() -> None:
    demo, tests = _bash_blocks()[:2]
    assert "\n" not in demo and "\n" not in tests
    assert "pip install ." in demo and "covid-cxr demo" in demo and "load_dataset('covid_cxr_unified'" in demo
    assert 'pip install -e ".[test]"' in tests and tests.endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    tests = _bash_blocks()[1]
    ci_lines = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci_lines


def test_every_documented_cli_command_exists() -> None:
    documented = set(re.findall(r"covid-cxr (\w+)", (REPO / "README.md").read_text(encoding="utf-8")))
    for command in documented:
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0, command
