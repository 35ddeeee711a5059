"""The paper's cross-dataset row: a VAE trained on Tiny-ImageNet (64x64) mixes CIFAR (32x32) images through
``varmix.learn.mixing.resize_images`` (docs/api.md, "A VAE of another image size"). The fixture datasets are
the small files tests/test_data.py writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from varmix.core.config import Params, TrainConfig, VAEConfig
from varmix.core.names import METHODS
from varmix.learn import mixing
from varmix.learn.data import to_float
from varmix.learn.vae import ConvVAE, train_vae
from varmix.pipeline import session

ROOT = Path(__file__).resolve().parents[1]


def _prepare(tmp: Path, *names: str) -> Path:
    from test_sample_distance import _prepare as prepare  # the small fixture files of each dataset

    prepare(tmp, *names)
    return tmp / "prep"


def _session(tmp: Path, dataset: str, vae_dataset: str | None) -> session.Session:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.update(profile="smoke", dataset=dataset, data_dir=str(tmp / "prep"))
    raw["profiles"]["smoke"]["vae"]["dataset"] = vae_dataset
    params = Params.from_dict(raw)
    return session.Session(params, session.Layout(tmp / "work", dataset, "smoke"), torch.device("cpu"))


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """The cifar10 classifier data, the tiny-imagenet VAE data and a tiny VAE trained on the latter (64x64)
    through the session, as the 01_vae notebook does."""
    tmp = tmp_path_factory.mktemp("cross")
    _prepare(tmp, "cifar10", "tiny-imagenet")
    s = _session(tmp, "cifar10", "tiny-imagenet")
    d = s.load_data()
    v = s.load_vae_data(d)  # refused before: another image size
    vae = train_vae(VAEConfig(latent_dim=4, width=4, epochs=2, batch_size=4), v.train_x, v.test_x,
                    s.layout.vae_folder("plain", s.vae_seed()), seed=0, device="cpu", progress=False)
    return s, d, v, vae


# ----------------------------------------------------------------------------------------------
def test_resize_images_is_bilinear_antialiased_and_clamped():
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    down = mixing.resize_images(x, (32, 32))
    assert down.shape == (2, 3, 32, 32) and 0 <= down.min() and down.max() <= 1
    assert torch.equal(down, F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False,
                                           antialias=True).clamp(0, 1))
    up = mixing.resize_images(down, (64, 64))
    assert torch.equal(up, F.interpolate(down, size=(64, 64), mode="bilinear", align_corners=False).clamp(0, 1))
    flat = torch.full((1, 1, 64, 64), 0.3)  # a constant image stays that constant
    assert torch.allclose(mixing.resize_images(flat, (32, 32)), torch.full((1, 1, 32, 32), 0.3))
    with pytest.raises(ValueError, match=r"size = \(32,\) is invalid: expected \(height, width\)"):
        mixing.resize_images(x, (32,))
    with pytest.raises(ValueError, match=r"x is a torch.uint8 tensor of shape \(1, 1, 4, 4\): expected float"):
        mixing.resize_images(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), (2, 2))


def test_a_64px_vae_mixes_32px_batches(cross):
    _, d, v, vae = cross
    assert v.name == "tiny-imagenet" and v.train_x.shape[1:] == (3, 64, 64) and vae.image_size == 64
    x, y = to_float(d.train_x[:6]), d.train_y[:6]
    a = mixing.varmixup(x, y, torch.Generator().manual_seed(3), num_classes=10, vae=vae)
    b = mixing.varmixup(x, y, torch.Generator().manual_seed(3), num_classes=10, vae=vae)
    assert a.x.shape == (6, 3, 32, 32) and a.x.dtype == torch.float32
    assert 0 <= a.x.min() and a.x.max() <= 1
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and a.lam == b.lam  # same generator
    with torch.no_grad():  # what the docs say: resize in, encode, mix, decode, resize back
        mu = vae.encode(mixing.resize_images(x, (64, 64)))[0]
        expected = mixing.resize_images(vae.decode(a.lam * mu + (1 - a.lam) * mu[a.perm]), (32, 32))
    assert torch.equal(a.x, expected)
    # mix_images (the figures) and Mixup-R take the same path
    pair = mixing.mix_images("varmixup", x, x[a.perm], a.lam, vae)
    assert torch.allclose(pair, a.x, atol=1e-6)
    r = mixing.mixup_r(x, y, torch.Generator().manual_seed(3), num_classes=10, vae=vae)
    assert r.x.shape == (6, 3, 32, 32) and 0 <= r.x.min() and r.x.max() <= 1
    assert torch.allclose(mixing.mix_images("mixup_r", x, x[r.perm], r.lam, vae), r.x, atol=1e-6)
    mixer = mixing.make_mixer("varmixup", num_classes=10, alpha=1.0, vae=vae)
    assert torch.equal(mixer(x, y, torch.Generator().manual_seed(3)).x, a.x)


def test_a_vae_of_the_batchs_size_never_resizes(monkeypatch):
    # the committed study's path (VAE and classifier of one size) must stay bit-identical
    def refuse(*a, **k):
        raise AssertionError("resize_images called on the same-size path")

    monkeypatch.setattr(mixing, "resize_images", refuse)
    vae = ConvVAE(3, 32, latent_dim=4, width=4).eval()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    mb = mixing.varmixup(x, y, torch.Generator().manual_seed(1), num_classes=4, vae=vae)
    with torch.no_grad():
        mu = vae.encode(x)[0]
        assert torch.equal(mb.x, vae.decode(mb.lam * mu + (1 - mb.lam) * mu[mb.perm]))
        r = mixing.mixup_r(x, y, torch.Generator().manual_seed(1), num_classes=4, vae=vae)
        xr = vae.reconstruct(x)
        assert torch.equal(r.x, r.lam * xr + (1 - r.lam) * xr[r.perm])
        assert torch.equal(mixing.vae_reconstruct(vae, x), xr)


def test_a_vae_for_other_channels_is_a_clear_error():
    vae = ConvVAE(1, 64, latent_dim=4, width=4).eval()
    x = torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"images of shape \(3, 32, 32\) do not fit a VAE for \(1, 64, 64\) "
                                         r"images: the number of channels must match"):
        mixing.varmixup(x, torch.arange(4), torch.Generator().manual_seed(0), num_classes=4, vae=vae)


def test_the_session_accepts_another_size_and_refuses_other_channels(cross, tmp_path):
    s, d, _, _ = cross
    s.check_vae_dataset()  # tiny-imagenet (3, 64, 64) for cifar10 (3, 32, 32): accepted
    assert s.load_vae().image_shape == (3, 64, 64)  # the stage's vae.pt, loaded for cifar10
    with pytest.raises(ValueError, match=r"vae.dataset = 'fashion-mnist' has images of shape \(1, 28, 28\), "
                                         r"the classifier's dataset 'cifar10' \(3, 32, 32\).*same number of "
                                         r"channels"):
        _session(tmp_path, "cifar10", "fashion-mnist").check_vae_dataset()


def test_the_trainer_and_the_gate_take_the_cross_dataset_vae(cross, tmp_path):
    from varmix.learn.gate import recon_probe, reconstruct_uint8
    from varmix.learn.train import train_classifier

    s, d, _, _ = cross
    vae = s.load_vae()
    cfg = TrainConfig(arch="small_cnn", batch_size=16, epochs={m: 1 for m in METHODS},
                      alpha={m: 1.0 for m in METHODS}, augment=False)
    summary = train_classifier("varmixup", cfg, d, tmp_path / "run", seed=0, vae=vae, device="cpu",
                               progress=False)
    assert 0 <= summary["test_acc"] <= 1
    recon = reconstruct_uint8(vae, d.train_x[:5])
    assert recon.shape == (5, 3, 32, 32) and recon.dtype == torch.uint8
    probe = recon_probe(vae, d, VAEConfig(latent_dim=4, width=4, probe_epochs=1, probe_subset=16), seed=0,
                        device="cpu", out_dir=tmp_path / "probe", augment=False, progress=False)
    assert probe["recon_probe_images"] == 16
    with pytest.raises(ValueError, match=r"the VAE is for 1-channel 64 px images, but cifar10 has 3-channel "
                                         r"32 px images: the channels must match"):
        train_classifier("varmixup", cfg, d, tmp_path / "bad", seed=0, vae=ConvVAE(1, 64, latent_dim=4, width=4))
