"""Shared paths for the Python tests: the checkout, ../shared (real model and texts), the CLI."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
MODEL = SHARED / "models" / "aidreams260K.bin"
TOKENIZER = SHARED / "models" / "aidreams-tok512.bin"
EVAL_TEXT = SHARED / "data" / "aidreams-eval.txt"
CALIB_TEXT = SHARED / "data" / "aidreams-calib.txt"
SEPARATOR = "<|endoftext|>"


@pytest.fixture(scope="session")
def cli():
    """The quantkit binary of the same build (ctest sets QK_CLI)."""
    path = os.environ.get("QK_CLI")
    if not path or not Path(path).exists():
        pytest.skip("QK_CLI is not set: run through ctest to compare with the CLI")
    return path


@pytest.fixture(scope="session")
def model():
    import quantkit
    return quantkit.load_model(str(MODEL), tokenizer=str(TOKENIZER))


@pytest.fixture(scope="session")
def eval_text():
    import quantkit
    return quantkit.read_text(str(EVAL_TEXT), SEPARATOR)
