"""params.yaml validation: every bad value is named with what is allowed."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from varmix.core import config, errors, names
from varmix.learn.data import SPECS
from varmix.pipeline.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def load(tmp_path, raw):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load_params(path)


def test_project_params_are_valid_and_resolve_the_profile():
    p = config.load_params(ROOT / "params.yaml")
    assert p.profile in names.PROFILES and set(p.profiles) == set(names.PROFILES)
    assert p.train is p.profiles[p.profile].train
    paper = p.profiles["paper"].train
    # the paper's classifier settings
    assert paper.arch == "resnet34" and paper.optimizer == "adam" and paper.lr == 1e-3
    assert paper.epochs["erm"] == 100 and all(paper.epochs[m] == 150 for m in names.VICINAL_METHODS if m != "erm")


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


def test_rival_arms_are_trained_with_their_own_seeds():
    p = config.load_params(ROOT / "params.yaml")
    assert p.arms[-len(p.rival_arms):] == p.rival_arms == ("manifold_mixup", "cutmix", "at", "trades", "iat",
                                                          "adv_varmixup")
    assert p.seeds_of("at") == p.rival_seeds == (0, 1) and p.seeds_of("varmixup") == p.seeds == (0, 1, 2, 3, 4, 5)
    assert p.runs[:6] == tuple(("erm", sd) for sd in range(6)) and p.runs[-2:] == (("adv_varmixup", 0), ("adv_varmixup", 1))
    assert len(p.runs) == 7 * 6 + 6 * 2
    with pytest.raises(ValueError, match=r"arm = 'xyz' is not in params.yaml's arms or rival_arms"):
        p.seeds_of("xyz")
    raw = copy.deepcopy(RAW)
    del raw["rival_seeds"]  # without rival_seeds, rivals take every seed
    assert config.Params.from_dict(raw).seeds_of("at") == p.seeds
    del raw["rival_arms"]
    q = config.Params.from_dict(raw)
    assert q.rival_arms == () and q.arms == p.arms[:7] and len(q.runs) == 42


def test_each_seed_mixes_with_one_vae_seed():
    """Classifier seed s uses VAE seed vae_seeds[s % len(vae_seeds)] (every arm of s the same VAE), by the
    seed's value, so a run's VAE does not move when seeds are added or left out."""
    p = config.load_params(ROOT / "params.yaml")
    assert p.vae_seeds == (0, 1, 2)
    assert [p.vae_seed_of(s) for s in p.seeds] == [0, 1, 2, 0, 1, 2]
    q = config.Params.from_dict({**copy.deepcopy(RAW), "vae_seeds": [7, 3], "seeds": [3, 4], "rival_seeds": [3]})
    assert [q.vae_seed_of(s) for s in q.seeds] == [3, 7] and q.vae_seed_of(3) == names.vae_seed_of(3, [7, 3])
    raw = copy.deepcopy(RAW)
    del raw["vae_seeds"]  # without vae_seeds: one VAE, seed 0, for every seed
    assert config.Params.from_dict(raw).vae_seeds == (0,)
    with pytest.raises(ValueError, match=r"vae_seeds is empty"):
        names.vae_seed_of(0, [])
    with pytest.raises(ValueError, match=r"seed = -1 is invalid"):
        names.vae_seed_of(-1, [0])
    assert names.vae_name("plain", 2) == "vae/s2" and names.vae_name("adversarial") == "vae_adversarial"
    with pytest.raises(ValueError, match=r"vae seed = None is invalid"):
        names.vae_name("plain")
    with pytest.raises(ValueError, match=r"vae seed = 1 for the adversarial VAE"):
        names.vae_name("adversarial", 1)


def test_the_regime_chapter_trains_its_arms_longer(tmp_path):
    """regime_arms x regime_seeds with the profile's regime budget (every arm the same epochs), the recipe
    otherwise the study's; its pairs are the report's comparisons among them."""
    p = config.load_params(ROOT / "params.yaml")
    assert p.regime_arms == ("erm", "mixup", "mixup_half", "varmixup") and len(p.regime_seeds) >= 3
    assert p.regime_pairs == (("varmixup", "mixup"), ("varmixup", "mixup_half"), ("varmixup", "erm"))
    budget, study = p.regime, p.run_settings("varmixup")
    r = p.regime_run_settings("varmixup")
    assert (r.epochs, r.train.train_subset) == (budget.epochs, budget.train_subset)
    n_train = budget.train_subset or SPECS[p.dataset].train_size  # null: every training image
    assert budget.epochs * n_train >= 5 * study.epochs * study.train.train_subset  # >= 5x the study's
    assert (r.method, r.mix_prob, r.alpha, r.train.lr, r.train.arch) == (
        study.method, study.mix_prob, study.alpha, study.train.lr, study.train.arch)
    with pytest.raises(ValueError, match=r"arm = 'cutmix' is not in params.yaml's regime_arms"):
        p.regime_run_settings("cutmix")
    raw = copy.deepcopy(RAW)
    del raw["profiles"]["smoke"]["regime"]
    with pytest.raises(errors.ConfigError, match=r"profiles.smoke.regime is not set, but regime_arms lists erm"):
        load(tmp_path, {**raw, "profile": "smoke"})
    raw = copy.deepcopy(RAW)
    del raw["regime_arms"]
    with pytest.raises(errors.ConfigError, match=r"regime_arms"):
        load(tmp_path, raw)


def test_arms_resolve_to_a_method_and_its_settings():
    p = config.load_params(ROOT / "params.yaml")
    assert len(p.arms) >= 9 and len(p.seeds) >= 5  # the deciding study (issue 11)
    run = p.run_settings("mixup_half")
    assert (run.arm, run.method, run.mix_prob) == ("mixup_half", "mixup", 0.5)
    assert p.run_settings("mixup").mix_prob == 1.0
    assert p.run_settings("varmixup").mix_prob == 0.5
    assert p.run_settings("varmixup_full").mix_prob == 1.0
    # every arm of a CPU profile trains for the same epochs on a decaying schedule
    for name in ("smoke", "default"):
        train = p.profiles[name].train
        assert train.schedule == "cosine", name
        assert len({train.epochs[p.arm(a).method] for a in p.arms}) == 1, name
    # the other settings are the profile's, whatever the arm
    assert p.run_settings("mixup_half").train == p.train
    # an arm named after a method needs no declaration (the old per-method names)
    raw = edit(edit(RAW, ("arms",), ["erm", "mixup"]), ("regime_arms",), ["erm", "mixup"])
    for key in ("arm_settings", "comparisons", "rival_arms"):
        raw.pop(key)
    q = config.Params.from_dict(raw)
    assert q.run_settings("mixup").method == "mixup" and q.methods_of() == ("erm", "mixup")
    with pytest.raises(ValueError, match="arm 'mixup_half' is not declared in params.yaml's arm_settings"):
        q.arm("mixup_half")
    # an arm may set its own alpha and epochs
    raw = edit(RAW, ("arm_settings", "mixup_half"), {"method": "mixup", "alpha": 0.2, "epochs": 7})
    run = config.Params.from_dict(raw).run_settings("mixup_half")
    assert (run.alpha, run.epochs) == (0.2, 7)


def test_old_methods_key_is_named(tmp_path):
    raw = edit(RAW, ("methods",), ["erm"])
    with pytest.raises(errors.ConfigError, match="the top-level key methods is now arms"):
        load(tmp_path, raw)


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
    (("arms",), ["erm", "varmix"], "arms[1] = 'varmix' is invalid: expected an arm declared in arm_settings or named after a method (adv_varmixup, at, cutmix, erm, iat, "),
    (("arms",), [], "arms = [] is invalid: expected a non-empty list"),
    # issue 29: a scalar where dvc.yaml's matrices want a list (DVC itself says "'Value' object is not iterable")
    (("arms",), "erm", "arms = 'erm' is invalid: expected a non-empty list"),
    (("seeds",), 0, "seeds = 0 is invalid: expected a non-empty list"),
    (("arms",), ["erm", "erm"], "arms = ['erm', 'erm'] is invalid: expected each arm at most once"),
    (("arm_settings", "mixup_half", "mix_prob"), 0,
     "arm_settings.mixup_half.mix_prob = 0.0 is invalid: expected a number > 0 and <= 1"),
    (("arm_settings", "mixup_half", "method"), "mixupp",
     "arm_settings.mixup_half.method = 'mixupp' is invalid: expected one of erm, mixup"),
    (("arm_settings", "mixup_half", "epochs"), 0,
     "arm_settings.mixup_half.epochs = 0 is invalid: expected an integer >= 1"),
    (("arm_settings", "Mixup-2"), {"method": "mixup"},
     "arm_settings = 'Mixup-2' is invalid: expected an arm name of lower-case letters"),
    (("comparisons", "varmixup"), ["mixup", "cutmixx"],
     "comparisons.varmixup[1] = 'cutmixx' is invalid: expected one of the other arms (erm, mixup, "),
    (("comparisons", "varmixup"), ["varmixup"],
     "comparisons.varmixup[0] = 'varmixup' is invalid: expected one of the other arms (erm, mixup, "
     "mixup_half, mixup_r, mixup_r_full, varmixup_full)"),
    # the descriptive arms, trained with fewer seeds, are not in the paired family (they lack seeds 2..5)
    (("comparisons", "varmixup"), ["at"],
     "comparisons.varmixup[0] = 'at' is invalid: expected one of the other arms (erm, mixup, "),
    (("rival_arms",), ["at", "erm"], "rival_arms = ['at', 'erm'] is invalid: expected arms not in arms "
                                     "(given in both: erm)"),
    (("rival_arms",), ["at", "att"], "rival_arms[1] = 'att' is invalid: expected an arm declared in arm_settings"),
    (("rival_arms",), ["at", "at"], "rival_arms = ['at', 'at'] is invalid: expected each arm at most once"),
    (("rival_seeds",), [1, 2], "rival_seeds = [1, 2] is invalid: expected seeds among seeds [0, 1, 2, 3, 4, 5], "
                               "holding its first, 0"),
    (("rival_seeds",), [0, 7], "rival_seeds = [0, 7] is invalid: expected seeds among seeds [0, 1, 2, 3, 4, 5]"),
    (("rival_seeds",), [0, 0], "rival_seeds = [0, 0] is invalid: expected each seed at most once"),
    (("rival_seeds",), [], "rival_seeds = [] is invalid: expected a non-empty list"),
    (("vae_seeds",), [], "vae_seeds = [] is invalid: expected a non-empty list"),
    (("vae_seeds",), 0, "vae_seeds = 0 is invalid: expected a non-empty list"),
    (("vae_seeds",), [0, 0], "vae_seeds = [0, 0] is invalid: expected each VAE seed at most once"),
    (("vae_seeds",), [0, -1], "vae_seeds[1] = -1 is invalid: expected an integer"),
    (("regime_arms",), [], "regime_arms = [] is invalid: expected a non-empty list"),
    (("regime_arms",), ["erm", "bogus"], "regime_arms[1] = 'bogus' is invalid: expected an arm declared in arm_settings"),
    (("regime_seeds",), [0], "regime_seeds = [0] is invalid: expected at least 2 seeds"),
    (("profiles", "smoke", "regime", "epochs"), 0, "profiles.smoke.regime.epochs = 0 is invalid"),
    (("profiles", "smoke", "regime", "train_subset"), 0, "profiles.smoke.regime.train_subset = 0 is invalid"),
    (("profiles", "smoke", "train", "schedule"), "linear",
     "profiles.smoke.train.schedule = 'linear' is invalid: expected one of constant, step, cosine"),
    (("profiles", "smoke", "train", "milestones"), [1],
     "profiles.smoke.train.milestones = [1] is invalid: expected none with schedule cosine"),
    (("profiles", "smoke", "cpu_threads"), 0,
     "profiles.smoke.cpu_threads = 0 is invalid: expected an integer >= 1"),
    (("seeds",), [0, -1], "seeds[1] = -1 is invalid: expected an integer >= 0"),
    (("profiles", "smoke", "train", "alpha", "mixup"), 0.0,
     "profiles.smoke.train.alpha.mixup = 0.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "train", "alpha", "cutmix"), -1,
     "profiles.smoke.train.alpha.cutmix = -1.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "train", "epochs"), 0,
     "profiles.smoke.train.epochs = 0 is invalid: expected an integer >= 1"),
    (("profiles", "paper", "train", "epochs", "erm"), 2.5,
     "profiles.paper.train.epochs.erm = 2.5 is invalid: expected an integer >= 1"),
    (("profiles", "smoke", "train", "arch"), "vgg", "profiles.smoke.train.arch = 'vgg' is invalid"),
    (("profiles", "smoke", "train", "lr"), 0, "profiles.smoke.train.lr = 0.0 is invalid: expected a number > 0"),
    (("profiles", "smoke", "eval", "severities"), [1, 6],
     "profiles.smoke.eval.severities[1] = 6 is invalid: expected an integer >= 1 and <= 5"),
    (("profiles", "smoke", "eval", "corruptions"), ["fog", "rain"],
     "profiles.smoke.eval.corruptions[1] = 'rain' is invalid: expected one of gaussian_noise"),
    (("profiles", "smoke", "vae", "objective"), "elbo", "profiles.smoke.vae.objective = 'elbo' is invalid"),
    (("profiles", "smoke", "vae", "latent_dim"), 0, "profiles.smoke.vae.latent_dim = 0 is invalid"),
    (("profiles", "smoke", "train", "mix_prob"), 0,
     "profiles.smoke.train.mix_prob = 0.0 is invalid: expected a number > 0 and <= 1"),
    (("profiles", "smoke", "train", "mix_prob"), {**{m: 1.0 for m in names.METHODS}, "mixup": 1.5},
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
    (("profiles", "default", "eval", "fold_batch_norm"), "on",
     "profiles.default.eval.fold_batch_norm = 'on' is invalid: expected true or false"),
    (("profiles", "smoke", "eval", "linearity_steps"), 0,
     "profiles.smoke.eval.linearity_steps = 0 is invalid: expected an integer >= 1"),
    # a scalar where a list belongs, a non-name among the arms, no profile at all
    (("profiles", "smoke", "eval", "severities"), 3,
     "profiles.smoke.eval.severities = 3 is invalid: expected a non-empty list"),
    (("profiles", "smoke", "eval", "corruptions"), "fog",
     "profiles.smoke.eval.corruptions = 'fog' is invalid: expected a non-empty list"),
    (("arms",), ["erm", 3], "arms[1] = 3 is invalid: expected an arm name of lower-case letters"),
    (("profiles",), {}, "profiles = {} is invalid: expected a mapping of profile name -> settings"),
    (("profiles", "fast"), {}, "profiles = 'fast' is invalid: expected one of smoke, default, paper"),
    (("arm_settings", "mixup_half", "name"), "half",
     "unknown key arm_settings.mixup_half.name; allowed keys in arm_settings.mixup_half: alpha, epochs, method"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, path, value, message):
    with pytest.raises(errors.ConfigError) as err:
        load(tmp_path, edit(RAW, path, value))
    assert message in str(err.value)


def test_datasets_the_stages_read(tmp_path):
    """dataset, then vae.dataset when it names another (the check stage verifies each)."""
    assert load(tmp_path, RAW).datasets == ("fashion-mnist",)
    p = load(tmp_path, edit(RAW, ("profiles", RAW["profile"], "vae", "dataset"), "cifar10"))
    assert p.vae_dataset == "cifar10" and p.datasets == ("fashion-mnist", "cifar10")
    same = load(tmp_path, edit(RAW, ("profiles", RAW["profile"], "vae", "dataset"), "fashion-mnist"))
    assert same.vae_dataset == "fashion-mnist" and same.datasets == ("fashion-mnist",)


def test_defaults_are_checked_as_given_values():
    # the defaults go through the same checks: numbers become floats, as in a profile that gives them
    e = config.EvalConfig.from_dict({}, "profiles.smoke.eval")
    assert e == config.EvalConfig() and e.linearity_eps == (1.0, 2.0, 4.0, 8.0, 16.0)
    assert all(type(v) is float for v in e.linearity_eps + e.perturbation_eps)
    assert config.to_dict(e) == config.to_dict(config.EvalConfig.from_dict(config.to_dict(e), "k"))


def test_unknown_and_missing_keys(tmp_path):
    with pytest.raises(errors.ConfigError, match=r"unknown key profiles.smoke.train.learning_rate"):
        load(tmp_path, edit(RAW, ("profiles", "smoke", "train", "learning_rate"), 0.1))
    with pytest.raises(errors.ConfigError, match=r"unknown key epoch; allowed top-level keys"):
        load(tmp_path, edit(RAW, ("epoch",), 3))
    with pytest.raises(errors.ConfigError, match=r"missing key profiles.smoke.train.alpha"):
        load(tmp_path, edit(RAW, ("profiles", "smoke", "train", "alpha"), KeyError))
    with pytest.raises(errors.ConfigError, match=r"missing key profiles.paper.train.epochs.varmixup"):
        load(tmp_path, edit(RAW, ("profiles", "paper", "train", "epochs", "varmixup"), KeyError))
    with pytest.raises(errors.ConfigError, match=r"profiles.default.train.alpha.mixupp = 1.0 is invalid"):
        load(tmp_path, edit(RAW, ("profiles", "default", "train", "alpha", "mixupp"), 1.0))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        config.load_params(tmp_path / "nope.yaml")
    (tmp_path / "params.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(errors.ConfigError, match="not valid YAML"):
        config.load_params(tmp_path / "params.yaml")


def test_cli_check_params(tmp_path, capsys):
    assert cli(["check-params", "--params", str(ROOT / "params.yaml")]) == 0
    assert "params OK" in capsys.readouterr().out
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(edit(RAW, ("dataset",), "svhn")))
    assert cli(["check-params", "--params", str(bad)]) == 2
    assert "dataset = 'svhn' is invalid" in capsys.readouterr().err


# ---- the late cases of issue 15 (finding 6): each stops at validation with key, value and what is allowed
@pytest.mark.parametrize("path,value,message", [
    (("profiles", "smoke", "train", "alpha", "mixup"), float("inf"),
     "profiles.smoke.train.alpha.mixup = inf is invalid: expected a finite number > 0"),
    (("profiles", "smoke", "train", "lr"), float("inf"),
     "profiles.smoke.train.lr = inf is invalid: expected a finite number > 0"),
    (("profiles", "smoke", "vae", "gamma"), float("nan"),
     "profiles.smoke.vae.gamma = nan is invalid: expected a finite number >= 0"),
    (("profiles", "smoke", "train", "weight_decay"), float("inf"),
     "profiles.smoke.train.weight_decay = inf is invalid: expected a finite number >= 0"),
    (("profiles", "smoke", "vae", "latent_dim"), 10**9,
     "profiles.smoke.vae.latent_dim = 1000000000 is invalid: expected an integer >= 1 and <= 4096"),
    (("profiles", "smoke", "vae", "width"), 100_000,
     "profiles.smoke.vae.width = 100000 is invalid: expected an integer >= 1 and <= 1024"),
    (("profiles", "smoke", "train", "epochs"), 10**12,
     "profiles.smoke.train.epochs = 1000000000000 is invalid: expected an integer >= 1 and <= 10000"),
    (("profiles", "paper", "train", "epochs", "cutmix"), 10**12,
     "profiles.paper.train.epochs.cutmix = 1000000000000 is invalid: expected an integer >= 1 and <= 10000"),
    (("profiles", "smoke", "train", "batch_size"), 10**12,
     "profiles.smoke.train.batch_size = 1000000000000 is invalid: expected an integer >= 2 and <= 65536"),
    (("profiles", "smoke", "vae", "batch_size"), 65_537,
     "profiles.smoke.vae.batch_size = 65537 is invalid: expected an integer >= 2 and <= 65536"),
    (("profiles", "smoke", "eval", "batch_size"), 10**12,
     "profiles.smoke.eval.batch_size = 1000000000000 is invalid: expected an integer >= 1 and <= 65536"),
    (("profiles", "smoke", "train", "train_subset"), 10**12,
     "profiles.smoke.train.train_subset = 1000000000000 is invalid: expected an integer >= 1 and <= 10000000"),
    (("profiles", "smoke", "eval", "surface_points"), 10**6,
     "profiles.smoke.eval.surface_points = 1000000 is invalid: expected an integer >= 3 and <= 1001"),
    (("seeds",), [0, 0], "seeds = [0, 0] is invalid: expected each seed at most once"),
    (("seeds",), [2**40], "seeds[0] = 1099511627776 is invalid: expected an integer >= 0 and <= 4294967295"),
    # small_cnn has 4 mixable layers (0..3), the ResNets 5 (0..4); checked for the profile's own arch
    (("profiles", "smoke", "train", "manifold_layers"), [0, 4],
     "profiles.smoke.train.manifold_layers[1] = 4 is invalid: expected an integer >= 0 and <= 3"),
    (("profiles", "paper", "train", "manifold_layers"), [5],
     "profiles.paper.train.manifold_layers[0] = 5 is invalid: expected an integer >= 0 and <= 4"),
    (("profiles", "smoke", "train", "manifold_layers"), [1, 1],
     "profiles.smoke.train.manifold_layers = [1, 1] is invalid: expected each layer at most once"),
])
def test_late_cases_are_caught_at_validation(tmp_path, path, value, message):
    test_bad_values_name_key_value_and_allowed(tmp_path, path, value, message)


def test_bounds_admit_the_documented_caps(tmp_path):
    raw = edit(RAW, ("profiles", "smoke", "vae", "latent_dim"), config.MAX_LATENT_DIM)
    raw = edit(raw, ("profiles", "smoke", "train", "batch_size"), config.MAX_BATCH_SIZE)
    raw = edit(raw, ("profiles", "paper", "train", "manifold_layers"), [0, 4])
    raw = edit(raw, ("seeds",), [0, 1, config.MAX_SEED])
    p = load(tmp_path, raw)
    assert p.profiles["smoke"].vae.latent_dim == 4096 and p.profiles["smoke"].train.batch_size == 65536
    assert p.profiles["paper"].train.manifold_layers == (0, 4) and p.seeds == (0, 1, 2**32 - 1)


def test_config_mix_layers_are_the_models():
    from varmix.learn.models import build_model

    for arch, n in names.NUM_MIX_LAYERS.items():
        size = 28 if arch == "small_cnn" else 32
        assert build_model(arch, 1, 10, size, (0.5,), (0.5,)).num_mix_layers == n


def test_yaml_infinity_spelling_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text().replace("      lr: 1.0e-3\n", "      lr: .inf\n", 1))
    with pytest.raises(errors.ConfigError, match=r"profiles.smoke.train.lr = inf is invalid: expected a finite"):
        config.load_params(path)


@pytest.mark.parametrize("text,key,line,first", [
    ("profile: smoke\nprofile: default\n", "profile", 2, 1),
    ("profiles:\n  smoke:\n    train: {lr: 1, lr: 2}\n", "lr", 3, 3),
])
def test_duplicate_keys_are_refused_with_key_and_line(tmp_path, text, key, line, first):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(errors.ConfigError) as err:
        config.load_params(path)
    assert f"duplicate key {key!r} on line {line} (first given on line {first})" in str(err.value)
    assert str(path) in str(err.value)


def test_duplicate_key_in_the_project_file_names_its_line(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    path = tmp_path / "params.yaml"
    path.write_text(text + "seeds: [1]\n")
    with pytest.raises(errors.ConfigError, match=r"duplicate key 'seeds' on line \d+ \(first given on line \d+\)"):
        config.load_params(path)
    # merge keys may be overridden (YAML's own rule), so they are not duplicates
    path.write_text("base: &b {lr: 1}\nuse:\n  <<: *b\n  lr: 2\n")
    assert config._UniqueKeyLoader(path.read_text()).get_single_data()["use"] == {"lr": 2}


def test_an_arm_picks_its_vae_and_only_vae_methods_may():
    p = config.load_params(ROOT / "params.yaml")
    assert p.arm("adv_varmixup").vae == "adversarial" and p.arm("adv_varmixup").method == "varmixup"
    assert p.arm("varmixup").vae == "plain" and p.arm("erm").vae == "plain"
    raw = edit(RAW, ("arm_settings", "adv_varmixup", "vae"), "robust")
    with pytest.raises(errors.ConfigError, match=r"arm_settings.adv_varmixup.vae = 'robust'.*plain, adversarial"):
        config.Params.from_dict(raw)
    raw = edit(RAW, ("arm_settings", "at", "vae"), "adversarial")
    with pytest.raises(errors.ConfigError, match=r"arm_settings.at.vae = 'adversarial'.*plain for method at "
                                                 r"\(only mixup_r, varmixup use a VAE\)"):
        config.Params.from_dict(raw)


def test_perturbation_settings_are_validated():
    p = config.load_params(ROOT / "params.yaml")
    ev = p.profiles["default"].eval
    assert ev.perturbation_eps == (2, 8) and ev.perturbation_steps >= 20 and ev.perturbation_restarts >= 2
    for key, value, allowed in (("perturbation_eps", [0], "a number > 0 and <= 255"), ("perturbation_steps", 0, "1"),
                                ("perturbation_restarts", 0, "1"), ("autoattack_version", "plus", "standard, rand, apgd"),
                                ("autoattack_eps", -1, "255")):
        raw = edit(RAW, ("profiles", "default", "eval", key), value)
        with pytest.raises(errors.ConfigError, match=rf"profiles.default.eval.{key}.*{allowed}"):
            config.Params.from_dict(raw)


def test_the_adversarial_vae_has_its_own_block():
    p = config.load_params(ROOT / "params.yaml")
    assert p.vae_of("plain") == p.vae and p.vae.adversarial is None
    adv = p.vae_of("adversarial")
    assert adv.adversarial == p.selected.vae_adversarial and dataclasses.replace(adv, adversarial=None) == p.vae
    with pytest.raises(ValueError, match="vae kind = 'robust': expected one of plain, adversarial"):
        p.vae_of("robust")
    # the plain VAE's block may not carry the PGD: it would make the vae stage's VAE adversarial
    raw = edit(RAW, ("profiles", "default", "vae", "adversarial"), {"eps": 8.0, "step": 2.0, "steps": 2})
    with pytest.raises(errors.ConfigError, match=r"profiles.default.vae.adversarial = .* expected null here: "
                                                 r"the adversarial VAE's PGD goes in profiles.default.vae_adversarial"):
        config.Params.from_dict(raw)
    # an arm that needs the adversarial VAE, in a profile without one: stopped before anything runs
    raw = copy.deepcopy(RAW)
    del raw["profiles"]["default"]["vae_adversarial"]
    with pytest.raises(errors.ConfigError, match=r"profiles.default.vae_adversarial is not set, but the arms "
                                                 r"adv_varmixup use the adversarial VAE"):
        config.Params.from_dict(raw)
    raw["rival_arms"] = [a for a in raw["rival_arms"] if a != "adv_varmixup"]
    q = config.Params.from_dict(raw)
    with pytest.raises(errors.ConfigError, match="profiles.default.vae_adversarial is not set"):
        q.vae_of("adversarial")
    raw = edit(RAW, ("profiles", "default", "vae_adversarial", "steps"), 0)
    with pytest.raises(errors.ConfigError, match=r"profiles.default.vae_adversarial.steps = 0 is invalid"):
        config.Params.from_dict(raw)
