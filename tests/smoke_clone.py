"""A temporary git copy of the project on the smoke profile, for tests that run the real `dvc` commands.

Shared by the fault-injection tests (test_faults_pin.py) and the experiment-queue test (test_queue.py):
the working tree as it is (results/ and runs/ left out), params.yaml switched to the smoke profile with
the arms and seeds a test asks for, the prepared data copied in (or prepared), committed to git.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASET = "fashion-mnist"


def run(clone: Path, *cmd: str, check: bool = False, timeout: float = 900,
        capture: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in ``clone`` with the clone's varmix on the path, one thread, no progress bars, and ``env``'s
    variables on top (the caller's VARMIX_WORKDIR and DVC_ROOT are dropped unless ``env`` sets them). ``capture=False``
    sends its output to /dev/null: for a command that leaves processes behind holding its stdout and stderr
    (`dvc queue start`'s workers), whose captured output would not end before they do."""
    extra = env or {}
    env = {**os.environ, "PYTHONPATH": str(clone), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "MPLBACKEND": "Agg", "DVC_NO_ANALYTICS": "1"}
    env.pop("VARMIX_WORKDIR", None)
    env.pop("DVC_ROOT", None)
    env.update(extra)
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    out = subprocess.run(cmd, cwd=clone, env=env, stdout=pipe, stderr=pipe, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def dvc(clone: Path, *args: str, check: bool = False, timeout: float = 900,
        capture: bool = True) -> subprocess.CompletedProcess:
    return run(clone, sys.executable, "-m", "dvc", *args, check=check, timeout=timeout, capture=capture)


def make(dst: Path, arms: list[str], seeds: list[int]) -> Path:
    """The project's tracked and untracked-but-not-ignored files copied to ``dst`` (results/ and runs/ left
    out), params.yaml on the smoke profile with ``arms`` and ``seeds`` (no comparisons: the arms may lack
    their rivals; no rival_arms), the prepared data, all committed to a new git repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("results/", "runs/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    raw = yaml.safe_load((dst / "params.yaml").read_text())
    text = (dst / "params.yaml").read_text()
    text = text.replace(f"profile: {raw['profile']}", "profile: smoke", 1)
    text = re.sub(r"^arms: \[[^\]]*\]", f"arms: [{', '.join(arms)}]", text, count=1, flags=re.M)  # may span lines
    text = re.sub(r"^seeds: \[[^\]]*\]", f"seeds: [{', '.join(map(str, seeds))}]", text, count=1, flags=re.M)
    text = re.sub(r"^comparisons:\n(  .*\n)+", "comparisons: {}\n", text, count=1, flags=re.M)
    text = re.sub(r"^rival_arms: \[[^\]]*\]", "rival_arms: []", text, count=1, flags=re.M)
    text = re.sub(r"^rival_seeds: \[[^\]]*\]", f"rival_seeds: [{', '.join(map(str, seeds))}]", text, count=1, flags=re.M)
    # the regime chapter: its smallest run, the first arm over two seeds (its intervals need two)
    text = re.sub(r"^regime_arms: \[[^\]]*\]", f"regime_arms: [{arms[0]}]", text, count=1, flags=re.M)
    text = re.sub(r"^regime_seeds: \[[^\]]*\]", "regime_seeds: [0, 1]", text, count=1, flags=re.M)
    (dst / "params.yaml").write_text(text)
    got = yaml.safe_load(text)
    assert (got["profile"], got["arms"], got["seeds"], got["rival_arms"], got["rival_seeds"]) == (
        "smoke", arms, seeds, [], seeds), "params.yaml's layout changed"
    if (ROOT / "data" / DATASET / "meta.json").is_file():
        shutil.copytree(ROOT / "data", dst / "data")
    else:
        run(dst, sys.executable, "-m", "varmix", "prepare-data", check=True)
    for cmd in (("git", "init", "-q"), ("git", "config", "user.email", "t@t"), ("git", "config", "user.name", "t"),
                ("git", "add", "-A"), ("git", "commit", "-qm", "clone")):
        run(dst, *cmd, check=True)
    return dst
