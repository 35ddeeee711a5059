"""The checks before a DVC stage's work and the putting back of what DVC removed (varmix.pipeline.preflight),
on small folders; tests/test_faults_pin.py replays the issue's cases through the real `dvc repro -s`."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from varmix.core import errors
from varmix.pipeline import preflight, verify


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _cache(root: Path, data: bytes) -> str:
    md5 = _md5(data)
    path = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return md5


def _lock(root: Path, stages: dict[str, dict]) -> dict[str, dict]:
    import yaml

    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return preflight.read_lock(root)


def _pipeline(root: Path, stages: dict[str, dict], params: dict | None = None) -> None:
    import yaml

    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(yaml.safe_dump(params or {}))


def test_stage_names_and_deps_resolve_as_dvc_expands_them(tmp_path):
    _pipeline(tmp_path, {
        "train": {"matrix": {"arm": "${arms}", "seed": [0, 1]}, "cmd": "x",
                  "deps": ["runs/${dataset}/vae", {"runs/${dataset}/m-${item.arm}-${item.seed}.pt": {}},
                           "${unknown}/x"]},
        "report": {"cmd": "y", "deps": ["runs/${dataset}/models"]}},
        {"dataset": "fmnist", "arms": ["erm", "mixup_r"]})
    stages = preflight.pipeline_stages(tmp_path)
    assert sorted(stages) == ["report", "train@erm-0", "train@erm-1", "train@mixup_r-0", "train@mixup_r-1"]
    assert stages["train@mixup_r-1"] == ["runs/fmnist/vae", "runs/fmnist/m-mixup_r-1.pt"]
    assert stages["report"] == ["runs/fmnist/models"]


def test_upstream_is_checked_against_the_stage_that_makes_it(tmp_path):
    _pipeline(tmp_path, {"train": {"matrix": {"arm": ["erm"], "seed": [0]}, "cmd": "x"},
                         "corruptions": {"cmd": "y", "deps": ["runs/models"]}})
    model = tmp_path / "runs" / "models" / "erm-s0" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    folder_md5 = verify.dir_md5(verify.dir_entries(model.parent, tmp_path))
    lock = _lock(tmp_path, {
        "train@erm-0": {"outs": [{"path": "runs/models/erm-s0", "md5": folder_md5, "size": 7}]},
        # the reader's own record of its dep (the whole models folder) is stale after a re-train: not used
        "corruptions": {"deps": [{"path": "runs/models", "md5": "0" * 32 + ".dir"}],
                        "outs": [{"path": "results/c.json", "md5": "1" * 32, "size": 3}]},
    })
    preflight.check_upstream(tmp_path, lock, "corruptions")  # as recorded: passes
    model.write_bytes(b"weig")
    with pytest.raises(errors.UserError, match=r"^runs/models/erm-s0 is not what dvc.lock records for stage "
                                               r"train@erm-0 \(md5 .*: stage corruptions reads it; re-create it "
                                               r"with `dvc repro train@erm-0`"):
        preflight.check_upstream(tmp_path, lock, "corruptions")
    model.unlink()
    model.parent.rmdir()
    with pytest.raises(errors.UserError, match="^runs/models/erm-s0 is missing: stage corruptions reads it"):
        preflight.check_upstream(tmp_path, lock, "corruptions")


def test_stale_lock_entries_and_the_stage_s_old_deps_are_not_checked(tmp_path):
    """dvc.lock keeps entries of stages dvc.yaml no longer has (a renamed matrix), and a stage's own entry
    records the deps of its last run (another profile's paths): neither refuses a good artifact."""
    _pipeline(tmp_path, {"new": {"matrix": {"x": ["a"]}, "cmd": "x"}, "reader": {"cmd": "y", "deps": ["m.pt"]}})
    (tmp_path / "m.pt").write_bytes(b"new")
    lock = _lock(tmp_path, {"old@a": {"outs": [{"path": "m.pt", "md5": _md5(b"old")}]},
                            "new@a": {"outs": [{"path": "m.pt", "md5": _md5(b"new")},
                                               {"path": "other/m.pt", "md5": _md5(b"gone")}]},
                            "reader": {"deps": [{"path": "m.pt", "md5": _md5(b"old")},
                                                {"path": "other/m.pt", "md5": _md5(b"gone")}]}})
    preflight.check_upstream(tmp_path, lock, "reader")
    (tmp_path / "m.pt").write_bytes(b"old")  # what only the stale entry records
    with pytest.raises(errors.UserError, match="for stage new@a"):
        preflight.check_upstream(tmp_path, lock, "reader")


def test_the_named_file_inside_a_folder_comes_from_the_cached_file_list(tmp_path):
    folder = tmp_path / "runs" / "vae"
    folder.mkdir(parents=True)
    (folder / "a.pt").write_bytes(b"a")
    (folder / "b.pt").write_bytes(b"b")
    entries = verify.dir_entries(folder, tmp_path)
    md5 = verify.dir_md5(entries)
    import json

    manifest = json.dumps([{"md5": m, "relpath": r} for r, m in sorted(entries.items())]).encode()
    path = tmp_path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    _pipeline(tmp_path, {"vae": {"cmd": "x"}, "train": {"cmd": "y", "deps": ["runs/vae"]}})
    lock = _lock(tmp_path, {"vae": {"outs": [{"path": "runs/vae", "md5": md5}]},
                            "train": {"deps": [{"path": "runs/vae", "md5": md5}]}})
    (folder / "b.pt").write_bytes(b"B")
    with pytest.raises(errors.UserError, match=r"\(runs/vae/b.pt changed; md5 "):
        preflight.check_upstream(tmp_path, lock, "train")


def test_disk_check_names_free_and_needed_space(tmp_path):
    outs = [preflight.Out("s", "runs/m.pt", "0" * 32, 3 * 2**30)]
    preflight.check_disk(tmp_path, outs, free=lambda p: 4 * 2**30)
    with pytest.raises(errors.UserError, match=r"^1,024 MiB free on the disk of .*; this stage writes about "
                                               r"3,328 MiB .*free space \(df -h shows it\), then run again$"):
        preflight.check_disk(tmp_path, outs, free=lambda p: 2**30)


def test_restore_puts_back_the_recorded_bytes_from_the_cache_or_git(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_bytes(b'{"a": 1}')
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "r"], cwd=tmp_path,
                   check=True)
    md5 = _cache(tmp_path, b"model bytes")
    outs = [preflight.Out("s", "runs/m.pt", md5, 11), preflight.Out("s", "results/r.json", _md5(b'{"a": 1}'), 8),
            preflight.Out("s", "results/gone.json", _md5(b"x"), 1)]
    (tmp_path / "results" / "r.json").unlink()
    assert [preflight.restore(tmp_path, o) for o in outs] == ["cache", "git", None]
    assert (tmp_path / "runs" / "m.pt").read_bytes() == b"model bytes"
    assert (tmp_path / "results" / "r.json").read_bytes() == b'{"a": 1}'
    # git's HEAD holds other bytes than dvc.lock records: nothing is written
    (tmp_path / "results" / "r.json").unlink()
    assert preflight.restore(tmp_path, preflight.Out("s", "results/r.json", _md5(b"other"), 5)) is None
    assert not (tmp_path / "results" / "r.json").exists()


def test_the_cache_folder_comes_from_dvc_config_local_first(tmp_path):
    (tmp_path / ".dvc").mkdir()
    assert verify.cache_dir(tmp_path) == tmp_path / ".dvc" / "cache"
    (tmp_path / ".dvc" / "config").write_text("[core]\n    autostage = true\n[cache]\n    dir = ../shared-cache\n")
    assert verify.cache_dir(tmp_path) == (tmp_path / "shared-cache").resolve()
    (tmp_path / ".dvc" / "config.local").write_text("[cache]\n    dir = /elsewhere/cache\n")
    assert verify.cache_dir(tmp_path) == Path("/elsewhere/cache")


def test_guard_outside_dvc_only_runs_the_check(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert preflight.guard(tmp_path, lambda: 7) == 7
    with pytest.raises(ValueError, match="bad"):
        preflight.guard(tmp_path, lambda: (_ for _ in ()).throw(ValueError("bad")))


def test_guard_under_dvc_puts_back_and_says_so_in_two_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_STAGE", "s")
    md5 = _cache(tmp_path, b"model bytes")
    _lock(tmp_path, {"s": {"outs": [{"path": "runs/m.pt", "md5": md5, "size": 11}]}})

    def bad():
        raise errors.ConfigError("profiles.smoke.eval.x is unknown")

    with pytest.raises(errors.Refused) as caught:
        preflight.guard(tmp_path, bad)
    lines, code = errors.describe(caught.value)
    assert code == 2
    assert lines == ["error: profiles.smoke.eval.x is unknown",
                     "the stage's 1 outputs are as dvc.lock records them: DVC had removed 1, put back from its "
                     "cache (1) and git (0)"]
    assert (tmp_path / "runs" / "m.pt").read_bytes() == b"model bytes"
    # a bug keeps its traceback, with the same line as a note
    (tmp_path / "runs" / "m.pt").unlink()
    with pytest.raises(KeyError) as bug:
        preflight.guard(tmp_path, lambda: {}["x"])
    assert bug.value.__notes__ == [lines[1]]
