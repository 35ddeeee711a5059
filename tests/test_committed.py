"""The committed study's numbers can be recomputed from what is committed (issue 11): every run's clean
test logits (float16, results/<dataset>/<profile>/per_image/logits.npz) give the committed calibration
numbers exactly, and the whole study's logits stay within 10 MB."""

from pathlib import Path

from varmix import calibration, config, io
from varmix.pipeline import Layout, _plain, run_name

ROOT = Path(__file__).resolve().parents[1]
PARAMS = config.load_params(ROOT / "params.yaml")
LAYOUT = Layout(ROOT, PARAMS.dataset, PARAMS.profile)


def test_committed_logits_give_the_committed_calibration_numbers():
    path = LAYOUT.per_image("logits")
    assert path.is_file(), f"{path} is not committed: run `dvc repro` and commit results/"
    assert path.stat().st_size <= 10_000_000
    stored = io.read_logits(path)
    assert set(stored) == {run_name(a, sd) for a in PARAMS.arms for sd in PARAMS.seeds}
    committed = io.read_json(LAYOUT.metrics("calibration"))
    bins = PARAMS.eval.ece_bins
    for name, (logits, labels) in stored.items():
        again = calibration.calibration_metrics(logits, labels, bins)
        for key in ("ece", "mce", "nll", "brier", "overconfidence", "accuracy"):
            # exactly what the notebook wrote: save_metrics keeps 10 decimals (pipeline._plain)
            assert _plain(again[key]) == committed[name][key], (name, key)
        scaled = calibration.temperature_scaled_metrics(logits, labels, bins)
        assert _plain(scaled["ece_temperature_scaled"]) == committed[name]["ece_temperature_scaled"], name
        assert calibration.regime(again["overconfidence"]) == committed[name]["regime"]
