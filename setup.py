"""Installs the switchyard Python package, building the C++ core with the one CMake build.

    pip install --no-build-isolation -e .     # editable, into the environment that has torch
    pip wheel --no-build-isolation .          # a wheel

There is no second build definition: this runs scripts/build (CMake + Ninja), which writes
libswitchyard and the _C extension into python/switchyard/, and packages that folder.
--no-build-isolation matters: the build compiles against the torch of the installing
environment (an isolated build would download a second multi-GB torch).
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithCMake(build_py):
    def run(self):
        env = dict(os.environ)
        env.setdefault("SWITCHYARD_VENV", sys.prefix)  # build against this interpreter's torch
        subprocess.run([str(ROOT / "scripts" / "build")], check=True, env=env)
        super().run()


setup(
    name="switchyard",
    version="0.1.0",
    description="Distributed Mixture-of-Experts training in C++/CUDA",
    packages=find_packages(where="python"),
    package_dir={"": "python"},
    package_data={"switchyard": ["_C*.so", "libswitchyard.so"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy", "pyyaml"],
    cmdclass={"build_py": BuildWithCMake},
    zip_safe=False,
)
