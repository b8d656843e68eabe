"""`pip install .` with Debian's tooling only (no build isolation, no index), reusing the
CMake build tree the tests run from, into a temporary --target."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_pip_install_into_a_target(tmp_path):
    build = os.environ.get("QK_BUILD_DIR")
    if not build:
        pytest.skip("QK_BUILD_DIR is not set: run through ctest (reuses its build tree)")
    target = tmp_path / "site"
    env = dict(os.environ, QUANTKIT_BUILD_DIR=build, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               CMAKE_BUILD_PARALLEL_LEVEL="2")
    env.pop("PYTHONPATH", None)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--target", str(target), str(ROOT)], check=True, env=env, timeout=300)
    installed = list(target.glob("quantkit*.so"))
    assert len(installed) == 1
    assert list(target.glob("quantkit-*.dist-info"))
    probe = "import quantkit; print(quantkit.__file__); print(quantkit.Format('q4_0').bits_per_weight(8, 256))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=str(target)), cwd=tmp_path).stdout.split()
    assert out == [str(installed[0]), "4.5"]
