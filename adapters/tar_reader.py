"""Safe, in-place reading of release archives: sha1 verification and untrusted tar members.

Archives are streamed member by member (`tarfile` stream mode) and never extracted. A member whose
name is absolute or climbs out with `..`, and any link, device or FIFO, makes the whole archive
refused with `UnsafeMemberError`: a release archive has no reason to contain one.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from covid_cxr_unified.adapters.limits import DEFAULT_MAX_ARCHIVE_MEMBERS
from covid_cxr_unified.harmonize.errors import SourceFormatError, SourceNotFoundError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_CHUNK = 1 << 20


class UnsafeMemberError(SourceFormatError):
    """A tar member that could write or read outside the release (absolute, `..`, link, device)."""


class ChecksumMismatchError(SourceFormatError):
    """An archive whose sha1 differs from the one published in `sha1sums.txt`."""


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def read_sha1sums(path: Path) -> dict[str, str]:
    """`sha1sums.txt` as {file name: sha1}; accepts `<sha1>  name` and `sha1sum -b`'s `<sha1> *name`."""
    sums: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceFormatError(f"{path.name} is not UTF-8 text") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 40:
            raise SourceFormatError(f"{path.name} line {number} is not '<sha1>  <file>': {line[:80]!r}")
        name = parts[1].strip().removeprefix("*")
        sums[posixpath.basename(name)] = parts[0].lower()
    return sums


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha1(path: Path, sums: dict[str, str], sums_name: str = "sha1sums.txt") -> None:
    """Raise unless `path` is listed in `sums` with its actual sha1."""
    expected = sums.get(path.name)
    if expected is None:
        raise SourceFormatError(
            f"{path.name} is not listed in {sums_name}; re-download it or remove it from {path.parent}"
        )
    actual = file_sha1(path)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path.name}: sha1 {actual} differs from {sums_name} ({expected}); the archive is corrupt or "
            "was altered, download it again"
        )


def check_member(archive: str, member: tarfile.TarInfo) -> str:
    """The member's normalized name; raise UnsafeMemberError for anything but safe files and folders."""
    name = member.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in the name (tarfile keeps them as surrogates)
        raise SourceFormatError(f"{archive}: member {name!r} is not a UTF-8 name; refusing the archive") from None
    if not (member.isfile() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "device or special file"
        raise UnsafeMemberError(f"{archive}: member {name!r} is a {kind}; refusing the archive")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeMemberError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    parts = name.split("/")
    if ".." in parts:
        raise UnsafeMemberError(f"{archive}: member {name!r} climbs out with '..'; refusing the archive")
    return "/".join(p for p in parts if p not in ("", "."))


def iter_archive(
    path: Path,
    want: Callable[[str], bool],
    max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS,
    max_bytes: Callable[[str], int | None] | None = None,
) -> Iterator[tuple[str, tarfile.TarInfo, bytes | None]]:
    """Stream (name, member, bytes-or-None) for every file member; bytes only where `want(name)` and
    the member is no larger than `max_bytes(name)` (None: no limit), so a bomb is never read.

    Every member, folders included, is checked before anything is read from it; an archive with
    more than `max_members` members is refused.
    """
    for name, member, _, data in iter_archive_pieces(path, want, max_members, max_bytes, piece_bytes=-1):
        yield name, member, data


def iter_archive_pieces(
    path: Path,
    want: Callable[[str], bool],
    max_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS,
    max_bytes: Callable[[str], int | None] | None = None,
    piece_bytes: int = _CHUNK,
) -> Iterator[tuple[str, tarfile.TarInfo, int, bytes | None]]:
    """`iter_archive`, with a read member's bytes in pieces so that none is held whole: (name, member,
    offset, piece) for each piece of `piece_bytes` bytes (the last may be shorter; at least one, empty
    for an empty member); (name, member, 0, None) for a member left unread. `piece_bytes=-1`: one piece.
    """
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise SourceFormatError(
                        f"{path.name}: more than {max_members} members (max_archive_members); refusing the archive"
                    )
                name = check_member(path.name, member)
                if not member.isfile():
                    continue
                limit = None if max_bytes is None else max_bytes(name)
                if want(name) and (limit is None or member.size <= limit):
                    handle = tar.extractfile(member)
                    offset, piece = 0, handle.read(piece_bytes) if handle is not None else b""
                    while True:  # a buffered read returns `piece_bytes` bytes unless the member ends
                        yield name, member, offset, piece
                        offset += len(piece)
                        if handle is None or not (piece := handle.read(piece_bytes)):
                            break
                else:
                    yield name, member, 0, None
                # a stream keeps every member it has read (for getmembers()): memory per member, not needed here
                tar.members = []  # type: ignore[attr-defined]
    except FileNotFoundError as exc:
        raise SourceNotFoundError(f"archive {path} disappeared while reading") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SourceFormatError(f"{path.name}: not a readable tar archive ({exc})") from exc
