"""varmix.study.headline: the per-arm headline numbers and the verdicts as the small files DVC shows."""

import json

import pandas as pd
import pytest

from varmix.study import headline


def _runs():
    rows = []
    for arm, base in (("erm", 0.70), ("varmixup", 0.72)):
        for seed in (0, 1):
            rows.append({"arm": arm, "seed": seed, "accuracy": base + seed / 100, "corruption_accuracy": base - 0.1,
                         "ece": 0.1 + seed / 10, "nll": 0.9, "gamma_8": 0.25, "pgd_accuracy": 0.3, "regime": "under-confident"})
    return pd.DataFrame(rows)


def _table():
    return pd.DataFrame([
        {"claim": "1. corruptions", "metric": "corruption_accuracy", "arm": "varmixup", "rival": "erm",
         "verdict": "holds"},
        {"claim": "2. calibration", "metric": "ece", "arm": "varmixup", "rival": "erm", "verdict": "inconclusive"},
        {"claim": "3. local linearity", "metric": "gamma_8", "arm": "varmixup", "rival": "erm",
         "verdict": "contradicted"}])


def test_summary_has_one_row_per_arm_and_per_pair_in_five_columns():
    out = headline.summary(_runs(), _table(), ["varmixup", "erm"])
    assert list(out) == ["varmixup", "erm", "varmixup-vs-erm"]
    assert out["erm"] == {"acc": 0.705, "corr_acc": 0.6, "ece": 0.15, "nll": 0.9, "gamma_8": 0.25, "pgd_acc": 0.3}
    assert out["varmixup-vs-erm"] == {"corr_acc": "holds", "ece": "inconclusive", "gamma_8": "contradicted"}
    assert {k for v in out.values() for k in v} <= set(headline.COLUMNS)


def test_write_gives_one_json_per_entry(tmp_path):
    paths = headline.write(tmp_path / "summary", headline.summary(_runs(), _table(), ["erm", "varmixup"]))
    assert sorted(p.name for p in paths) == ["erm.json", "varmixup-vs-erm.json", "varmixup.json"]
    assert json.loads((tmp_path / "summary" / "varmixup.json").read_text())["acc"] == 0.725


def test_an_arm_without_runs_is_named():
    with pytest.raises(ValueError, match=r"arm 'mixup' has no runs in the runs table \(arms there: \['erm', 'varmixup'\]\)"):
        headline.summary(_runs(), _table(), ["erm", "mixup"])


def test_missing_columns_and_unknown_metrics_are_named():
    with pytest.raises(ValueError, match=r"runs table lacks the columns \['gamma_8'\]"):
        headline.summary(_runs().drop(columns="gamma_8"), _table(), ["erm"])
    with pytest.raises(ValueError, match=r"claims on metrics \['brier'\] have no headline column"):
        headline.summary(_runs(), _table().assign(metric="brier"), ["erm"])


def test_bad_names_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"headline names \['../x'\] are invalid"):
        headline.write(tmp_path / "s", {"erm": {"acc": 1.0}, "../x": {"acc": 0.0}})
    assert not (tmp_path / "s").exists()


def test_tally_counts_holds_and_contradicted_per_claim_in_short_columns():
    table = pd.concat([_table(), _table().assign(rival="mixup", verdict=["contradicted", "holds", "contradicted"])])
    assert headline.tally(table) == {"holds": {"corr": 1, "ece": 1, "gamma": 0},
                                     "contradicted": {"corr": 1, "ece": 0, "gamma": 2},
                                     "equiv": 0}
    assert list(headline.tally(table)["holds"]) == ["corr", "ece", "gamma"]  # COLUMNS' order


def test_tally_refuses_a_table_it_cannot_read():
    with pytest.raises(ValueError, match=r"comparison table lacks the columns \['verdict'\]"):
        headline.tally(_table().drop(columns="verdict"))
    with pytest.raises(ValueError, match=r"claims on metrics \['brier'\] have no headline column"):
        headline.tally(_table().assign(metric="brier"))


def test_dvc_shows_the_committed_headline_in_200_columns():
    """The declared metrics are the tally alone: `dvc metrics show` prints one row that fits a terminal of
    200 columns (declaring the per-arm files made `dvc exp show` ~16,000 columns wide)."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["dvc", "metrics", "show"], cwd=root, capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[1].split()[0].endswith("/metrics/headline.json"), out
    assert max(map(len, lines)) <= 200, out
    header, values = lines[0].split()[1:], lines[1].split()[1:]
    assert sorted(header) == sorted([f"{v}.{k}" for v in ("holds", "contradicted") for k in ("corr", "ece", "gamma", "pgd")]
                                    + ["equiv"])
    assert all(v.isdigit() for v in values)
