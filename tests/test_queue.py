"""Issue 14, item 2: a sweep through DVC's experiment queue, as the README shows it.

Two experiments (seed 0 and seed 1 of the smoke profile's ERM arm) are queued with
`dvc exp run --queue -S seeds=[N] -S rival_seeds=[N] train data.dvc`, run by `dvc queue start -j 1` (DVC's own workers, in
temporary workspaces under .dvc/tmp/exps), and both must come back: listed by `dvc exp show`, marked
Success by `dvc queue status`, and each one's training metrics present after `dvc exp apply`.
Each experiment trains the two smoke VAEs, one classifier and the regime chapter's two smoke runs in its own
copy of the project: about
6 to 13 minutes in all on a shared, busy 2-core CPU (2026-11-26), the queue's two runs one after the other.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import smoke_clone

QUEUE_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    if shutil.which("git") is None or not (smoke_clone.ROOT / ".git").exists():
        pytest.skip("needs git and the project as a git checkout")
    pytest.importorskip("dvc")
    clone = smoke_clone.make(tmp_path_factory.mktemp("varmix-queue"), ["erm"], [0])
    # the queue's workspaces check data/ out of the cache: put the pinned data there (what `make data` does)
    smoke_clone.dvc(clone, "commit", "--force", "data.dvc", check=True)
    for seed in (0, 1):
        # with targets, a workspace checks out only the targets and their upstream stages, and no stage lists
        # data/ (dvc.yaml's check stage says why): data.dvc is named so that data/ is checked out too
        # train_regime too: `dvc exp apply` checks out every stage's cached outputs and fails on a stage the
        # experiment never ran ("Checkout failed"), and the regime chapter's runs are the smoke clone's only
        # other cached outputs (its two smoke runs, seconds each)
        smoke_clone.dvc(clone, "exp", "run", "--queue", "--name", f"seed-{seed}", "-S", f"seeds=[{seed}]",
                        "-S", f"rival_seeds=[{seed}]", "train", "train_regime", "data.dvc",
                        check=True)  # rival_seeds: within seeds
    smoke_clone.dvc(clone, "queue", "start", "-j", "1", check=True, capture=False, timeout=120)
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    try:
        while True:
            status = smoke_clone.dvc(clone, "queue", "status", check=True).stdout
            if not any(word in status for word in ("Queued", "Running")):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{status}")
            time.sleep(5)
    finally:
        smoke_clone.dvc(clone, "queue", "stop")  # the workers DVC started, if any is still up
    return clone, status


def test_both_queued_experiments_succeed_and_are_listed(queued):
    clone, status = queued
    rows = [line.split() for line in status.splitlines()]
    done = {row[1]: row for row in rows if len(row) > 1 and row[1].startswith("seed-")}
    assert set(done) == {"seed-0", "seed-1"}, status
    assert all("Success" in row for row in done.values()), status
    shown = json.loads(smoke_clone.dvc(clone, "exp", "show", "--json", check=True).stdout)
    names = {exp.get("name") for commit in shown for exp in (commit.get("experiments") or [])}
    assert {"seed-0", "seed-1"} <= names, names


def test_each_experiment_brings_back_its_own_run(queued):
    clone, _ = queued
    metrics = clone / "results" / "fashion-mnist" / "smoke" / "metrics"
    accuracy = {}
    for seed in (0, 1):
        # back to the baseline first (neither run): `exp apply` leaves the files an earlier apply added
        smoke_clone.run(clone, "git", "reset", "-q", "--hard", check=True)
        smoke_clone.run(clone, "git", "clean", "-q", "-fdx", "results", "runs", check=True)
        smoke_clone.dvc(clone, "exp", "apply", f"seed-{seed}", check=True)
        mine = metrics / f"train-erm-s{seed}.json"
        other = metrics / f"train-erm-s{1 - seed}.json"
        assert mine.is_file(), sorted(p.name for p in metrics.glob("*"))
        assert not other.is_file(), "an experiment brought back the other seed's run"
        accuracy[seed] = json.loads(mine.read_text())
        assert (clone / "runs" / "fashion-mnist" / "smoke" / "models" / f"erm-s{seed}" / "model.pt").is_file()
    assert accuracy[0] != accuracy[1]  # two seeds, two different runs
