"""Discovery indexes that stay on disk, so an adapter's memory does not grow with its source.

A `DiskIndex` is one SQLite file of named tables; a `DiskTable` maps str keys to JSON values and
iterates in insertion order, like a dict (`multi=True`: a key may hold many values, in insertion
order). The process that made it writes it (discovery, merging unit results); units only read it,
in any process: a pickled index carries its path, and each process opens its own read-only
connection. The file is scratch: no journal, no fsync.

Keys and values keep undecodable file names (surrogate escapes): keys are stored as surrogateescape
UTF-8 bytes and values as ASCII JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_MISSING = object()


def _key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _unkey(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


class DiskIndex:
    """One SQLite file in a private folder made inside `folder` (default: the system's temporary
    folder), removed when the index that made it is garbage-collected or at exit.

    `at`: the index in that file instead, writable here and never removed by this object: for a worker
    process filling a file in a folder that its parent owns (e.g. `index.path.parent`)."""

    def __init__(self, folder: Path | None = None, name: str = "index", *, at: Path | None = None) -> None:
        if at is None:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f"covid-cxr-{name}-", dir=folder))
            weakref.finalize(self, shutil.rmtree, scratch, True)
            at = scratch / f"{name}.sqlite"
        self.path = at
        self._writable = True
        self._connection: sqlite3.Connection | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._writable = False
        self._connection = None
        self._pid = -1

    @property
    def connection(self) -> sqlite3.Connection:
        """This process's connection (a forked or unpickled copy opens its own, read-only)."""
        if self._connection is None or self._pid != os.getpid():
            if self._writable and self._pid not in (-1, os.getpid()):
                self._writable = False  # a forked child reads what its parent wrote
            if self._writable:
                self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._connection.execute("PRAGMA journal_mode=OFF")
                self._connection.execute("PRAGMA synchronous=OFF")
            else:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._connection = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            self._pid = os.getpid()
        return self._connection

    def table(self, name: str, *, multi: bool = False) -> DiskTable:
        """The table `name` (created empty on first use by the writing process)."""
        return DiskTable(self, name, multi)


class DiskTable:
    """str -> JSON value, in insertion order; with `multi`, a key holds a list of values."""

    def __init__(self, index: DiskIndex, name: str, multi: bool) -> None:
        if not name.isidentifier():
            raise ValueError(f"table name must be an identifier, not {name!r}")
        self.index = index
        self.name = name
        self.multi = multi
        self._created = False

    def _db(self) -> sqlite3.Connection:
        db = self.index.connection
        if not self._created and self.index._writable:
            unique = "" if self.multi else " UNIQUE"
            columns = f"seq INTEGER PRIMARY KEY, key BLOB{unique}, value TEXT"
            db.execute(f"CREATE TABLE IF NOT EXISTS {self.name} ({columns})")
            if self.multi:
                db.execute(f"CREATE INDEX IF NOT EXISTS {self.name}_key ON {self.name} (key)")
            self._created = True
        return db

    def update(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """Set (or, with `multi`, add) many values in one transaction; a set key keeps its position."""
        rows = ((_key(key), _dump(value)) for key, value in pairs)
        db = self._db()
        db.execute("BEGIN")
        if self.multi:
            db.executemany(f"INSERT INTO {self.name} (key, value) VALUES (?, ?)", rows)
        else:
            upsert = "ON CONFLICT(key) DO UPDATE SET value=excluded.value"
            db.executemany(f"INSERT INTO {self.name} (key, value) VALUES (?, ?) {upsert}", rows)
        db.execute("COMMIT")

    def __setitem__(self, key: str, value: Any) -> None:
        self.update([(key, value)])

    def get(self, key: str, default: Any = None) -> Any:
        """The value (with `multi`: the list of values, `default` when none)."""
        if not self._exists():
            return default
        cursor = self._db().execute(f"SELECT value FROM {self.name} WHERE key = ? ORDER BY seq", (_key(key),))
        if self.multi:
            values = [json.loads(value) for (value,) in cursor]
            return values if values else default
        row = cursor.fetchone()
        return default if row is None else json.loads(row[0])

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str) or not self._exists():
            return False
        found = self._db().execute(f"SELECT 1 FROM {self.name} WHERE key = ? LIMIT 1", (_key(key),)).fetchone()
        return found is not None

    def __len__(self) -> int:
        """The number of keys."""
        if not self._exists():
            return 0
        count = "COUNT(DISTINCT key)" if self.multi else "COUNT(*)"
        return int(self._db().execute(f"SELECT {count} FROM {self.name}").fetchone()[0])

    def __bool__(self) -> bool:
        return self._exists() and self._db().execute(f"SELECT 1 FROM {self.name} LIMIT 1").fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def keys(self) -> Iterator[str]:
        """Keys in first-insertion order."""
        for key, _ in self._rows(values=False):
            yield key

    def items(self) -> Iterator[tuple[str, Any]]:
        """(key, value) in insertion order (with `multi`: one pair per value)."""
        for key, value in self._rows(values=True):
            yield key, json.loads(value)

    def values(self) -> Iterator[Any]:
        for _, value in self.items():
            yield value

    def _rows(self, values: bool) -> Iterator[tuple[str, str]]:
        if not self._exists():
            return
        if self.multi and not values:
            query = f"SELECT key, NULL FROM {self.name} GROUP BY key ORDER BY MIN(seq)"
        else:
            query = f"SELECT key, value FROM {self.name} ORDER BY seq"
        # A separate cursor streams rows in pages; the table is not written while it is read.
        for raw, value in self._db().execute(query):
            yield _unkey(raw), value

    def _exists(self) -> bool:
        if self._created:
            return True
        found = self._db().execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (self.name,)).fetchone()
        self._created = found is not None
        return self._created
