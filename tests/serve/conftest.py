"""Fixtures of the service tests: a real Redis server, stores of both kinds, records."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netmamba.serve.store import ResultStore, open_store

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on a Unix socket (no TCP port to collide with)."""
    pytest.importorskip("redis", reason="the redis package is not installed (netmamba[redis])")
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    folder = tmp_path_factory.mktemp("redis")
    sock = folder / "redis.sock"
    command = [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.02)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    """A started, empty store of each backend (Redis: a fresh key prefix on the shared server)."""
    if request.param == "sqlite":
        s = open_store(str(tmp_path / "results.sqlite"), write_interval_s=0.01)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"t{time.monotonic_ns()}:"
        s = open_store(url, prefix=prefix, write_interval_s=0.01)
    yield s
    s.close()
