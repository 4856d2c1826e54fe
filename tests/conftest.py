"""Shared test settings: where the real captures are (optional) and where artefacts go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NETMAMBA_SHARED_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = Path(os.environ.get("NETMAMBA_TEST_ARTIFACTS", REPO / "test-artifacts"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real captures of ../shared/data; the test skips, saying so, when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real captures not found at {SHARED_DATA} (set NETMAMBA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """A folder for artefacts a test keeps (screenshots, reports) for a person to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a test module (`pytestmark = usefixtures("one_torch_thread")`):
    the test models are tiny, and on a shared 2-core machine a team of spinning threads made a
    tiny training step 20x slower (430 ms against 23 ms, measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
