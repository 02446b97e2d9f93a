"""The streamed JSON reader gives exactly what load_json gives for the whole text, at any chunk size,
and refuses (NotStreamable) whatever it cannot stream, so the caller reads it whole as before."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from covid_cxr_unified.adapters.urls import load_json
from covid_cxr_unified.adapters.v7_stream import NotStreamable, members

STREAMED = {"images", "annotations"}

READABLE = [
    b"{}",
    b' \n{ "a" : 1 }\r\n',
    b'{"images": [], "other": [1, 2]}',
    b'{"images": [{"x": 1}, 2, "s", [3], null, NaN, -Infinity, 1e400, 123456789012345678901234567890]}',
    '\ufeff{"images": [{"f": "a\\ud800b"}, "\\ud83d\\ude00", "é"]}'.encode(),
    b'{"images": {"not": "a list"}, "annotations": [ 1 , 2 ]}',
    b'{"images\\u0073": [1], "\\ud800": 2}',
    b'{"a": 1e5, "b": -0.0, "c": true, "d": false, "e": null, "images": [12345, 6.5e-3]}',
    b'{"images": [{"ring": [471.03999999999996, 1e-7, -2.5E+10, 0]}, 7.25, -0.5e-3], "n": 1.5}',
]
NOT_STREAMABLE = [
    b"",
    b"[1]",
    b'{"a": 1, "a": 2}',
    b'{"images": [1,]}',
    b'{"a": 1,}',
    b'{"a": 1} {}',
    b'{"images": [1 2]}',
    b'{"images": [12',
    b'{"a": "\xff"}',
    b'{"images": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
]


def streamed(data: bytes, chunk_bytes: int) -> dict[str, Any]:
    """The document as `members` reads it: streamed lists collected, with their items' texts."""
    document: dict[str, Any] = {}
    for member in members(io.BytesIO(data), STREAMED, chunk_bytes):
        if member.items is None:
            document[member.key] = member.value
        else:
            pairs = list(member.items)
            assert all(load_json(text) == value or value != value for value, text in pairs)  # NaN != NaN
            document[member.key] = [value for value, _ in pairs]
    return document


@pytest.mark.parametrize("data", READABLE)
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 1 << 18])
def test_members_give_what_load_json_gives(data: bytes, chunk_bytes: int) -> None:
    expected = load_json(data.decode("utf-8-sig"))
    assert json.dumps(streamed(data, chunk_bytes)) == json.dumps(expected)  # NaN compares by its text


@pytest.mark.parametrize("data", NOT_STREAMABLE)
@pytest.mark.parametrize("chunk_bytes", [3, 1 << 18])
def test_what_cannot_be_streamed_is_refused_not_guessed(data: bytes, chunk_bytes: int) -> None:
    with pytest.raises(NotStreamable):
        streamed(data, chunk_bytes)


def test_an_item_longer_than_many_chunks_is_read_whole() -> None:
    ring = [i + 0.5 for i in range(20_000)]
    data = json.dumps({"images": [{"ring": ring}, {"ring": ring[:3]}]}).encode()
    assert streamed(data, 64)["images"] == [{"ring": ring}, {"ring": ring[:3]}]
