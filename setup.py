"""The optional C extension: initscope's fused statistics kernel (initscope/stats/kernel.c).

Everything else about the package is in pyproject.toml; this file only declares the extension,
which setuptools cannot take from pyproject.toml. ``optional=True``: where no C compiler works,
the install still succeeds, without the kernel, and initscope computes with torch instead.
"""

import sysconfig

from setuptools import Extension, setup

# The limited API makes one build serve every CPython from 3.10 on (an abi3 wheel); a
# free-threaded CPython does not offer it, so there the module is built for that Python alone.
LIMITED = not sysconfig.get_config_var("Py_GIL_DISABLED")

kernel = Extension(
    "initscope.stats._kernel",
    ["initscope/stats/kernel.c"],
    optional=True,
    py_limited_api=LIMITED,
    define_macros=[("Py_LIMITED_API", "0x030A0000")] if LIMITED else [],
    extra_compile_args=[
        "-O3",
        # no errno and no floating-point traps to preserve: the compare-and-select loops
        # vectorize
        "-fno-math-errno",
        "-fno-trapping-math",
        # No fused multiply-add: a*b+c rounded once would give other bits on CPUs that have
        # FMA, and a report must be the same bytes on every machine.
        "-ffp-contract=off",
        # GCC notes that 32-byte vectors pass differently with AVX; the helpers that take
        # them are static and inlined, so no call between the two conventions exists.
        "-Wno-psabi",
    ],
)

setup(
    ext_modules=[kernel],
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if LIMITED else {},
)
