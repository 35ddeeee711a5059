"""varmix.core.io's numpy archives: stable bytes, round trips, the committed float16 logits."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from varmix.core import io as vio
from varmix.evaluate import calibration as C


def arrays():
    rng = np.random.default_rng(0)
    return {
        "erm-s0/corruptions": rng.integers(0, 6, (50, 15)).astype(np.uint8),
        "erm-s0/clean": rng.random(50) < 0.9,
        "corruption_names": np.array(["gaussian_noise", "fog"]),
        "severities": np.arange(1, 6),
        "gamma": rng.random((5, 50)).astype(np.float32),
    }


def test_write_npz_round_trip_keys_dtypes_and_order(tmp_path):
    a = arrays()
    vio.write_npz(tmp_path / "a.npz", a)
    back = vio.read_npz(tmp_path / "a.npz")
    assert list(back) == list(a)
    for k in a:
        assert back[k].dtype == a[k].dtype
        np.testing.assert_array_equal(back[k], a[k])
    with np.load(tmp_path / "a.npz") as npz:  # plain numpy reads it too
        np.testing.assert_array_equal(npz["erm-s0/corruptions"], a["erm-s0/corruptions"])
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        infos = zf.infolist()
    assert all(i.compress_type == zipfile.ZIP_DEFLATED and i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind


def test_write_npz_equal_inputs_give_equal_bytes(tmp_path):
    vio.write_npz(tmp_path / "a.npz", arrays())
    first = (tmp_path / "a.npz").read_bytes()
    vio.write_npz(tmp_path / "b.npz", arrays())  # fresh arrays, another name, later time
    vio.write_npz(tmp_path / "a.npz", arrays())  # overwritten in place
    assert (tmp_path / "b.npz").read_bytes() == first == (tmp_path / "a.npz").read_bytes()
    changed = arrays()
    changed["gamma"][0, 0] += 1
    vio.write_npz(tmp_path / "c.npz", changed)
    assert (tmp_path / "c.npz").read_bytes() != first
    # the fixed header date (a zip member otherwise carries the time of writing)
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


@pytest.mark.parametrize("bad, match", [
    ({}, "non-empty mapping"),
    ([("a", np.zeros(2))], "mapping"),
    ({"": np.zeros(2)}, "array key ''"),
    ({"/a": np.zeros(2)}, "array key '/a'"),
    ({"a//b": np.zeros(2)}, "array key 'a//b'"),
    ({"a/../b": np.zeros(2)}, "array key 'a/../b'"),
    ({1: np.zeros(2)}, "array key 1"),
    ({"a": np.array([{}, 1], dtype=object)}, r"arrays\['a'\] has dtype object"),
])
def test_write_npz_errors_before_writing(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        vio.write_npz(tmp_path / "x.npz", bad)
    assert not (tmp_path / "x.npz").exists()


def test_read_npz_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="archive not found"):
        vio.read_npz(tmp_path / "none.npz")
    vio.write_npz(tmp_path / "a.npz", arrays())
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        vio.read_npz(tmp_path / "a.npz")


# ----------------------------------------------------------------------------------------------
# logits
def trained_like(n, k, seed):
    """Logits of a model that is right ~90% of the time with large margins."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0.0, 2.0, (n, k)).astype(np.float32)
    pred = np.where(rng.random(n) < 0.9, y, rng.integers(0, k, n))
    z[np.arange(n), pred] += rng.normal(9.0, 3.0, n).astype(np.float32)
    return z, y


def test_logits_round_trip_is_the_float16_rounding(tmp_path):
    runs = {f"{arm}-s{sd}": trained_like(300, 10, 10 * i + sd)[0] for i, arm in enumerate(("erm", "mixup_half"))
            for sd in (0, 1)}
    y = trained_like(300, 10, 99)[1]
    vio.write_logits(tmp_path / "l.npz", {k: (z, y) for k, z in runs.items()})
    back = vio.read_logits(tmp_path / "l.npz")
    assert list(back) == list(runs)
    assert set(vio.read_npz(tmp_path / "l.npz")) == {"labels", *(f"{k}/logits" for k in runs)}  # labels once
    for k, z in runs.items():
        lg, lab = back[k]
        assert lg.dtype == np.float32 and lab.dtype == np.int64
        np.testing.assert_array_equal(lg, z.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(lab, y)
        assert np.abs(lg - z).max() > 0  # really rounded
        assert C.calibration_metrics(lg, lab, 15) == C.calibration_metrics(
            z.astype(np.float16).astype(np.float32), y, 15)


def test_logits_with_different_labels_are_stored_per_run_and_bytes_are_stable(tmp_path):
    (a, ya), (b, yb) = trained_like(40, 3, 0), trained_like(40, 3, 1)
    import torch

    runs = {"erm-s0": (a, ya), "erm-s1": (torch.from_numpy(b), torch.from_numpy(yb))}  # tensors accepted
    vio.write_logits(tmp_path / "l.npz", runs)
    assert set(vio.read_npz(tmp_path / "l.npz")) == {"erm-s0/logits", "erm-s0/labels", "erm-s1/logits", "erm-s1/labels"}
    back = vio.read_logits(tmp_path / "l.npz")
    np.testing.assert_array_equal(back["erm-s1"][1], yb)
    first = (tmp_path / "l.npz").read_bytes()
    vio.write_logits(tmp_path / "l.npz", {"erm-s0": (a.copy(), ya.copy()), "erm-s1": (b.copy(), yb.copy())})
    assert (tmp_path / "l.npz").read_bytes() == first


def test_logits_file_size_for_a_whole_study(tmp_path):
    # 45 runs x 10,000 test images x 10 classes: the committed file must stay under 10 MB
    y = trained_like(10_000, 10, 0)[1]
    runs = {f"arm{i}-s{sd}": (trained_like(10_000, 10, 5 * i + sd + 1)[0], y) for i in range(9) for sd in range(5)}
    vio.write_logits(tmp_path / "l.npz", runs)
    assert (tmp_path / "l.npz").stat().st_size < 10_000_000


@pytest.mark.parametrize("runs, match", [
    ({}, "non-empty mapping"),
    ({"erm/s0": (np.zeros((2, 3)), np.zeros(2, int))}, "run key 'erm/s0'"),
    ({"erm-s0": np.zeros((2, 3))}, r"runs\['erm-s0'\] is a ndarray"),
    ({"erm-s0": (np.zeros(3), np.zeros(3, int))}, "float logits"),
    ({"erm-s0": (np.zeros((2, 3), int), np.zeros(2, int))}, "float logits"),
    ({"erm-s0": (np.full((2, 3), 7e4), np.zeros(2, int))}, "float16's finite range"),
    ({"erm-s0": (np.full((2, 3), np.nan), np.zeros(2, int))}, "float16's finite range"),
    ({"erm-s0": (np.zeros((2, 3)), np.zeros(3, int))}, "2 integer labels"),
    ({"erm-s0": (np.zeros((2, 3)), np.zeros(2))}, "2 integer labels"),
    ({"erm-s0": (np.zeros((2, 3)), np.array([0, 3]))}, "range 0..3"),
])
def test_write_logits_errors(tmp_path, runs, match):
    with pytest.raises(ValueError, match=match):
        vio.write_logits(tmp_path / "l.npz", runs)
    assert not (tmp_path / "l.npz").exists()


def test_read_logits_refuses_other_archives(tmp_path):
    vio.write_npz(tmp_path / "a.npz", arrays())
    with pytest.raises(ValueError, match="no '<run>/logits' arrays"):
        vio.read_logits(tmp_path / "a.npz")
    vio.write_npz(tmp_path / "b.npz", {"erm-s0/logits": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="not a logits file"):
        vio.read_logits(tmp_path / "b.npz")


# ---------------------------------------------------------------------------------------------------
# project_root: where a run reads params.yaml and data/ and writes runs/ and results/
def test_project_root_is_the_cwds_project_not_dvc_root(tmp_path, monkeypatch):
    # a queued experiment's stage runs in a copy of the project under the main workspace's .dvc/tmp/exps,
    # with DVC_ROOT set to the main workspace (dvc's queue does so); its root is the copy it runs in
    main = tmp_path / "main"
    copy = main / ".dvc" / "tmp" / "exps" / "tmpabc"
    (copy / "notebooks").mkdir(parents=True)
    (main / "params.yaml").write_text("seeds: [0]\n")
    (copy / "params.yaml").write_text("seeds: [1]\n")
    monkeypatch.setenv("DVC_ROOT", str(main))
    monkeypatch.chdir(copy)
    assert vio.project_root() == copy.resolve()
    monkeypatch.chdir(copy / "notebooks")  # where papermill's kernel runs
    assert vio.project_root() == copy.resolve()
    assert vio.project_root(main / ".dvc") == main.resolve()


def test_project_root_outside_any_project_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match=f"no params.yaml found in {tmp_path.resolve()} or any folder above"):
        vio.project_root(tmp_path)
