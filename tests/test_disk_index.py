"""The on-disk discovery index behaves like a dict (insertion order), survives pickling and forking
read-only, and keeps undecodable names."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
from pathlib import Path

import pytest

from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable


def test_table_is_an_insertion_ordered_dict(tmp_path: Path) -> None:
    table = DiskIndex(tmp_path).table("files")
    assert not table and len(table) == 0 and "a" not in table and table.get("a") is None
    table.update([("b", {"size": 2}), ("a", [1, "x"]), ("c", None)])
    table["b"] = {"size": 3}  # a set key keeps its place
    assert list(table) == ["b", "a", "c"]
    assert dict(table.items()) == {"b": {"size": 3}, "a": [1, "x"], "c": None}
    assert table["c"] is None and "c" in table and len(table) == 3 and table
    with pytest.raises(KeyError):
        table["missing"]


def test_multi_table_keeps_every_value_in_order(tmp_path: Path) -> None:
    table = DiskIndex(tmp_path).table("tests", multi=True)
    table.update([("s2", 1), ("s1", 2), ("s2", 3)])
    assert table.get("s2") == [1, 3] and table.get("s1") == [2] and table.get("s3", []) == []
    assert list(table.keys()) == ["s2", "s1"] and len(table) == 2
    assert list(table.items()) == [("s2", 1), ("s1", 2), ("s2", 3)]


def test_undecodable_names_round_trip(tmp_path: Path) -> None:
    name = b"sub-\xff/ses.png".decode("utf-8", "surrogateescape")
    table = DiskIndex(tmp_path).table("files")
    table[name] = name
    assert list(table.items()) == [(name, name)]


def test_a_pickled_copy_reads_and_cannot_write(tmp_path: Path) -> None:
    index = DiskIndex(tmp_path)
    index.table("files")["k"] = 1
    copy: DiskTable = pickle.loads(pickle.dumps(index.table("files")))
    assert copy["k"] == 1
    with pytest.raises(Exception, match="readonly"):
        copy["k"] = 2


def _read_in_child(table: DiskTable, queue: multiprocessing.Queue[object]) -> None:
    queue.put(dict(table.items()))


def test_a_forked_process_reads_the_index(tmp_path: Path) -> None:
    table = DiskIndex(tmp_path).table("files")
    table.update([("x", 1), ("y", 2)])
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = context.Queue()
    child = context.Process(target=_read_in_child, args=(table, queue))
    child.start()
    assert queue.get(timeout=30) == {"x": 1, "y": 2}
    child.join()
    assert table["y"] == 2  # the parent still writes and reads


def test_the_index_file_goes_with_its_index(tmp_path: Path) -> None:
    index = DiskIndex(tmp_path)
    index.table("files")["k"] = 1
    path = index.path
    assert path.is_file()
    del index
    gc.collect()
    assert not path.exists() and not path.parent.exists()


def test_an_index_at_a_given_file_is_writable_and_stays(tmp_path: Path) -> None:
    at = tmp_path / "part.sqlite"
    index = DiskIndex(at=at)
    index.table("members", multi=True).update([("a", 1), ("a", 2)])
    del index
    gc.collect()
    assert at.is_file() and DiskIndex(at=at).table("members", multi=True).get("a") == [1, 2]
