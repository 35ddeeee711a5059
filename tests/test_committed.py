"""The committed study's numbers can be recomputed from what is committed (issue 11): every run's clean
test logits (float16, results/<dataset>/<profile>/per_image/logits.npz; the regime chapter's runs':
regime_logits.npz) give the committed calibration numbers exactly, and the whole study's logits stay within 10 MB."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from varmix.core import config, io
from varmix.core.names import run_name
from varmix.evaluate import calibration
from varmix.pipeline import session
from varmix.pipeline.session import Layout, json_ready

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load_params(ROOT / "params.yaml")
LAYOUT = Layout(ROOT, PARAMS.dataset, PARAMS.profile)


def test_committed_logits_give_the_committed_calibration_numbers():
    path = LAYOUT.per_image("logits")
    assert path.is_file(), f"{path} is not committed: run `dvc repro` and commit results/"
    assert path.stat().st_size <= 10_000_000
    stored = io.read_logits(path)
    assert set(stored) == {run_name(a, sd) for a, sd in PARAMS.runs}
    committed = io.read_json(LAYOUT.metrics("calibration"))
    bins = PARAMS.eval.ece_bins
    for name, (logits, labels) in stored.items():
        again = calibration.calibration_metrics(logits, labels, bins)
        for key in ("ece", "mce", "nll", "brier", "overconfidence", "accuracy"):
            # exactly what the notebook wrote: save_metrics keeps 10 decimals (session.json_ready)
            assert json_ready(again[key]) == committed[name][key], (name, key)
        scaled = calibration.temperature_scaled_metrics(logits, labels, bins)
        assert json_ready(scaled["ece_temperature_scaled"]) == committed[name]["ece_temperature_scaled"], name
        assert calibration.regime(again["overconfidence"]) == committed[name]["regime"]


def test_committed_regime_logits_give_the_regime_chapters_clean_numbers():
    """The regime chapter's runs (08_regime) commit their clean test logits too: each run's accuracy and ECE in
    metrics/regime.json recompute exactly from results/<dataset>/<profile>/per_image/regime_logits.npz."""
    from varmix.core.names import run_key
    from varmix.study import regime

    path = LAYOUT.per_image("regime_logits")
    assert path.is_file(), f"{path} is not committed: run `dvc repro regime` and commit results/"
    stored = io.read_logits(path)
    assert set(stored) == {run_name(a, sd) for a in PARAMS.regime_arms for sd in PARAMS.regime_seeds}
    # each run's (confidence, correct) rows, as report.per_image_inputs makes them for the chapter
    rows = {run_key(name): calibration.conf_correct(t, y) for name, (t, y) in stored.items()}
    again = regime.run_means({"accuracy": {k: r[:, 1] for k, r in rows.items()}, "ece": rows}, ["accuracy", "ece"])
    committed = {(r["arm"], r["seed"]): r for r in io.read_json(LAYOUT.metrics("regime"))["runs"]}
    assert len(committed) == len(stored)
    for row in again.to_dict(orient="records"):
        for key in ("accuracy", "ece"):
            assert json_ready(row[key]) == committed[(row["arm"], row["seed"])][key], (row["arm"], row["seed"], key)


# The committed study was made on one machine; on any x86-64 CPU with AVX2 at the pinned torch, a run
# must give the same bytes (README, "Bit-for-bit"). Retraining two of its runs here (erm and mixup: no
# VAE needed, ~30 s each on an idle 2-core AVX2 EPYC) through the pipeline's own notebook checks that on whatever CPU runs the tests.
@pytest.mark.parametrize("arm,seed", [("erm", 0), ("mixup", 1)])
def test_a_committed_run_retrains_to_the_same_bytes_on_this_cpu(arm, seed, tmp_path):
    if not (ROOT / "data" / PARAMS.dataset / "meta.json").is_file():
        pytest.skip("run `python -m varmix prepare-data` first")
    env = {**{k: v for k, v in os.environ.items() if k != session.WORKDIR_ENV}, session.WORKDIR_ENV: str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "varmix", "notebook", "02_train", "--profile", PARAMS.profile,
                        "--arm", arm, "--seed", str(seed)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    name = run_name(arm, seed)
    again = Layout(tmp_path, PARAMS.dataset, PARAMS.profile)
    assert again.metrics(f"train-{name}").read_bytes() == LAYOUT.metrics(f"train-{name}").read_bytes()
    logits = np.load(again.model_dir(arm, seed) / "test_logits.npy")
    committed, _ = io.read_logits(LAYOUT.per_image("logits"))[name]
    assert np.array_equal(logits.astype(np.float16), committed)
