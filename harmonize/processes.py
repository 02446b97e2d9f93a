"""Calls run in forked worker processes, their results taken in call order (so never dependent on
which process finishes first)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def imap_ordered(calls: Sequence[tuple[Any, ...]], num_proc: int) -> Iterator[Any]:
    """`fn(*args)` for each `(fn, *args)` of `calls`, in up to `num_proc` forked processes, yielded in call
    order as each is ready. A call's exception is raised at its turn; the calls not yet started are then
    cancelled. Without fork (or with one process or one call) the calls run here, one per item taken."""
    if num_proc <= 1 or len(calls) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for fn, *args in calls:
            yield fn(*args)
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(min(num_proc, len(calls)), mp_context=context) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in calls]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

