"""Shared test fixtures: the real files in ../shared/data, and the synthetic sources."""

from __future__ import annotations

import _socket
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real source files. Skipped only when the folder is absent; in CI its absence fails."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real data folder {SHARED_DATA} is missing in CI")
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reaches the network or the user's HF cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


class NetworkBlockedError(OSError):
    """Raised by any attempt to open a network connection during a test."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets cannot connect: a test that needs the network fails instead of reaching it."""

    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(original: Any) -> Any:
        def connect_or_refuse(sock: socket.socket, address: Any) -> Any:
            if sock.family == getattr(socket, "AF_UNIX", None):  # local IPC (e.g. worker processes)
                return original(sock, address)
            raise NetworkBlockedError(f"network access blocked in tests: {address!r}")

        return connect_or_refuse

    def refuse(address: Any, *args: object, **kwargs: object) -> Any:
        raise NetworkBlockedError(f"network access blocked in tests: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dask talks TCP between its processes: allow 127.0.0.1 only (conftest blocks every address)."""
    original = _socket.socket.connect, _socket.socket.connect_ex  # beneath conftest's guard

    def local(method: Any) -> Any:
        def connect(sock: socket.socket, address: Any) -> Any:
            host = address[0] if isinstance(address, tuple) else None
            if sock.family == socket.AF_UNIX or (host is not None and ipaddress.ip_address(host).is_loopback):
                return method(sock, address)
            raise OSError(f"network access blocked in tests: {address!r}")

        return connect

    monkeypatch.setattr(socket.socket, "connect", local(original[0]))
    monkeypatch.setattr(socket.socket, "connect_ex", local(original[1]))


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo build of every synthetic source (read-only: copy it before changing anything)."""
    from covid_cxr_unified.harmonize.build import BuildOptions, build
    from covid_cxr_unified.harmonize.synthetic import write_demo_sources

    root = tmp_path_factory.mktemp("demo")
    specs = write_demo_sources(root / "sources", seed=0)
    build(specs, BuildOptions(out=root / "covid_cxr_unified", progress=False))
    return root / "covid_cxr_unified"
