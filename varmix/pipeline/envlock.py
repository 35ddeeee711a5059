"""The installed Python environment against the project's lock, ``requirements.lock``.

The lock pins every package ``make install`` puts in the environment (direct and transitive, the test extra,
and the two wheels installed without dependencies) to one version with its sha256 hashes; ``make install``
installs exactly it with ``pip install --require-hashes --no-deps``. Committed bytes (the results site's
pages, the executed notebooks) depend on these versions, so an environment that drifted from the lock can
fail a byte comparison far from its cause. ``check`` turns that into one line naming the first difference
(``python -m varmix check-env``, run by ``make install`` and by the tests).

pip-compile writes the lock; it has no reader, so this module parses the two line forms it writes:
``name==version \\`` and the ``--hash`` continuation lines (skipped), plus the header's ``with Python X.Y``.
"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys
from pathlib import Path

from varmix.core import errors

LOCK = "requirements.lock"
# Installed beside the locked packages and not pinned by the lock: the installer itself (pip, and wheel,
# which a conda environment's pip brings), and the project, installed from the checkout (`pip install
# --no-deps -e .`). Neither installer takes part in running the study.
UNLOCKED = frozenset({"pip", "wheel", "varmix"})
FIX = "run `make install` to install exactly the lock (or `make lock` to refresh it on purpose: README, Install)"

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_PYTHON = re.compile(r"with Python (\d+)\.(\d+)")


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Ruamel.YAML`` and ``ruamel-yaml`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> tuple[dict[str, str], tuple[int, int] | None]:
    """The lock's pins ``{canonical name: version}`` and the Python (major, minor) it was compiled for
    (None when its header does not say)."""
    pins: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _PIN.match(line)
        if m is None:
            continue
        name = canonical(m.group(1))
        if name in pins and pins[name] != m.group(2):
            raise errors.UserError(f"{LOCK} line {n}: {m.group(1)} pinned twice ({pins[name]} and {m.group(2)}); "
                                   "regenerate it with `make lock`")
        pins[name] = m.group(2)
    py = _PYTHON.search(text)
    return pins, (int(py.group(1)), int(py.group(2))) if py else None


def installed() -> dict[str, list[str]]:
    """``{canonical name: [versions]}`` of every distribution this interpreter can import (more than one
    version means two copies on sys.path, itself a drift)."""
    found: dict[str, list[str]] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), []).append(dist.version)
    return found


def drift(pins: dict[str, str], found: dict[str, list[str]]) -> list[str]:
    """Every difference between the lock's pins and the installed distributions, one sentence each, sorted by
    package name: a different or missing version, two installed copies, a package the lock does not know."""
    out: list[str] = []
    for name in sorted(set(pins) | set(found)):
        versions = sorted(set(found.get(name, [])))
        if name in UNLOCKED:
            continue
        if name not in pins:
            out.append(f"{name} {', '.join(versions)} is installed but not in the lock")
        elif not versions:
            out.append(f"{name} is not installed (the lock pins {pins[name]})")
        elif versions != [pins[name]]:
            out.append(f"{name} {' and '.join(versions)} is installed, the lock pins {pins[name]}")
    return out


def check(root: str | Path, python: tuple[int, int] | None = None, machine: str | None = None) -> str:
    """Check this environment against ``root/requirements.lock``; return a one-line summary, or raise
    ``UserError`` whose first line names the first difference. ``python`` and ``machine`` default to this
    interpreter's (arguments for the tests)."""
    path = Path(root) / LOCK
    if not path.is_file():
        raise errors.UserError(f"no {LOCK} in {Path(root).resolve()}: the environment lock is part of the "
                               "project checkout")
    pins, locked_py = read_lock(path.read_text())
    python = python or sys.version_info[:2]
    machine = (machine or platform.machine()).lower()
    if locked_py is not None and python != locked_py:
        raise errors.UserError(f"this is Python {python[0]}.{python[1]}, {LOCK} is for Python "
                               f"{locked_py[0]}.{locked_py[1]} on x86-64 Linux: make the environment with "
                               f"python{locked_py[0]}.{locked_py[1]} (BASE_PYTHON=python{locked_py[0]}."
                               f"{locked_py[1]} make install)")
    if machine not in ("x86_64", "amd64"):
        raise errors.UserError(f"this machine is {machine}, {LOCK} is for x86-64 Linux: install from "
                               "pyproject.toml's ranges instead (`pip install -e .[test]`), unlocked")
    diffs = drift(pins, installed())
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise errors.UserError(f"the environment differs from {LOCK}: {diffs[0]}{more}; {FIX}")
    return f"environment OK: {len(pins)} packages as {LOCK} pins (Python {python[0]}.{python[1]})"
