"""Reading one JSON object key by key, and its large lists item by item, in bounded memory.

Each value and list item is decoded by the standard library's own JSON decoder (`raw_decode`, what
`json.loads` runs), with lone surrogates replaced as `load_json` does, so every value is exactly what
`load_json` gives for the whole text. Only the top-level object (keys, `:`, `,`, whitespace) is walked
here. Input that is not one well-formed JSON object with distinct keys raises `NotStreamable`: the
caller then reads it whole, as before, and gets the same errors as before. (An item sits two levels
less deep than in the whole text, so one within two levels of the recursion limit decodes here where
`json.loads` of the whole gave up.)

ijson (yajl2_c) was tried and not used: it rejects NaN/Infinity (which `json.loads` accepts and the
COCO export may hold), turns lone surrogates into `?`, rejects a UTF-8 BOM, and builds a prefix
string per nesting level, so a deeply nested file exhausts memory instead of failing.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from covid_cxr_unified.adapters.urls import without_surrogates

CHUNK_BYTES = 1 << 18
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as json.loads skips it
_NUMBER_CHARS = re.compile(r"[0-9.eE+\-]*")
# The escapes `load_json` looks for: only they make lone surrogates.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DECODER = json.JSONDecoder()


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class NotStreamable(Exception):
    """The input is not one well-formed JSON object with distinct keys."""


@dataclass
class Member:
    """One key of the top-level object. `items` yields each item of a list under a streamed key with
    its JSON text (read them all before asking for the next member); any other value is decoded
    whole into `value`."""

    key: str
    value: Any = None
    items: Iterator[tuple[Any, str]] | None = None


def members(binary: Readable, streamed: Collection[str], chunk_bytes: int | None = None) -> Iterator[Member]:
    """The members of the JSON object in `binary` (UTF-8, BOM allowed), read to its end, `chunk_bytes`
    (default CHUNK_BYTES) at a time."""
    return _Reader(binary, chunk_bytes or CHUNK_BYTES).members(streamed)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Reader:
    def __init__(self, binary: Readable, chunk_bytes: int) -> None:
        self._binary = binary
        self._chunk_bytes = chunk_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self._text = ""
        self._pos = 0
        self._eof = False

    def members(self, streamed: Collection[str]) -> Iterator[Member]:
        self._expect("{")
        if self._peek() == "}":
            self._pos += 1
        else:
            keys: set[str] = set()
            while True:
                yield from self._member(keys, streamed)
                if self._next_of(",}") == "}":
                    break
        if self._peek():
            raise NotStreamable("data after the JSON object")

    def _member(self, keys: set[str], streamed: Collection[str]) -> Iterator[Member]:
        if self._peek() != '"':
            raise NotStreamable("a key is not a string")
        key = self._value()
        if key in keys:  # json.loads keeps the last value: read whole
            raise NotStreamable(f"key {key!r} given twice")
        keys.add(key)
        self._expect(":")
        if key in streamed and self._peek() == "[":
            self._pos += 1
            items = self._items()
            yield Member(key, items=items)
            for _ in items:  # what the caller left unread
                pass
        else:
            yield Member(key, value=self._value())

    def _items(self) -> Iterator[tuple[Any, str]]:
        if self._peek() == "]":
            self._pos += 1
            return
        while True:
            yield self._decode()
            if self._next_of(",]") == "]":
                return

    def _value(self) -> Any:
        return self._decode()[0]

    def _decode(self) -> tuple[Any, str]:
        """The value at the cursor (after whitespace) and its text; while the value may be cut by the end
        of the text read so far, read more (`_read_more` keeps the text from the value's start)."""
        self._skip_whitespace()
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, self._pos)
            except (json.JSONDecodeError, RecursionError) as exc:
                if self._read_more():
                    continue
                raise NotStreamable(str(exc)) from exc
            if _is_number(value) and _NUMBER_CHARS.fullmatch(self._text, end) and self._read_more():
                continue  # the text read so far ends in the number, which may go on ("1" of "1e5")
            if _SURROGATE_ESCAPE.search(self._text, self._pos, end):
                value = without_surrogates(value)
            text, self._pos = self._text[self._pos : end], end
            return value, text

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise NotStreamable(f"expected {char!r}")
        self._pos += 1

    def _next_of(self, chars: str) -> str:
        found = self._peek()
        if not found or found not in chars:
            raise NotStreamable(f"expected one of {chars!r}")
        self._pos += 1
        return found

    def _peek(self) -> str:
        """The next character that is not whitespace ('' at the end)."""
        self._skip_whitespace()
        return self._text[self._pos : self._pos + 1]

    def _skip_whitespace(self) -> None:
        while True:
            self._pos = _WHITESPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]  # matches ''
            if self._pos < len(self._text) or not self._read_more():
                return

    def _read_more(self) -> bool:
        """Append at least one chunk (and as much as is held, so re-decoding a long value stays linear)."""
        if self._eof:
            return False
        size = max(self._chunk_bytes, len(self._text) - self._pos)
        data = self._binary.read(size)
        self._eof = not data
        try:
            text = self._decoder.decode(data, final=self._eof)
        except UnicodeDecodeError as exc:
            raise NotStreamable(str(exc)) from exc
        self._text = self._text[self._pos :] + text
        self._pos = 0
        return True
