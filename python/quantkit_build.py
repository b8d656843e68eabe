"""setuptools commands for `pip install .` (named in pyproject.toml): build the extension
with CMake and ship it as a platform wheel. Everything setuptools writes goes under
build-pip/ (ignored by git) or the reused build tree, never into the sources or build/."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools.command.build import build
from setuptools.command.build_ext import build_ext
from setuptools.command.egg_info import egg_info
from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent.parent
# QUANTKIT_BUILD_DIR: an existing CMake build tree to reuse; setuptools' scratch goes there too.
REUSE = os.environ.get("QUANTKIT_BUILD_DIR")
WORK = Path(REUSE).resolve() / "pip" if REUSE else ROOT / "build-pip"


def cmake_build(build_dir: Path) -> Path:
    """Configures (unless build_dir already is a build tree) and builds the module; returns it."""
    if not (build_dir / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                        f"-DPython3_EXECUTABLE={sys.executable}", "-DQUANTKIT_BENCH=OFF"], check=True)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "quantkit_python", "-j", jobs], check=True)
    built = sorted((build_dir / "python").glob("quantkit.*.so"))
    if not built:
        raise RuntimeError(f"{build_dir}: no python/quantkit.*.so was built (pybind11-dev or python3-dev missing?)")
    return built[-1]


class Build(build):
    def initialize_options(self):
        super().initialize_options()
        self.build_base = str(WORK / "setuptools")


class EggInfo(egg_info):
    def initialize_options(self):
        super().initialize_options()
        WORK.mkdir(exist_ok=True)
        self.egg_base = str(WORK)


class BuildWithCMake(build_ext):
    """The extension is CMake's target quantkit_python, not a setuptools Extension."""

    def run(self):
        module = cmake_build(Path(REUSE) if REUSE else WORK / "cmake")
        Path(self.build_lib).mkdir(parents=True, exist_ok=True)
        shutil.copy2(module, Path(self.build_lib) / module.name)


class PlatformWheel(bdist_wheel):
    """The wheel holds a compiled module: the distribution declares one, so build_ext runs,
    the module goes to platlib and the wheel is tagged for this interpreter and platform."""

    def initialize_options(self):
        self.distribution.has_ext_modules = lambda: True
        super().initialize_options()
