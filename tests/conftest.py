"""Fixtures for integration tests: a real broker, a real emulator, real connector processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ManagedProcess, free_port, python_module, start_broker, wait_until


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Kill (by process group) whatever a test started and did not stop, e.g. after a failed assert.
    Session fixtures (broker, emulator) are set up before this snapshot and are left alone."""
    before = len(ManagedProcess.started)
    yield
    for proc in ManagedProcess.started[before:]:
        if proc.alive():
            proc.kill()
    del ManagedProcess.started[before:]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Kafka-compatible broker for the session; tests isolate by topic prefix and group."""
    proc, bootstrap = start_broker(tmp_path_factory.mktemp("broker"))
    yield bootstrap
    proc.stop()


class Emulator:
    def __init__(self, url: str, proc: ManagedProcess) -> None:
        self.url = url
        self.proc = proc
        self.http = httpx.Client(base_url=url, timeout=10)

    def stats(self) -> dict[str, Any]:
        return self.http.get("/__emulator/stats").json()

    def ids(self) -> dict[str, int]:
        return self.http.get("/__emulator/ids").json()["ids"]

    def messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.http.get("/__emulator/messages", params={"offset": offset, "limit": 5000}).json()
            out += page["messages"]
            if not page["messages"]:
                return out
            offset = page["next"]

    def faults(self, **knobs: Any) -> None:
        self.http.post("/__emulator/faults", json=knobs).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete("/__emulator/faults").raise_for_status()


def start_emulator(tmp_path: Path, *args: str) -> Emulator:
    port = free_port()
    proc = ManagedProcess(python_module("connector.dev.emulator", "--port", str(port), *args),
                          log_path=tmp_path / f"emulator-{port}.log")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/__emulator/health", timeout=1).status_code == 200, 30, what="emulator")
    return Emulator(url, proc)


@pytest.fixture()
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    em = start_emulator(tmp_path)
    yield em
    em.proc.stop()


@pytest.fixture()
def prefix() -> str:
    """A unique topic prefix per test, so tests sharing the broker never see each other's records."""
    return f"t{uuid.uuid4().hex[:10]}.capillary.events."
