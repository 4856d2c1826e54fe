/* Smoke kernel: proves the native build and loader work (used by tests/test_native.py). */
#include <stdint.h>

int64_t netmamba_native_abi_version(void) { return 1; }
