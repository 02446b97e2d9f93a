"""Nothing in a build leaks where or by whom it was made, nor an access token; tests run offline.

The demo sources are written under a folder named like a user's home (`/…/home/<name>/…`), the V7
export and the ieee8023 metadata get signed URLs (`?token=…`, as V7 exports carry), and the user
name the process sees is set to the same distinctive name. Every output file is then searched, byte
by byte and (for Parquet) decoded, for the folder, the name, the real user name and `token=`.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import socket
import urllib.request
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from covid_cxr_unified.harmonize.build import BuildOptions, build
from covid_cxr_unified.harmonize.synthetic import write_demo_sources
from covid_cxr_unified.schema.vocab import Source

USER = "zoe-quixley-7319"  # distinctive: appears nowhere unless a path or user name leaked
SECRET = "SeCrEtToKeN"
COMMON_NAMES = {"root", "user", "runner", "admin", "ubuntu", "test"}  # too common to search for


def _sign_v7_zip(path: Path) -> None:
    """Give every image of the COCO export signed V7 URLs, as a fresh export has."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    for name, data in members.items():
        if name.endswith(".json"):
            document = json.loads(data)
            for index, image in enumerate(document.get("images", [])):
                image["darwin_url"] = f"https://darwin.v7labs.com/api/images/{index}/original?token={SECRET}"
                image["darwin_workview_url"] = f"https://darwin.v7labs.com/workview?image={index}&token={SECRET}"
                image["coco_url"] = f"https://darwin.v7labs.com/api/images/{index}/original?token={SECRET}"
            members[name] = json.dumps(document).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _sign_ieee8023_urls(metadata: Path) -> None:
    with metadata.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    column = rows[0].index("url")
    for row in rows[1:]:
        if len(row) == len(rows[0]) and row[column].startswith("http"):
            row[column] = f"{row[column]}?token={SECRET}"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    metadata.write_text(buffer.getvalue(), encoding="utf-8")


@pytest.fixture(scope="module")
def leaky_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(home, build): the demo built from and into a user-like home folder, with signed URLs."""
    home = tmp_path_factory.mktemp("leaks") / "home" / USER
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("USER", "LOGNAME", "USERNAME"):
            patch.setenv(variable, USER)
        patch.setenv("HOME", str(home))
        specs = write_demo_sources(home / "datasets" / "sources", seed=0)
        by_source = {spec.source: spec for spec in specs}
        _sign_v7_zip(by_source[Source.V7_DARWIN].path)
        _sign_ieee8023_urls(by_source[Source.IEEE8023].path / "metadata.csv")
        out = home / "datasets" / "covid_cxr_unified"
        build(specs, BuildOptions(out=out, progress=False))
    return home, out


def _needles(home: Path) -> dict[str, bytes]:
    needles = {"home folder": str(home).encode(), "user name": USER.encode(), "access token": b"token="}
    needles["secret"] = SECRET.encode()
    real = getpass.getuser()
    if len(real) >= 4 and real.lower() not in COMMON_NAMES:
        needles["real user name"] = real.encode()
    return needles


def test_the_build_holds_no_path_user_name_or_token(leaky_build: tuple[Path, Path]) -> None:
    home, out = leaky_build
    files = sorted(p for p in out.rglob("*") if p.is_file())
    kinds = {p.suffix for p in files}
    assert {".parquet", ".json", ".md"} <= kinds, kinds
    leaks = []
    for path in files:
        data = path.read_bytes()
        texts = [data]
        if path.suffix == ".parquet":  # compressed pages could hide a string from a byte search
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
        for what, needle in _needles(home).items():
            if any(needle.lower() in text.lower() for text in texts):
                leaks.append(f"{path.relative_to(out)}: {what}")
    assert not leaks, leaks


def test_stripped_tokens_are_recorded_as_repairs(leaky_build: tuple[Path, Path]) -> None:
    _, out = leaky_build
    repairs = []
    for config in ("v7_darwin", "ieee8023"):
        for shard in sorted((out / "data" / config).glob("*.parquet")):
            for value in pq.read_table(shard, columns=["provenance"]).column("provenance").to_pylist():
                repairs += json.loads(value)["repairs"] if isinstance(value, str) else value["repairs"]
    assert any(r.startswith("access token removed from the URL in raw darwin_workview_url") for r in repairs)
    assert any(r.startswith("access token removed from the URL in raw url") for r in repairs)


def test_sockets_are_blocked_in_tests() -> None:
    with pytest.raises(OSError, match="network access blocked"):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(OSError, match="network access blocked"):
        sock.connect(("127.0.0.1", 9))
    with pytest.raises(OSError):
        urllib.request.urlopen("https://huggingface.co/api/datasets", timeout=1)
