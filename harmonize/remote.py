"""A build whose output is any fsspec URL (`memory://`, `s3://bucket/x`, `gcs://…`, …).

The build itself is the local one, unchanged, made in a local staging folder (`staging/build`, with
its `.build.partial` and lock beside it), so it keeps every local guarantee: the atomic local swap,
the resume of an interrupted build's units, one build at a time, the split guard. Then the finished
folder is uploaded and the local copy removed.

Upload order: every file in sorted path order except the card and the marker, then the card
`README.md`, then the build marker (`build_report.json`) last; afterwards the files under the URL that
the new build does not have (stale shards of a previous build) are deleted. So once the card is
there, every shard it declares is there too.

The upload is NOT atomic (object stores have no rename of a folder):
- while it runs, a reader can see the previous build's card with some files already replaced by the
  new build's (shards of the same name, figures, `splits/`), and the stale shards of the previous
  build stay until the new card and marker are in place;
- an interrupted upload leaves that mix behind. Each file is written by one `put_file`: on object
  stores (S3, GCS, Azure) an object appears whole or not at all; on file-like protocols (sftp, …) an
  interrupted file can be partial. Rerunning the same command rebuilds locally (the finished local
  build is not reused) and uploads again, which repairs the folder;
- one build at a time per staging folder is enforced with a local lock only: two machines writing
  the same URL are not detected.

A folder under the URL is written only when it is empty, absent, a previous build (it holds the
marker) or a previous upload that was interrupted (it holds `UPLOAD_MARKER`, written first and
deleted last).

Credentials come from fsspec's usual configuration and environment (or `storage_options`); a URL's
`user:password@` part and query values are never printed nor put into an error message, and the
default staging folder is keyed by a hash of the URL without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
from fsspec.callbacks import Callback  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]
from tqdm import tqdm

from covid_cxr_unified.harmonize.build import BUILD_MARKER, BuildOptions, BuildResult, SourceSpec, build
from covid_cxr_unified.harmonize.errors import BuildError, HarmonizeError

CARD = "README.md"
UPLOAD_MARKER = ".covid-cxr-upload-in-progress"  # written first, deleted last: an interrupted upload's folder
LOCAL_PROTOCOLS = frozenset({"file", "local"})
CACHE_ENV = "COVID_CXR_UNIFIED_CACHE"  # default: $XDG_CACHE_HOME/covid-cxr-unified or ~/.cache/covid-cxr-unified


class RemoteOutputError(BuildError):
    """The fsspec output cannot be written: protocol not installed, folder not a build, upload failed."""


class StorageOptionError(HarmonizeError):
    """A `--storage-option` is not KEY=VALUE."""


@dataclass
class RemoteBuildResult:
    build: BuildResult  # `build.out` is the local staging build, removed after a successful upload
    url: str  # the output URL without credentials
    uploaded: list[str] = field(default_factory=list)  # relative paths, in upload order
    uploaded_bytes: int = 0
    removed: list[str] = field(default_factory=list)  # stale files deleted under the URL


def is_url(out: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than a local file (`memory://x`, `s3://b/x`, `simplecache::s3://…`)."""
    if isinstance(out, os.PathLike):
        return False
    if "::" in out:  # a chained URL: fsspec opens it, whatever its last protocol
        return True
    protocol = fsspec.core.split_protocol(out)[0]
    return protocol is not None and protocol not in LOCAL_PROTOCOLS


def local_path(out: str) -> Path | None:
    """The local folder `out` names (a path or a `file://` URL), or None when it is another protocol."""
    if is_url(out):
        return None
    protocol = fsspec.core.split_protocol(out)[0]
    return Path(LocalFileSystem._strip_protocol(out)) if protocol else Path(out)


def redact_url(url: str) -> str:
    """`url` without `user:password@` and with every query value replaced by `***` (any query value may be
    a signature, e.g. `X-Goog-Signature`, so none is kept; the adapters' list of token keys is not enough)."""
    return "::".join(_redact_one(part) for part in url.split("::"))


def _redact_one(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<URL hidden: it does not parse>"
    netloc = parts.netloc.rpartition("@")[2]
    masked = "&".join(f"{urllib.parse.quote(key, safe='')}=***" for key, _ in query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=masked))


def _secrets(url: str) -> list[str]:
    """The parts of `url` that must not be shown: user info, password, query values (longest first)."""
    found: set[str] = set()
    for part in url.split("::"):
        try:
            parts = urllib.parse.urlsplit(part)
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            found.add(part)
            continue
        userinfo = parts.netloc.rpartition("@")[0]
        found.update({userinfo, *userinfo.split(":", 1)} if userinfo else set())
        found.update(value for _, value in query)
        found.add(parts.query)
    candidates = {s for s in found if len(s) >= 3}
    candidates |= {urllib.parse.quote(s, safe="") for s in candidates}
    return sorted(candidates, key=len, reverse=True)


def scrub(text: str, url: str, hidden: Sequence[str] = ()) -> str:
    """`text` (e.g. an exception message) on one line, with the secrets of `url` and the `hidden` texts
    (storage option values) replaced by `***`."""
    for secret in sorted({*_secrets(url), *(h for h in hidden if len(h) >= 6)}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _hidden(storage_options: Mapping[str, Any] | None) -> list[str]:
    """The text values of the storage options: any may be a credential."""
    return [value for value in (storage_options or {}).values() if isinstance(value, str)]


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """`["anon=true", "endpoint_url=http://…"]` -> keyword arguments of the filesystem; a VALUE that
    parses as JSON (true, 3, {…}) is that value, anything else is text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StorageOptionError(f"storage option {key.strip() or '?'!r} is not KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def default_staging(url: str) -> Path:
    """Where a build to `url` is made before upload: one folder per URL (keyed by a hash of the URL
    without credentials), so an interrupted build to the same URL resumes its units there."""
    cache = os.environ.get(CACHE_ENV) or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "covid-cxr-unified"
    )
    key = hashlib.sha256(redact_url(url).encode()).hexdigest()[:16]
    return Path(cache) / "remote-builds" / key


@contextlib.contextmanager
def _remote(action: str, url: str, hidden: Sequence[str] = ()) -> Iterator[None]:
    """Any error of the filesystem (each backend has its own types) -> one line without credentials."""
    try:
        yield
    except HarmonizeError:
        raise
    except Exception as exc:
        message = scrub(str(exc), url, hidden) or "no message"
        raise RemoteOutputError(f"cannot {action} {redact_url(url)}: {type(exc).__name__}: {message}") from None


def open_output(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The filesystem and root path of `url`; a one-line error for a protocol that is unknown or whose
    package is not installed (fsspec's message says which, e.g. "Install s3fs to access S3")."""
    hidden = _hidden(storage_options)
    with _remote("open", url, hidden):
        try:
            fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        except ImportError as exc:  # fsspec's text names the package, e.g. "Install s3fs to access S3"
            protocol = fsspec.core.split_protocol(url)[0]
            raise RemoteOutputError(
                f"cannot write to {redact_url(url)}: protocol {protocol!r} needs a package that is not "
                f"installed: {scrub(str(exc), url, hidden)}"
            ) from None
        except ValueError as exc:  # "Protocol not known: xyz"
            raise RemoteOutputError(f"cannot write to {redact_url(url)}: {scrub(str(exc), url, hidden)}") from None
    root = str(root).rstrip("/")
    if not root.strip("/"):
        raise RemoteOutputError(f"{redact_url(url)}: give a folder inside the filesystem, not its root")
    return fs, root


def _listing(fs: Any, root: str) -> dict[str, str]:
    """Relative path -> full path of every file under `root` ({} when it does not exist)."""
    if not fs.exists(root):
        return {}
    if fs.isfile(root):
        return {"": root}
    files: dict[str, str] = {}
    for path in fs.find(root, withdirs=False, detail=False):
        path = str(path).rstrip("/")
        if path.startswith(root + "/"):
            files[path[len(root) + 1 :]] = path
    return files


def check_replaceable(fs: Any, root: str, url: str, hidden: Sequence[str] = ()) -> dict[str, str]:
    """Like the local build's guard: refuse a non-empty folder that is not a build (nor an interrupted
    upload of one). Returns the current listing."""
    with _remote("list", url, hidden):
        files = _listing(fs, root)
        empty_folder = not files and (not fs.exists(root) or not fs.ls(root, detail=False))
    if "" in files:
        raise RemoteOutputError(f"{redact_url(url)} is a file, not a folder; choose another --out")
    if not empty_folder and BUILD_MARKER not in files and UPLOAD_MARKER not in files:
        raise RemoteOutputError(
            f"{redact_url(url)} is not empty and is not a covid-cxr build; choose another --out or remove it"
        )
    return files


def upload_order(folder: Path) -> list[str]:
    """Relative paths of the build's files: sorted, then the card, then the build marker last."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    last = [name for name in (CARD, BUILD_MARKER) if name in files]
    return [name for name in files if name not in last] + last


def upload_build(
    folder: Path,
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    fs_root: tuple[Any, str] | None = None,
) -> tuple[list[str], int, list[str]]:
    """Upload the finished build `folder` to `url` (see the module docstring for the order and what is
    not atomic); returns (uploaded paths, bytes, removed stale paths)."""
    fs, root = fs_root or open_output(url, storage_options)
    hidden = _hidden(storage_options)
    before = check_replaceable(fs, root, url, hidden)
    order = upload_order(folder)
    sizes = {name: (folder / name).stat().st_size for name in order}
    with _remote("upload to", url, hidden):
        if BUILD_MARKER not in before:  # an interrupted first upload must stay recognisable as ours
            fs.pipe_file(f"{root}/{UPLOAD_MARKER}", b"covid-cxr-unified: upload in progress\n")
        with tqdm(
            total=sum(sizes.values()),
            desc="upload",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
        ) as bar:
            for name in order:
                fs.put_file(str(folder / name), f"{root}/{name}", callback=_bar_callback(bar))
    keep = set(order)
    with _remote("remove stale files from", url, hidden):
        stale = sorted(name for name in _listing(fs, root) if name not in keep and name != UPLOAD_MARKER)
        if stale:
            fs.rm([f"{root}/{name}" for name in stale])
            _remove_empty_folders(fs, root, stale)
        if fs.exists(f"{root}/{UPLOAD_MARKER}"):
            fs.rm_file(f"{root}/{UPLOAD_MARKER}")
    return order, sum(sizes.values()), stale


def _bar_callback(bar: tqdm[Any]) -> Any:
    """An fsspec callback that advances `bar` by the bytes each put_file reports."""
    done = [0]

    def advance(size: int | None, value: int, **_: Any) -> None:
        bar.update(value - done[0])
        done[0] = value

    return Callback(hooks={"bar": advance})


def _remove_empty_folders(fs: Any, root: str, removed: list[str]) -> None:
    """Protocols with real folders (sftp, …) keep a folder whose files were all stale; object stores
    have none. Best effort, deepest first."""
    folders = {f"{root}/{parent}" for name in removed for parent in _parents(name)}
    for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
        with contextlib.suppress(Exception):
            if fs.isdir(folder) and not fs.ls(folder, detail=False):
                fs.rmdir(folder)


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@contextlib.contextmanager
def _staging_lock(staging: Path) -> Iterator[None]:
    """One build-and-upload at a time per staging folder (the build's own lock ends before the upload)."""
    staging.mkdir(parents=True, exist_ok=True)
    with (staging / "upload.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RemoteOutputError(
                f"another build is using the staging folder {staging}; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_to_url(
    specs: Sequence[SourceSpec],
    options: BuildOptions,
    url: str,
    staging: Path | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RemoteBuildResult:
    """Build into `staging/build` (default: `default_staging(url)`) and upload it to the fsspec `url`.

    `options.out` is ignored. With a Dask `scheduler`, the units' spools are written under `staging`,
    which every worker must see under the same path (a shared file system); the upload runs here.
    An interrupted build resumes its units from `staging`; an interrupted upload is repaired by running
    again (not atomic: see the module docstring). After a successful upload the local build is removed;
    after a failed one it stays in `staging/build`.
    """
    fs_root = open_output(url, storage_options)
    check_replaceable(*fs_root, url, _hidden(storage_options))  # before spending the build's time
    staging = (staging or default_staging(url)).resolve()
    local = staging / "build"
    with _staging_lock(staging):
        result = build(specs, dataclasses.replace(options, out=local))
        started = time.perf_counter()
        uploaded, size, removed = upload_build(
            local, url, storage_options=storage_options, progress=options.progress, fs_root=fs_root
        )
        result.timings["upload"] = time.perf_counter() - started
        shutil.rmtree(local, ignore_errors=True)
    return RemoteBuildResult(result, redact_url(url), uploaded, size, removed)
