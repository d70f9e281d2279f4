"""Build hook for quant's one optional C extension (everything else is in pyproject.toml).

``quant.calibrators._histogram`` is the histogram kernel of calibration. It is optional: where no
C compiler (or no Python headers) is available the build prints a warning, quant installs anyway
and calibration uses its NumPy path, which gives the same statistics bit for bit, about 3x
slower per element (docs/PERFORMANCE.md). ``quant inspect --version`` style checks: see
``quant.calibrators.kernel.NATIVE``.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    compile_args = ["/O2"]
else:
    # -O3 and nothing machine-specific: the .so may run on another CPU than the one that built it.
    # No -ffast-math: the kernel must round exactly like NumPy's float32 multiply.
    compile_args = ["-O3", "-std=c99"]

setup(
    ext_modules=[
        Extension(
            "quant.calibrators._histogram",
            sources=["quant/calibrators/_histogram.c"],
            extra_compile_args=compile_args,
            optional=True,
        )
    ]
)
