"""The regime chapter's library (varmix.study.regime): the study's differences beside the longer regime's, and
how each moved; run means and clean accuracy from per-image data."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from varmix.study import regime, stats


def _table(rows):
    base = {"label": "L", "unit": " points", "scale": 100.0, "verdict": "", "n_seeds": 3, "boot_lo": 0.0, "boot_hi": 0.0}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_beside_says_whether_direction_and_size_moved():
    study = [{"claim": "c", "arm": "a", "rival": "b", "diff": 0.02, "t_lo": 0.01, "t_hi": 0.03, "n_seeds": 5},
             {"claim": "c", "arm": "a", "rival": "e", "diff": 0.02, "t_lo": -0.01, "t_hi": 0.05, "n_seeds": 5},
             {"claim": "d", "arm": "a", "rival": "b", "diff": -0.01, "t_lo": -0.02, "t_hi": 0.0, "n_seeds": 5}]
    ours = _table([{"claim": "c", "arm": "a", "rival": "b", "diff": 0.021, "t_lo": 0.0, "t_hi": 0.04},
                   {"claim": "c", "arm": "a", "rival": "e", "diff": -0.04, "t_lo": -0.06, "t_hi": -0.02},
                   {"claim": "d", "arm": "a", "rival": "x", "diff": 0.01, "t_lo": 0.0, "t_hi": 0.02}])
    side = regime.beside(ours, study)
    same, reversed_, missing = side.to_dict(orient="records")
    assert same["direction"] == "same" and same["study_in_regime_ci"] and same["regime_in_study_ci"]
    assert math.isclose(same["ratio"], 1.05)
    assert reversed_["direction"] == "reversed" and not reversed_["study_in_regime_ci"]
    assert not reversed_["regime_in_study_ci"] and math.isclose(reversed_["ratio"], -2.0)
    assert missing["direction"] == "not compared" and math.isnan(missing["study_diff"])  # not in the study's family
    shown = regime.formatted(side)
    assert shown.loc[0, "study (t 95% CI)"] == "+2 points [+1, +3]" and shown.loc[2, "study (t 95% CI)"] == "–"
    empty = regime.beside(_table([]).reindex(columns=stats.COLUMNS), study)  # no pairs: the columns, no rows
    assert empty.empty and "direction" in empty.columns and regime.formatted(empty).empty


def test_run_means_and_clean_accuracy():
    per_image = {"accuracy": {("a", 0): np.array([1.0, 0.0]), ("a", 1): np.array([1.0, 1.0])},
                 "ece": {("a", 0): np.array([[0.9, 1.0], [0.6, 0.0]]), ("a", 1): np.array([[0.5, 1.0], [0.5, 1.0]])}}
    means = regime.run_means(per_image, ["accuracy", "ece"])
    assert means["accuracy"].tolist() == [0.5, 1.0]
    assert means["ece"].tolist() == [stats.ECE()(per_image["ece"][("a", 0)]), stats.ECE()(per_image["ece"][("a", 1)])]
    logits = {"a-s0": (np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0])), "b-s3": (np.eye(2), np.array([0, 1]))}
    acc = regime.clean_accuracy(logits, ["a", "b"])
    assert acc.to_dict(orient="records") == [{"arm": "a", "seed": 0, "accuracy": 0.5}, {"arm": "b", "seed": 3, "accuracy": 1.0}]
    assert regime.clean_accuracy(logits, ["c"]).empty


def test_per_image_refuses_runs_without_logits_before_any_work(tmp_path):
    """Every run scored needs its clean test logits (the committed file's): a missing one is named at once,
    before a model is loaded (the folders here hold none)."""
    import pytest

    folders = {("erm", 0): tmp_path / "erm-s0", ("mixup", 0): tmp_path / "mixup-s0"}
    logits = {"erm-s0": (np.zeros((2, 10), np.float32), np.zeros(2, np.int64))}
    with pytest.raises(ValueError, match=r"no clean test logits for the runs \['mixup-s0'\]"):
        regime.per_image(folders, logits, data=None, ev=None)


def test_stored_logits_reads_each_runs_saved_logits(tmp_path):
    folders = {}
    for arm, sd, value in (("erm", 0, 1.0), ("varmixup", 2, -2.0)):
        f = tmp_path / f"{arm}-s{sd}"
        f.mkdir()
        np.save(f / "test_logits.npy", np.full((3, 10), value, np.float32))
        np.save(f / "test_labels.npy", np.arange(3, dtype=np.int64))
        folders[(arm, sd)] = f
    got = regime.stored_logits(folders)
    assert list(got) == ["erm-s0", "varmixup-s2"]
    assert got["varmixup-s2"][0].tolist() == [[-2.0] * 10] * 3 and got["erm-s0"][1].tolist() == [0, 1, 2]
