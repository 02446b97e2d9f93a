"""ruff and mypy --strict are part of the test suite, so CI enforces them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harmonize", "adapters", "schema", "cards")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO, check=False)


def test_ruff_is_clean() -> None:
    result = _tool("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    packages = [arg for name in PACKAGES for arg in ("-p", f"covid_cxr_unified.{name}")]
    result = _tool("mypy", "--strict", *packages)
    assert result.returncode == 0, result.stdout + result.stderr
