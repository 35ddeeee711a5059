"""The public API (varmix/__init__.py) and its documented example (docs/api.md)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_block(text: str) -> str:
    """The one ```python block of docs/api.md (an error when there is none or several)."""
    blocks = re.findall(r"^```python\n(.*?)^```$", text, flags=re.M | re.S)
    if len(blocks) != 1:
        raise AssertionError(f"docs/api.md has {len(blocks)} ```python blocks: expected exactly 1 (the example)")
    return blocks[0]


def test_the_documented_example_runs_and_trains():
    code = python_block(DOC.read_text())
    assert len(code.strip().splitlines()) <= 25, "the example should stay short"
    scope: dict = {"__name__": "api_example"}
    exec(compile(code, str(DOC), "exec"), scope)  # raises if any line of the example fails
    losses, acc = scope["losses"], scope["acc"]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < losses[0], f"the loss did not go down: {losses}"
    assert acc >= 0.9, f"the VarMixup-trained classifier reaches {acc} on its (separable) images"
    mixer = scope["mix"]
    assert mixer.func.__name__ == "varmixup"  # the example trains with VarMixup's mixer


def test_every_public_name_resolves_and_has_a_docstring():
    import varmix

    assert varmix.__all__[0] == "__version__"
    for name in varmix.__all__[1:]:
        value = getattr(varmix, name)
        assert value.__doc__ and value.__doc__.strip(), f"varmix.{name} has no docstring"
        assert name in dir(varmix)
    from varmix.learn import mixing

    assert varmix.varmixup is mixing.varmixup and varmix.make_mixer is mixing.make_mixer
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        varmix.nope  # noqa: B018


def test_the_table_lists_every_public_name():
    table = DOC.read_text().split("## Public names", 1)[1]
    import varmix

    listed = set(re.findall(r"`(\w+)`", table))
    assert set(varmix.__all__[1:]) <= listed, sorted(set(varmix.__all__[1:]) - listed)


@pytest.mark.parametrize("module", ["varmix", "varmix.pipeline"])
def test_importing_varmix_does_not_import_torch(module):
    # `python -m varmix notebook ...` imports varmix.pipeline (and so varmix/__init__): it stays torch-free
    out = subprocess.run([sys.executable, "-c", f"import {module}, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
