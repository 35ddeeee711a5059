"""params.yaml validation: every bad value is named with what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from varmix import config
from varmix.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def load(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load_params(path)


def test_project_params_are_valid_and_resolve_the_profile():
    p = config.load_params(ROOT / "params.yaml")
    assert p.profile in config.PROFILES and set(p.profiles) == set(config.PROFILES)
    assert p.train is p.profiles[p.profile].train
    paper = p.profiles["paper"].train
    # the paper's classifier settings
    assert paper.arch == "resnet34" and paper.optimizer == "adam" and paper.lr == 1e-3
    assert paper.epochs["erm"] == 100 and all(paper.epochs[m] == 150 for m in config.METHODS if m != "erm")


def test_departure_switches_default_to_the_earlier_behaviour():
    # docs/DEPARTURES.md: the loss and γ's search keep their earlier settings unless params.yaml says otherwise
    p = config.load_params(ROOT / "params.yaml")
    for name, prof in p.profiles.items():
        assert prof.train.manifold_loss == "soft_ce", name
        ev = prof.eval
        assert (ev.linearity_step_factor, ev.linearity_restarts, ev.linearity_clip) == (2.5, 1, True), name
    assert p.profiles["default"].eval.linearity_steps == p.profiles["paper"].eval.linearity_steps == 10
    assert config.TrainConfig().manifold_loss == "soft_ce"
    e = config.EvalConfig()
    assert (e.linearity_steps, e.linearity_step_factor, e.linearity_restarts, e.linearity_clip) == (10, 2.5, 1, True)
    for key in ("train", "eval"):  # a profile that leaves the keys out gets the same defaults
        raw = copy.deepcopy(RAW)
        for k in ("manifold_loss", "linearity_steps", "linearity_step_factor", "linearity_restarts",
                  "linearity_clip"):
            raw["profiles"]["paper"][key].pop(k, None)
        paper = config.Params.from_dict(raw).profiles["paper"]
        assert paper == p.profiles["paper"]


def test_override_switches_profile(tmp_path):
    p = config.load_params(ROOT / "params.yaml", overrides={"profile": "smoke"})
    assert p.profile == "smoke" and p.train.epochs["erm"] == 1


def edit(raw, path, value):
    raw = copy.deepcopy(raw)
    node = raw
    for k in path[:-1]:
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize("path,value,message", [
    (("dataset",), "mnist", "dataset = 'mnist' is invalid: expected one of fashion-mnist, cifar10"),
    (("profile",), "fast", "profile = 'fast' is invalid: expected one of smoke, default, paper"),
    (("methods",), ["erm", "varmix"], "methods[1] = 'varmix' is invalid: expected one of erm, mixup"),
    (("methods",), [], "methods = [] is invalid: expected a non-empty list"),
    (("seeds",), [0, -1], "seeds[1] = -1 is invalid: expected an integer >= 0"),
    (("profiles", "smoke", "train", "alpha", "mixup"), 0.0,
     "profiles.smoke.train.alpha.mixup = 0.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "train", "alpha", "cutmix"), -1,
     "profiles.smoke.train.alpha.cutmix = -1.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "train", "epochs"), 0,
     "profiles.smoke.train.epochs = 0 is invalid: expected an integer >= 1"),
    (("profiles", "default", "train", "epochs", "erm"), 2.5,
     "profiles.default.train.epochs.erm = 2.5 is invalid: expected an integer >= 1"),
    (("profiles", "smoke", "train", "arch"), "vgg", "profiles.smoke.train.arch = 'vgg' is invalid"),
    (("profiles", "smoke", "train", "lr"), 0, "profiles.smoke.train.lr = 0.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "eval", "severities"), [1, 6],
     "profiles.smoke.eval.severities[1] = 6 is invalid: expected an integer >= 1 and <= 5"),
    (("profiles", "smoke", "eval", "corruptions"), ["fog", "rain"],
     "profiles.smoke.eval.corruptions[1] = 'rain' is invalid: expected one of gaussian_noise"),
    (("profiles", "smoke", "vae", "objective"), "elbo", "profiles.smoke.vae.objective = 'elbo' is invalid"),
    (("profiles", "smoke", "vae", "latent_dim"), 0, "profiles.smoke.vae.latent_dim = 0 is invalid"),
    (("profiles", "smoke", "train", "mix_prob", "varmixup"), 0,
     "profiles.smoke.train.mix_prob.varmixup = 0.0 is invalid: expected a number > 0 and <= 1"),
    (("profiles", "smoke", "train", "mix_prob", "mixup"), 1.5,
     "profiles.smoke.train.mix_prob.mixup = 1.5 is invalid: expected a number > 0 and <= 1"),
    (("profiles", "smoke", "train", "augment"), "false",
     "profiles.smoke.train.augment = 'false' is invalid: expected true or false"),
    (("profiles", "smoke", "cpu_kernels"), "exact",
     "profiles.smoke.cpu_kernels = 'exact' is invalid: expected one of portable, fast"),
    (("profiles", "paper", "train", "manifold_loss"), "bce",
     "profiles.paper.train.manifold_loss = 'bce' is invalid: expected one of soft_ce, bce_softmax"),
    (("profiles", "smoke", "eval", "linearity_restarts"), 0,
     "profiles.smoke.eval.linearity_restarts = 0 is invalid: expected an integer >= 1"),
    (("profiles", "default", "eval", "linearity_step_factor"), 0,
     "profiles.default.eval.linearity_step_factor = 0.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "eval", "linearity_clip"), "yes",
     "profiles.smoke.eval.linearity_clip = 'yes' is invalid: expected true or false"),
    (("profiles", "smoke", "eval", "linearity_steps"), 0,
     "profiles.smoke.eval.linearity_steps = 0 is invalid: expected an integer >= 1"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, path, value, message):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, edit(RAW, path, value))
    assert message in str(err.value)


def test_unknown_and_missing_keys(tmp_path):
    with pytest.raises(config.ConfigError, match=r"unknown key profiles.smoke.train.learning_rate"):
        load(tmp_path, edit(RAW, ("profiles", "smoke", "train", "learning_rate"), 0.1))
    with pytest.raises(config.ConfigError, match=r"unknown key epoch; allowed top-level keys"):
        load(tmp_path, edit(RAW, ("epoch",), 3))
    with pytest.raises(config.ConfigError, match=r"missing key profiles.smoke.train.alpha"):
        load(tmp_path, edit(RAW, ("profiles", "smoke", "train", "alpha"), KeyError))
    with pytest.raises(config.ConfigError, match=r"missing key profiles.default.train.epochs.varmixup"):
        load(tmp_path, edit(RAW, ("profiles", "default", "train", "epochs", "varmixup"), KeyError))
    with pytest.raises(config.ConfigError, match=r"profiles.default.train.alpha.mixupp = 1.0 is invalid"):
        load(tmp_path, edit(RAW, ("profiles", "default", "train", "alpha", "mixupp"), 1.0))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        config.load_params(tmp_path / "nope.yaml")
    (tmp_path / "params.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load_params(tmp_path / "params.yaml")


def test_cli_check_params(tmp_path, capsys):
    assert cli(["check-params", "--params", str(ROOT / "params.yaml")]) == 0
    assert "params OK" in capsys.readouterr().out
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(edit(RAW, ("dataset",), "svhn")))
    assert cli(["check-params", "--params", str(bad)]) == 2
    assert "dataset = 'svhn' is invalid" in capsys.readouterr().err
