"""Calls in forked processes come back in call order; an error surfaces at its turn and stops the rest."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from covid_cxr_unified.harmonize.processes import imap_ordered


def _after(seconds: float, value: str) -> tuple[str, int]:
    time.sleep(seconds)
    return value, os.getpid()


def _touch_after(seconds: float, path: Path) -> None:
    time.sleep(seconds)
    path.touch()


def _fail(message: str) -> None:
    raise ValueError(message)


def test_results_come_in_call_order_from_worker_processes() -> None:
    calls = [(_after, 0.5, "slow"), (_after, 0.0, "fast"), (_after, 0.0, "last")]
    results = list(imap_ordered(calls, 2))
    assert [value for value, _ in results] == ["slow", "fast", "last"]
    assert os.getpid() not in {pid for _, pid in results}
    here = list(imap_ordered(calls, 1))
    assert [value for value, _ in here] == ["slow", "fast", "last"] and {pid for _, pid in here} == {os.getpid()}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_an_error_comes_at_its_turn_and_calls_not_started_are_cancelled(tmp_path: Path, num_proc: int) -> None:
    calls = [(_touch_after, 0.0, tmp_path / "0"), (_fail, "call 1 broke")]
    calls += [(_touch_after, 0.2, tmp_path / str(n)) for n in range(2, 30)]
    results = imap_ordered(calls, num_proc)
    assert next(results) is None and (tmp_path / "0").is_file()
    with pytest.raises(ValueError, match="call 1 broke"):
        next(results)
    started = len(list(tmp_path.iterdir()))
    assert 1 <= started <= (1 if num_proc == 1 else 8)  # here: none after the error; a pool: those already queued
