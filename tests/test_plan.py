"""The analysis plan: analysis_plan.yaml is checked once, agrees with params.yaml's family, and the report
can tell whether it was committed before the results it decides."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from varmix.core import config, errors, plan

ROOT = Path(__file__).resolve().parents[1]


def _committed() -> dict:
    return yaml.safe_load((ROOT / plan.PLAN_FILE).read_text())


def test_the_committed_plan_is_valid_and_its_family_is_params_yamls():
    p = plan.load_plan(ROOT)
    assert p.version == len(p.changes) and p.alpha == 0.05 and 0 < p.power < 1
    plan.check_family(p, config.load_params(ROOT / "params.yaml").comparisons)
    assert set(p.sesoi) == set(p.images) == {"corruption_accuracy", "ece", "gamma_8", "pgd_accuracy"}


def test_the_deciding_profile_runs_the_plans_sizes():
    """params.yaml's default profile (the committed study) trains and scores at the sizes the plan fixed: its
    family's seeds, and per claim the test images the chapter scores."""
    p = plan.load_plan(ROOT)
    params = config.load_params(ROOT / "params.yaml")
    default = params.profiles["default"]
    assert len(params.seeds) == p.seeds
    assert {"corruption_accuracy": default.eval.test_subset, "ece": default.train.test_subset,
            "gamma_8": default.eval.linearity_images, "pgd_accuracy": default.eval.perturbation_images} == p.images


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("sesoi"), "missing key sesoi"),
    (lambda d: d.update(extra=1), "unknown key extra"),
    (lambda d: d.update(alpha=1.5), "alpha = 1.5 is invalid: expected a number between 0 and 1"),
    (lambda d: d["sesoi"].update(ece=0), "sesoi.ece = 0 is invalid: expected a finite number > 0"),
    (lambda d: d["sizes"]["images"].pop("ece"), "sizes.images = .* is invalid: expected one size per claim"),
    (lambda d: d["sizes"].update(seeds=0), "sizes.seeds = 0 is invalid: expected an integer >= 1"),
    (lambda d: d.update(version=4), "changes = \\[1, 2, 3\\] is invalid: expected one entry per version 1..4"),
    (lambda d: d["pilot"].update(commit="abc"), "pilot = .* is invalid: expected a mapping with commit"),
])
def test_a_bad_plan_is_one_line_naming_the_key(edit, message):
    d = _committed()
    edit(d)
    with pytest.raises(errors.ConfigError, match=message):
        plan.parse_plan(d)


def test_a_family_other_than_the_plans_is_refused():
    p = plan.load_plan(ROOT)
    with pytest.raises(errors.ConfigError, match="differ from analysis_plan.yaml's family .* as a new plan version"):
        plan.check_family(p, {"varmixup": ["mixup"]})


def _git(repo: Path, *args: str, date: str = "2026-01-01T00:00:00") -> None:
    env = {"PATH": "/usr/bin:/bin", "GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date}
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True, env=env)


def test_provenance_says_whether_the_plan_precedes_the_results(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results").mkdir(parents=True)
    _git(repo, "init", "-q")
    data = repo / "results" / "per_image.npz"
    data.write_bytes(b"pilot")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pilot results")
    shutil.copyfile(ROOT / plan.PLAN_FILE, repo / plan.PLAN_FILE)
    uncommitted = plan.provenance(repo, [data])
    assert uncommitted["precedes"] is False and "not committed" in uncommitted["statement"]
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "plan", date="2026-01-02T00:00:00")
    pilot = plan.provenance(repo, [data])
    assert pilot["precedes"] is False and "committed after these results: they are its pilot" in pilot["statement"]
    data.write_bytes(b"the deciding study")  # new results, not committed yet: newer than the plan
    fresh = plan.provenance(repo, [data])
    assert fresh["precedes"] is True and fresh["plan_commit"] and "committed before these results" in fresh["statement"]
    assert plan.provenance(repo, [tmp_path / "scratch.npz"])["precedes"] is True  # outside the repository
