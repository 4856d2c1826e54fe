import pytest

from netmamba import _native


def test_native_selftest_kernel_loads_when_built():
    lib = _native.load("selftest")
    if lib is None:
        pytest.skip("native kernels not built (no C compiler at install time)")
    assert lib.netmamba_native_abi_version() == 1


def test_native_kernels_can_be_disabled(monkeypatch):
    monkeypatch.setenv("NETMAMBA_NO_NATIVE", "selftest")
    _native.load.cache_clear()
    try:
        assert _native.load("selftest") is None
    finally:
        _native.load.cache_clear()
