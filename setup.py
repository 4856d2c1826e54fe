"""Builds the optional native kernels (plain C, loaded with ctypes; see netmamba/_native.py).

Every `src/netmamba/csrc/<name>.c` becomes `netmamba/_native_<name>*.so`. The kernels use no
Python C API and no torch headers, so they build in seconds with any C compiler, and a failed
build is not fatal: netmamba then falls back to its pure-PyTorch paths and says so once.
Kernels pick AVX-512 / AVX2 / generic code at run time (GCC function multiversioning), so a
build is never tied to the CPU it was made on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("src/netmamba/csrc")


class OptionalBuildExt(build_ext):
    """Build what can be built; warn, never fail, when a compiler is missing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any compiler problem means "no native kernels"
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc, ext.name)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # plain C library loaded by ctypes: no PyInit_ symbol to export

    @staticmethod
    def _warn(exc: Exception, name: str = "native kernels") -> None:
        print(
            f"WARNING: could not build {name} ({exc}); netmamba will use its PyTorch fallback.",
            file=sys.stderr,
        )


# -ffp-contract=fast lets a*b+c become one FMA (-std=c11 alone turns contraction off);
# -Wno-psabi silences a note about 32-byte vector arguments of static (never exported) helpers.
COMPILE_ARGS = ["-O3", "-std=c11", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
COMPILE_ARGS += ["-pthread"]
LINK_ARGS = ["-pthread"]


def native_extensions() -> list[Extension]:
    extensions = []
    for source in sorted(CSRC.glob("*.c")):
        # OpenMP only for kernels that use it: torch bundles its own OpenMP runtime, and a second
        # one in the same process can spin against it.
        openmp = ["-fopenmp"] if "#pragma omp" in source.read_text() else []
        extensions.append(
            Extension(
                f"netmamba._native_{source.stem}",
                sources=[str(source)],
                depends=[str(h) for h in sorted(CSRC.glob("*.h"))],
                extra_compile_args=COMPILE_ARGS + openmp,
                extra_link_args=LINK_ARGS + openmp,
                libraries=[] if sys.platform == "win32" else ["m"],
            )
        )
    return extensions


setup(ext_modules=native_extensions(), cmdclass={"build_ext": OptionalBuildExt})
