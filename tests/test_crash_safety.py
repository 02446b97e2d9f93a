"""Crash safety: a build killed with SIGKILL anywhere leaves the previous build intact (or, before any
build, none) and never a partial one; rerunning completes; BIMCV archive units finished before the
kill are reused, not redone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from treedigest import tree_digest

from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.engine import KILL_ENV
from covid_cxr_unified.harmonize.synthetic.bimcv import write_bimcv
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.schema.vocab import Source

CHECKPOINTS = ("after-unit-1", "after-unit-3", "before-route", "before-guard", "before-swap", "after-swap")


def _cli(ieee8023: Path, bimcv: Path, out: Path, kill_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = kill_at
    cmd = [sys.executable, "-m", "covid_cxr_unified.harmonize", "build", "--ieee8023", str(ieee8023)]
    cmd += ["--bimcv", str(bimcv), "--out", str(out), "--no-progress"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two versions of the inputs, a build of each (the 'previous' and the 'expected' one)."""
    root = tmp_path_factory.mktemp("crash")
    old = write_ieee8023(root / "old", seed=1, patients=12).root
    new = write_ieee8023(root / "new", seed=2, patients=12).root
    bimcv = write_bimcv(root / "bimcv", seed=2, archives=True).root
    for name, ieee in (("previous", old), ("expected", new)):
        specs = [SourceSpec(Source.IEEE8023, ieee), SourceSpec(Source.BIMCV, bimcv)]
        build(specs, BuildOptions(out=root / name, progress=False))
    return {
        "old": old,
        "new": new,
        "bimcv": bimcv,
        "previous": tree_digest(root / "previous"),
        "expected": tree_digest(root / "expected"),
    }


def _visible(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))


def test_sigkill_at_every_checkpoint_leaves_the_previous_build_or_the_new_one(
    inputs: dict[str, object], tmp_path: Path
) -> None:
    new, bimcv = inputs["new"], inputs["bimcv"]
    assert isinstance(new, Path) and isinstance(bimcv, Path)
    out = tmp_path / "out"
    build(
        [SourceSpec(Source.IEEE8023, inputs["old"]), SourceSpec(Source.BIMCV, bimcv)],  # type: ignore[arg-type]
        BuildOptions(out=out, progress=False),
    )
    assert tree_digest(out) == inputs["previous"]
    for point in CHECKPOINTS:
        proc = _cli(new, bimcv, out, kill_at=point)
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, point
        assert _visible(tmp_path) == ["out"], point
        state = tree_digest(out)
        if point == "after-swap":  # the exchange happened: the new build, complete (the last point)
            assert state == inputs["expected"], point
        else:
            assert state == inputs["previous"], point
    proc = _cli(new, bimcv, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert tree_digest(out) == inputs["expected"]
    assert _visible(tmp_path) == ["out"]


def test_sigkill_after_random_delays_never_shows_a_partial_build(inputs: dict[str, object], tmp_path: Path) -> None:
    new, bimcv = inputs["new"], inputs["bimcv"]
    assert isinstance(new, Path) and isinstance(bimcv, Path)
    out = tmp_path / "out"
    rng = random.Random(7)
    for _ in range(3):
        proc = _cli(new, bimcv, out)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if out.exists():  # the kill came late: only ever the complete new build
            assert tree_digest(out) == inputs["expected"]
        assert _visible(tmp_path) in ([], ["out"])
    proc = _cli(new, bimcv, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert tree_digest(out) == inputs["expected"]


def test_an_interrupted_archive_build_resumes_without_redoing_finished_units(
    inputs: dict[str, object], tmp_path: Path
) -> None:
    new, bimcv = inputs["new"], inputs["bimcv"]
    assert isinstance(new, Path) and isinstance(bimcv, Path)
    out = tmp_path / "out"
    proc = _cli(new, bimcv, out, kill_at="after-unit-2")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    staging = tmp_path / ".out.partial" / "spool"
    finished = sorted(p for p in staging.rglob("*.json"))
    assert len(finished) == 2
    stamps = {p: p.stat().st_mtime_ns for p in staging.rglob("*") if p.is_file()}
    result = build(
        [SourceSpec(Source.IEEE8023, new), SourceSpec(Source.BIMCV, bimcv)],
        BuildOptions(out=out, progress=False),
    )
    assert result.units.resumed == 2 and result.units.processed == sum(
        s["units"] for s in result.units.by_source.values()
    ) - 2
    assert tree_digest(out) == inputs["expected"]
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items() if p.exists())
    assert not (tmp_path / ".out.partial").exists()


def test_a_changed_archive_is_not_resumed(inputs: dict[str, object], tmp_path: Path) -> None:
    new = inputs["new"]
    assert isinstance(new, Path)
    bimcv = write_bimcv(tmp_path / "bimcv", seed=2, archives=True).root
    out = tmp_path / "out"
    proc = _cli(new, bimcv, out, kill_at="after-unit-2")
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    write_bimcv(tmp_path / "bimcv", seed=3, archives=True)  # other content, same names
    result = build(
        [SourceSpec(Source.IEEE8023, new), SourceSpec(Source.BIMCV, bimcv)],
        BuildOptions(out=out, progress=False),
    )
    assert result.units.resumed == 0
    fresh = build(
        [SourceSpec(Source.IEEE8023, new), SourceSpec(Source.BIMCV, bimcv)],
        BuildOptions(out=tmp_path / "fresh", progress=False, resume=False),
    )
    assert tree_digest(out) == tree_digest(tmp_path / "fresh") and result.fingerprint == fresh.fingerprint
