"""adv-VarMixup's VAE (our recipe, docs/ADVERSARIAL.md): the config, the attack on the VAE's loss, training
on attacked batches (eps = 0 is the plain VAE bit for bit), resume and the checkpoint key."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import varmix.learn.vae as vae_mod
from varmix.core.config import AdversarialConfig, AdversarialVAEConfig, VAEConfig
from varmix.core.errors import ConfigError
from varmix.learn.data import load_raw, to_float
from varmix.learn.vae import adversarial_batch, train_vae, vae_loss


@pytest.fixture(scope="module")
def fmnist():
    """128 real Fashion-MNIST training images and 32 test images (uint8)."""
    d = load_raw("fashion-mnist")
    return d.train_x[:128].clone(), d.test_x[:32].clone()


def tiny_cfg(adversarial=None, **kw) -> VAEConfig:
    base = dict(latent_dim=4, width=4, epochs=1, batch_size=64, lr=1e-3, gamma=10.0, adversarial=adversarial)
    base.update(kw)
    return VAEConfig(**base)


def adv(eps=8.0, step=2.0, steps=2, random_start=True) -> AdversarialVAEConfig:
    return AdversarialVAEConfig(eps=eps, step=step, steps=steps, random_start=random_start)


def _weights(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def plain(fmnist, tmp_path_factory):
    """A plain VAE trained 1 epoch (2 steps) on the 128 images, seed 3: its weights and its folder."""
    out = tmp_path_factory.mktemp("plain")
    vae = train_vae(tiny_cfg(), *fmnist, out, seed=3, device="cpu", progress=False)
    return _weights(vae), out


# ----------------------------------------------------------------------------------------------
# config
def test_config_default_none_and_parsed_block():
    assert VAEConfig().adversarial is None
    assert VAEConfig.from_dict({}, "profiles.smoke.vae").adversarial is None
    assert VAEConfig.from_dict({"adversarial": None}, "profiles.smoke.vae").adversarial is None
    c = VAEConfig.from_dict({"adversarial": {"eps": 8.0, "step": 2.0, "steps": 2, "random_start": True}}, "k")
    assert c.adversarial == adv() and type(c.adversarial) is AdversarialVAEConfig
    assert (c.adversarial.radius, c.adversarial.step_size) == (8 / 255, 2 / 255)
    # the keys left out take the defaults, those of train.adversarial's attack
    d = VAEConfig.from_dict({"adversarial": {"steps": 3}}, "k").adversarial
    assert (d.eps, d.step, d.steps, d.random_start) == (8.0, 2.0, 3, True)
    assert (AdversarialConfig().eps, AdversarialConfig().step) == (d.eps, d.step)


@pytest.mark.parametrize("block,shown", [
    ({"eps": -1}, "eps = -1.0 is invalid: expected a number >= 0 and <= 255"),
    ({"eps": 256}, "eps = 256.0 is invalid: expected a number >= 0 and <= 255"),
    ({"eps": float("nan")}, "eps = nan is invalid: expected a finite number >= 0 and <= 255"),
    ({"step": 0}, "step = 0.0 is invalid: expected a number > 0 and <= 255"),
    ({"step": "big"}, "step = 'big' is invalid: expected a number > 0 and <= 255"),
    ({"steps": 0}, "steps = 0 is invalid: expected an integer >= 1 and <= 10000"),
    ({"steps": 2.5}, "steps = 2.5 is invalid: expected an integer >= 1 and <= 10000"),
    ({"random_start": "yes"}, "random_start = 'yes' is invalid: expected true or false"),
])
def test_config_rejects_bad_values_with_key_value_and_range(block, shown):
    with pytest.raises(ConfigError) as err:
        VAEConfig.from_dict({"adversarial": block}, "profiles.smoke.vae")
    assert str(err.value) == f"params: profiles.smoke.vae.adversarial.{shown}"


def test_config_rejects_unknown_keys_and_non_mappings():
    with pytest.raises(ConfigError, match=r"unknown key profiles.smoke.vae.adversarial.beta; allowed keys in "
                                          r"profiles.smoke.vae.adversarial: eps, random_start, step, steps"):
        VAEConfig.from_dict({"adversarial": {"beta": 6.0}}, "profiles.smoke.vae")
    with pytest.raises(ConfigError, match=r"profiles.smoke.vae.adversarial = True is invalid: expected a mapping"):
        VAEConfig.from_dict({"adversarial": True}, "profiles.smoke.vae")


@pytest.mark.parametrize("bad,word", [
    (adv(eps=-1.0), r"cfg.adversarial.eps = -1.0 is invalid: expected a finite number >= 0 \(units of 1/255\)"),
    (adv(steps=0), r"cfg.adversarial.steps = 0 is invalid: expected an integer >= 1"),
    (adv(random_start=1), r"cfg.adversarial.random_start = 1 is invalid"),
    (AdversarialConfig(), r"cfg.adversarial is a AdversarialConfig: expected None or a "
                          r"varmix.core.config.AdversarialVAEConfig"),
])
def test_train_vae_rejects_a_bad_config_built_in_code_before_any_work(fmnist, tmp_path, monkeypatch, bad, word):
    def no_work(*args, **kwargs):
        raise AssertionError("the VAE was built before the settings were checked")

    monkeypatch.setattr(vae_mod, "ConvVAE", no_work)
    with pytest.raises(ValueError, match=word):
        train_vae(tiny_cfg(bad), *fmnist, tmp_path / "run", seed=0, device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# the loss's target and the attack
def test_vae_loss_target_defaults_to_x_and_scores_the_decode_against_it(fmnist):
    torch.manual_seed(0)
    vae = vae_mod.ConvVAE(1, 28, 4, 4)
    x = to_float(fmnist[0][:16])
    cfg = tiny_cfg()
    plain, parts = vae_loss(vae, x, cfg, torch.Generator().manual_seed(1))
    same, same_parts = vae_loss(vae, x, cfg, torch.Generator().manual_seed(1), target=x.clone())
    assert torch.equal(plain, same) and parts == same_parts
    flipped, flipped_parts = vae_loss(vae, x, cfg, torch.Generator().manual_seed(1), target=1 - x)
    # the encoder saw the same images (the same z, the same MMD); only the reconstruction term moved
    assert flipped_parts["mmd"] == parts["mmd"] and flipped_parts["recon"] != parts["recon"]
    with pytest.raises(ValueError, match=r"target \(8, 1, 28, 28\) for images \(16, 1, 28, 28\)"):
        vae_loss(vae, x, cfg, torch.Generator(), target=x[:8])


@pytest.fixture(scope="module")
def trained(fmnist, tmp_path_factory):
    """A briefly trained VAE (width 8, 6 epochs of 4 steps at lr 1e-2) and its settings."""
    cfg = tiny_cfg(width=8, epochs=6, batch_size=32, lr=1e-2)
    return train_vae(cfg, *fmnist, tmp_path_factory.mktemp("trained"), seed=3, device="cpu", progress=False), cfg


def test_attack_stays_in_the_ball_and_raises_the_loss(fmnist, trained):
    vae, cfg = trained
    cfg = dataclasses.replace(cfg, adversarial=adv(eps=8.0, step=2.0, steps=4))
    x = to_float(fmnist[1])  # test images: not seen in training
    vae.requires_grad_(True)  # as in training (train_vae returns it frozen)
    for p in vae.parameters():
        p.grad = torch.full_like(p, 0.5)
    x_adv = adversarial_batch(vae, x, cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in vae.parameters())  # untouched
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert float((x_adv - x).abs().max()) > 7 / 255  # it moved to the edge of the ball
    # the same reparameterisation and prior draws for both: only the encoder's input differs
    clean = vae_loss(vae, x, cfg, torch.Generator().manual_seed(5))[1]["loss"]
    attacked = vae_loss(vae, x_adv, cfg, torch.Generator().manual_seed(5), target=x)[1]["loss"]
    assert attacked > clean * 1.02, (clean, attacked)  # measured: 412.0 -> 431.1
    # a random point of the ball (the attack's start alone) raises it far less (measured: 415.2)
    rand = (x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 8 / 255).clamp(0, 1)
    noisy = vae_loss(vae, rand, cfg, torch.Generator().manual_seed(5), target=x)[1]["loss"]
    assert attacked - clean > 2 * (noisy - clean), (clean, attacked, noisy)


def test_attack_at_eps_zero_is_the_batch_and_draws_only_from_its_generator(fmnist):
    torch.manual_seed(0)
    vae = vae_mod.ConvVAE(1, 28, 4, 4)
    x = to_float(fmnist[1][:8])
    gen = torch.Generator().manual_seed(0)
    rng = torch.get_rng_state()
    assert torch.equal(adversarial_batch(vae, x, tiny_cfg(adv(eps=0.0)), gen), x)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is left alone
    # 2 steps x (reparameterisation + prior: 8 x 4 normals each) after the start's 8 x 784 uniforms
    ref = torch.Generator().manual_seed(0)
    torch.rand((8, 1, 28, 28), generator=ref)
    torch.randn((2 * 2, 8, 4), generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())
    with pytest.raises(ValueError, match="cfg.adversarial is None"):
        adversarial_batch(vae, x, tiny_cfg(), gen)


# ----------------------------------------------------------------------------------------------
# training
def test_eps_zero_trains_the_plain_vae_bit_for_bit(fmnist, plain, tmp_path):
    weights, plain_dir = plain
    vae = train_vae(tiny_cfg(adv(eps=0.0)), *fmnist, tmp_path, seed=3, device="cpu", progress=False)
    assert _same(_weights(vae), weights)
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads(
        (plain_dir / "history.json").read_text())


def test_adversarial_training_changes_the_weights(fmnist, plain, tmp_path):
    weights, plain_dir = plain
    vae = train_vae(tiny_cfg(adv(eps=8.0)), *fmnist, tmp_path, seed=3, device="cpu", progress=False)
    w = _weights(vae)
    # every weight matrix moved (a bias can take Adam's first steps, +-lr each, either way)
    assert not _same(w, weights) and all(not torch.equal(w[k], weights[k]) for k in w if k.endswith("weight"))
    # the history records the loss of the attacked batches
    loss = json.loads((tmp_path / "history.json").read_text())[0]["train"]["loss"]
    assert loss != json.loads((plain_dir / "history.json").read_text())[0]["train"]["loss"]
    # the settings travel with the VAE; a plain VAE's file and checkpoint have no such entry
    assert torch.load(tmp_path / "vae.pt", weights_only=False)["config"]["adversarial"] == {
        "eps": 8.0, "step": 2.0, "steps": 2, "random_start": True}
    assert "adversarial" not in torch.load(plain_dir / "vae.pt", weights_only=False)["config"]
    plain_ckpt = torch.load(plain_dir / "checkpoint.pt", weights_only=False)
    assert "adversarial" not in plain_ckpt["key"]["config"] and "attack_generator" not in plain_ckpt


def test_interrupted_adversarial_run_resumes_bit_for_bit(fmnist, tmp_path, monkeypatch):
    cfg = tiny_cfg(adv(eps=8.0, steps=1), epochs=2, lr_schedule="cosine")  # 2 epochs of 2 steps
    full = _weights(train_vae(cfg, *fmnist, tmp_path / "full", seed=5, device="cpu", progress=False))

    real_save = vae_mod.save_torch

    def save_then_die(path, obj):
        real_save(path, obj)
        if path.name == "checkpoint.pt" and obj["epoch"] == 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")

    monkeypatch.setattr(vae_mod, "save_torch", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_vae(cfg, *fmnist, tmp_path / "part", seed=5, device="cpu", progress=False)
    monkeypatch.setattr(vae_mod, "save_torch", real_save)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = _weights(train_vae(cfg, *fmnist, tmp_path / "part", seed=5, device="cpu", progress=False))
    assert _same(resumed, full)
    assert (tmp_path / "part" / "history.json").read_text() == (tmp_path / "full" / "history.json").read_text()


def test_a_plain_checkpoint_is_refused_for_an_adversarial_config(fmnist, tmp_path):
    train_vae(tiny_cfg(), *fmnist, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError) as err:
        train_vae(tiny_cfg(adv()), *fmnist, tmp_path, seed=0, device="cpu", progress=False)
    assert str(err.value) == (
        f"{tmp_path / 'checkpoint.pt'} belongs to a different run: config.adversarial = None there, "
        f"{{'eps': 8.0, 'step': 2.0, 'steps': 2, 'random_start': True}} now; delete it to start over")
    # and an adversarial checkpoint for other attack settings, or for the plain VAE
    (tmp_path / "checkpoint.pt").unlink()
    train_vae(tiny_cfg(adv()), *fmnist, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"different run: config.adversarial = \{.*'steps': 2.*\} there, "
                                         r"\{.*'steps': 3.*\} now; delete"):
        train_vae(tiny_cfg(adv(steps=3)), *fmnist, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"different run: config.adversarial = \{.*\} there, None now; delete"):
        train_vae(tiny_cfg(), *fmnist, tmp_path, seed=0, device="cpu", progress=False)
    assert math.isfinite(json.loads((tmp_path / "history.json").read_text())[0]["train"]["loss"])
