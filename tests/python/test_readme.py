"""The README's Python examples, run verbatim; the output block after each must match."""
import contextlib
import io
import os
import re

import pytest

from conftest import ROOT, SHARED

# A ```python block, optionally followed by a plain ``` block: the output it prints.
BLOCK = re.compile(r"```python\n(.*?)```\n(?:\s*```\n(.*?)```)?", re.S)


def examples():
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_has_python_examples():
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example(index, tmp_path, monkeypatch):
    code, expected = examples()[index]
    # Paths in the README are relative to the checkout: give the example a working folder
    # beside a ../shared link, so the files it writes land in the temp dir.
    (tmp_path / "shared").symlink_to(SHARED)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md python example {index}", "exec"), {"__name__": "__readme__"})
    if expected:
        assert out.getvalue() == expected
