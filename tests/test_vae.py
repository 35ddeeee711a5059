"""The MMD-VAE: shapes and range, the MMD estimate, the loss on real data, training, resume, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import varmix.learn.vae as vae_mod
from varmix.core.config import VAEConfig
from varmix.learn import gate
from varmix.learn.data import ImageData, load_raw, to_float
from varmix.learn.vae import ConvVAE, load_vae, mmd, reconstruction_metrics, save_vae, train_vae, vae_loss


@pytest.fixture(scope="module")
def fmnist():
    """256 real Fashion-MNIST training images and 64 test images (uint8)."""
    d = load_raw("fashion-mnist")
    return d.train_x[:256].clone(), d.test_x[:64].clone()


def tiny_cfg(**kw) -> VAEConfig:
    base = dict(latent_dim=4, width=4, epochs=2, batch_size=64, lr=1e-3, gamma=10.0)
    base.update(kw)
    return VAEConfig(**base)


# ----------------------------------------------------------------------------------------------
# model
@pytest.mark.parametrize("c,s", [(1, 28), (3, 32), (3, 64)])
def test_reconstruction_shape_and_range(c, s):
    torch.manual_seed(0)
    vae = ConvVAE(c, s, latent_dim=6, width=4)
    x = torch.rand(3, c, s, s)
    with torch.no_grad():
        x_hat = vae.reconstruct(x)
        mu, logvar = vae.encode(x)
        # reconstruct is the decoder mean at the posterior mean
        torch.testing.assert_close(x_hat, vae.decode(mu), rtol=0, atol=0)
        # the decoder mean stays in [0, 1] even far from the prior's mass
        far = vae.decode(1e4 * torch.randn(4, 6))
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32
    for out in (x_hat, far):
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(far.max() - far.min()) > 0.5  # and the test is not trivially met by constant 0.5 outputs
    assert mu.shape == logvar.shape == (3, 6)
    out, mu2, logvar2, z = vae(x, gen=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and z.shape == (3, 6)
    assert not torch.equal(z, mu2)  # z is a sample, not the mean
    # the noise comes from the generator: the same seed gives the same z
    _, _, _, z_again = vae(x, gen=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, z_again, rtol=0, atol=0)
    assert (vae.in_channels, vae.image_size, vae.latent_dim, vae.width) == (c, s, 6, 4)


@pytest.mark.parametrize("kw,word", [
    (dict(in_channels=2, image_size=28, latent_dim=4), "in_channels = 2"),
    (dict(in_channels=1, image_size=48, latent_dim=4), "image_size = 48"),
    (dict(in_channels=1, image_size=28.0, latent_dim=4), "image_size = 28.0"),
    (dict(in_channels=1, image_size=28, latent_dim=0), "latent_dim = 0"),
    (dict(in_channels=1, image_size=28, latent_dim=4, width=0), "width = 0"),
])
def test_bad_constructor_args(kw, word):
    with pytest.raises(ValueError, match=word):
        ConvVAE(**kw)


def test_encode_rejects_wrong_shape_and_dtype():
    vae = ConvVAE(1, 28, 4, width=4)
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        vae.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        vae.encode(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        vae.decode(torch.zeros(2, 5))


# ----------------------------------------------------------------------------------------------
# MMD
def test_mmd_near_zero_for_same_distribution_and_positive_when_shifted():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 8, generator=g), torch.randn(500, 8, generator=g)
    same = float(mmd(a, b))
    shifted = float(mmd(a, b + 1.0))
    assert abs(same) < 0.01
    # closed form for N(0, I) vs N(1, I) in 8 dims with bandwidth 2s^2 = 8:
    # 2 (s^2 / (s^2 + 2))^(d/2) (1 - exp(-d / (2 (s^2 + 2)))) = 2 (2/3)^4 (1 - e^(-2/3)) = 0.192
    assert shifted == pytest.approx(0.192, abs=0.03)
    assert shifted > 20 * abs(same)
    assert float(mmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    # symmetric, and the kernel is exp(-||u - v||^2 / dim): one point each gives 2 - 2 k(u, v)
    assert float(mmd(b, a)) == pytest.approx(same, abs=1e-6)
    u, v = torch.zeros(1, 4), torch.ones(1, 4)  # ||u - v||^2 = 4, dim 4 -> k = e^-1
    assert float(mmd(u, v)) == pytest.approx(2 - 2 * torch.e ** -1, rel=1e-6)


def test_mmd_rejects_mismatched_dims():
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(5, 4\)"):
        mmd(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="2-D"):
        mmd(torch.zeros(5), torch.zeros(5))


# ----------------------------------------------------------------------------------------------
# loss
@pytest.mark.parametrize("objective,likelihood", [("mmd", "bce"), ("mmd", "mse"), ("kl", "bce")])
def test_loss_decreases_on_real_images(fmnist, objective, likelihood):
    torch.manual_seed(0)
    x = to_float(fmnist[0][:128])
    cfg = tiny_cfg(objective=objective, likelihood=likelihood)
    vae = ConvVAE(1, 28, cfg.latent_dim, cfg.width)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        first, _ = vae_loss(vae, x, cfg, gen)
    for _ in range(20):
        loss, parts = vae_loss(vae, x, cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last, parts = vae_loss(vae, x, cfg, gen)
    assert float(last) < 0.8 * float(first)
    assert set(parts) == {"loss", "recon", objective}
    assert all(isinstance(v, float) for v in parts.values())
    weight = cfg.gamma if objective == "mmd" else cfg.beta
    assert parts["loss"] == pytest.approx(parts["recon"] + weight * parts[objective], rel=1e-5)


def test_loss_scale_is_summed_over_pixels():
    """Reconstruction is per-image NLL summed over pixels (mean over batch); KL summed over dims."""
    torch.manual_seed(0)
    vae = ConvVAE(1, 28, 4, width=4)
    x = torch.rand(8, 1, 28, 28)
    gen = torch.Generator().manual_seed(3)
    _, parts = vae_loss(vae, x, tiny_cfg(objective="kl", likelihood="mse", beta=0.0), gen)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        expected = (vae.decode(z) - x).pow(2).sum((1, 2, 3)).mean()
        kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(1).mean()
    assert parts["recon"] == pytest.approx(float(expected), rel=1e-5)
    assert parts["kl"] == pytest.approx(float(kl), rel=1e-5)


def test_vae_loss_rejects_non_config():
    with pytest.raises(ValueError, match="VAEConfig"):
        vae_loss(ConvVAE(1, 28, 4, width=4), torch.rand(2, 1, 28, 28), {"gamma": 1}, torch.Generator())


# ----------------------------------------------------------------------------------------------
# metrics
def test_reconstruction_metrics_values():
    vae = ConvVAE(1, 28, 4, width=4)
    x = torch.rand(10, 1, 28, 28)
    m = reconstruction_metrics(vae, x, batch_size=3)
    with torch.no_grad():
        r = vae.reconstruct(x)
    mse_i = (r - x).pow(2).flatten(1).mean(1)
    assert m["mse"] == pytest.approx(float(mse_i.mean()), rel=1e-5)
    assert m["psnr"] == pytest.approx(float((-10 * torch.log10(mse_i)).mean()), rel=1e-5)
    bce = torch.nn.functional.binary_cross_entropy(r, x, reduction="none").flatten(1).sum(1).mean()
    assert m["bce"] == pytest.approx(float(bce), rel=1e-4)
    # uint8 input is converted per batch
    xu = (x * 255).round().to(torch.uint8)
    assert reconstruction_metrics(vae, xu) == pytest.approx(reconstruction_metrics(vae, to_float(xu)))


# ----------------------------------------------------------------------------------------------
# training
def _weights(vae):
    return {k: v.clone() for k, v in vae.state_dict().items()}


def test_train_resume_is_bit_identical(fmnist, tmp_path):
    train_x, test_x = fmnist
    cfg2 = tiny_cfg(epochs=2, train_subset=128)
    full = train_vae(cfg2, train_x, test_x, tmp_path / "full", seed=7, device="cpu", progress=False)

    part_dir = tmp_path / "part"
    one = train_vae(tiny_cfg(epochs=1, train_subset=128), train_x, test_x, part_dir, seed=7, device="cpu",
                    progress=False)
    assert (part_dir / "checkpoint.pt").is_file()
    assert len(json.loads((part_dir / "history.json").read_text())) == 1
    resumed = train_vae(cfg2, train_x, test_x, part_dir, seed=7, device="cpu", progress=False)

    w_full, w_res, w_one = _weights(full), _weights(resumed), _weights(one)
    assert all(torch.equal(w_full[k], w_res[k]) for k in w_full)
    assert not all(torch.equal(w_full[k], w_one[k]) for k in w_full)  # the second epoch did train

    hist = json.loads((part_dir / "history.json").read_text())
    hist_full = json.loads((tmp_path / "full" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert [h["train"] for h in hist] == [h["train"] for h in hist_full]
    assert set(hist[0]) == {"epoch", "train", "test"} and set(hist[0]["test"]) == {"mse", "psnr", "bce"}
    assert set(hist[0]["train"]) == {"loss", "recon", "mmd"}

    # returned frozen and in eval mode; vae.pt holds the same weights
    assert not resumed.training and not any(p.requires_grad for p in resumed.parameters())
    loaded = load_vae(part_dir / "vae.pt")
    assert all(torch.equal(loaded.state_dict()[k], w_full[k]) for k in w_full)

    # a checkpoint from another seed is not silently continued
    with pytest.raises(ValueError, match="different run"):
        train_vae(cfg2, train_x, test_x, part_dir, seed=8, device="cpu", progress=False)
    # nor one that already went further than asked
    with pytest.raises(ValueError, match="holds 2 epochs"):
        train_vae(tiny_cfg(epochs=1, train_subset=128), train_x, test_x, part_dir, seed=7, device="cpu",
                  progress=False)


def test_train_uses_train_subset_and_seed(fmnist, tmp_path):
    train_x, test_x = fmnist
    cfg = tiny_cfg(epochs=1, train_subset=64)
    a = train_vae(cfg, train_x, test_x, tmp_path / "a", seed=1, device="cpu", progress=False)
    # the subset is the first 64 images: the rest of the data does not matter
    other = train_x.clone()
    other[64:] = 0
    b = train_vae(cfg, other, test_x, tmp_path / "b", seed=1, device="cpu", progress=False)
    c = train_vae(cfg, train_x, test_x, tmp_path / "c", seed=2, device="cpu", progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_nan_loss_is_detected(fmnist, tmp_path, monkeypatch):
    train_x, test_x = fmnist
    real = vae_mod.vae_loss
    calls = {"n": 0}

    def nan_on_third_step(vae, x, cfg, gen):
        calls["n"] += 1
        loss, parts = real(vae, x, cfg, gen)
        if calls["n"] == 3:
            loss = loss * float("nan")
            parts = {**parts, "loss": float("nan")}
        return loss, parts

    monkeypatch.setattr(vae_mod, "vae_loss", nan_on_third_step)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 1 step 3/4"):
        train_vae(tiny_cfg(epochs=1), train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    assert not (tmp_path / "vae.pt").exists()


def test_train_divergence_from_huge_lr_is_detected(fmnist, tmp_path):
    train_x, test_x = fmnist
    with pytest.raises(FloatingPointError, match="epoch 1 step"):
        train_vae(tiny_cfg(epochs=1, lr=1e30), train_x, test_x, tmp_path, seed=0, device="cpu",
                  progress=False)


@pytest.mark.parametrize("train_x,word", [
    (torch.zeros(4, 1, 28, 28), "float32"),
    (torch.zeros(4, 28, 28, dtype=torch.uint8), r"\(4, 28, 28\)"),
    (torch.zeros(4, 1, 30, 30, dtype=torch.uint8), r"\(1, 30, 30\)"),
    (torch.zeros(0, 1, 28, 28, dtype=torch.uint8), "non-empty"),
])
def test_train_rejects_bad_images(tmp_path, train_x, word):
    test_x = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match=word):
        train_vae(tiny_cfg(), train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    assert not any(tmp_path.iterdir())  # nothing started


def test_train_rejects_bad_cfg_seed_and_mismatched_test(tmp_path):
    x = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    with pytest.raises(ValueError, match="VAEConfig"):
        train_vae({"epochs": 1}, x, x, tmp_path, seed=0)
    with pytest.raises(ValueError, match="seed = -1"):
        train_vae(tiny_cfg(), x, x, tmp_path, seed=-1)
    with pytest.raises(ValueError, match="differ in shape"):
        train_vae(tiny_cfg(), x, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), tmp_path, seed=0)


# ----------------------------------------------------------------------------------------------
# save / load
def test_save_load_roundtrip_and_corrupt_file(tmp_path):
    torch.manual_seed(0)
    vae = ConvVAE(3, 32, 5, width=4)
    path = tmp_path / "vae.pt"
    save_vae(path, vae, tiny_cfg(latent_dim=5))
    loaded = load_vae(path)
    assert (loaded.in_channels, loaded.image_size, loaded.latent_dim, loaded.width) == (3, 32, 5, 4)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.reconstruct(x), vae.reconstruct(x), rtol=0, atol=0)
    assert torch.load(path, weights_only=False)["config"]["latent_dim"] == 5

    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_vae(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(ValueError, match="not a VAE"):
        load_vae(path)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------
# the quality gate: config, probe, check
@pytest.fixture(scope="module")
def fmnist_data():
    """The first 256 training and 64 test images of Fashion-MNIST with labels, as an ImageData."""
    d = load_raw("fashion-mnist")
    return ImageData(d.name, d.train_x[:256].clone(), d.train_y[:256].clone(), d.test_x[:64].clone(),
                     d.test_y[:64].clone())


def test_gate_config_defaults_and_values():
    c = VAEConfig.from_dict({}, "profiles.default.vae")
    assert (c.min_psnr, c.min_recon_accuracy, c.probe_epochs, c.probe_subset) == (None, None, 3, 10_000)
    assert c.lr_schedule == "constant"
    c = VAEConfig.from_dict({"min_psnr": 21, "min_recon_accuracy": "0.8", "probe_epochs": 2,
                             "probe_subset": 500, "lr_schedule": "cosine"}, "profiles.default.vae")
    assert (c.min_psnr, c.min_recon_accuracy, c.probe_epochs, c.probe_subset) == (21.0, 0.8, 2, 500)
    assert c.lr_schedule == "cosine"
    # the edges of the ranges are allowed
    c = VAEConfig.from_dict({"min_psnr": 100, "min_recon_accuracy": 0, "probe_subset": 2}, "k")
    assert (c.min_psnr, c.min_recon_accuracy, c.probe_subset) == (100.0, 0.0, 2)


@pytest.mark.parametrize("key,value,shown,allowed", [
    ("min_psnr", -1, "-1.0", "a number >= 0 and <= 100"),
    ("min_psnr", 101, "101.0", "a number >= 0 and <= 100"),
    ("min_psnr", "high", "'high'", "a number >= 0 and <= 100"),
    ("min_psnr", float("nan"), "nan", "a finite number >= 0 and <= 100"),
    ("min_recon_accuracy", 80, "80.0", "a number >= 0 and <= 1"),
    ("min_recon_accuracy", -0.1, "-0.1", "a number >= 0 and <= 1"),
    ("min_recon_accuracy", True, "True", "a number >= 0 and <= 1"),
    ("probe_epochs", 0, "0", "an integer >= 1 and <= 10000"),
    ("probe_epochs", 1.5, "1.5", "an integer >= 1 and <= 10000"),
    ("probe_subset", 1, "1", "an integer >= 2 and <= 10000000"),
    ("probe_subset", None, "None", "an integer >= 2 and <= 10000000"),
    ("lr_schedule", "step", "'step'", "one of constant, cosine"),
])
def test_gate_config_rejects_bad_values(key, value, shown, allowed):
    from varmix.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        VAEConfig.from_dict({key: value}, "profiles.default.vae")
    assert str(err.value) == f"params: profiles.default.vae.{key} = {shown} is invalid: expected {allowed}"


def test_reconstruct_uint8_is_the_quantised_decoder_mean(fmnist):
    torch.manual_seed(0)
    vae = ConvVAE(1, 28, 4, width=4)
    x = fmnist[1][:10]
    r = gate.reconstruct_uint8(vae, x, batch_size=3)
    with torch.no_grad():
        expected = (vae.reconstruct(to_float(x)) * 255).round().to(torch.uint8)
    assert r.dtype == torch.uint8 and r.shape == x.shape
    assert torch.equal(r, expected)


def test_recon_probe_accuracy_is_deterministic_and_cached(fmnist_data, tmp_path):
    cfg = tiny_cfg(epochs=1, train_subset=128, probe_epochs=1, probe_subset=128)
    vae = train_vae(cfg, fmnist_data.train_x, fmnist_data.test_x, tmp_path / "vae", seed=0, device="cpu",
                    progress=False)
    a = gate.recon_probe(vae, fmnist_data, cfg, seed=0, device="cpu", out_dir=tmp_path / "a",
                            progress=False)
    acc = a["recon_probe_accuracy"]
    assert 0.0 <= acc <= 1.0
    assert a["recon_probe_images"] == 128 and a["recon_probe_epochs"] == 1
    # the accuracy is the probe's on the clean test images (not on reconstructions of them)
    logits = torch.from_numpy(np.load(tmp_path / "a" / "test_logits.npy"))
    assert acc == pytest.approx(float((logits.argmax(1) == fmnist_data.test_y).float().mean()), abs=1e-7)
    assert json.loads((tmp_path / "a" / "params.json").read_text())["n_train"] == 128
    assert len(json.loads((tmp_path / "a" / "history.json").read_text())) == 1
    # deterministic: another folder gives the same bytes; the same folder is reused, not retrained
    b = gate.recon_probe(vae, fmnist_data, cfg, seed=0, device="cpu", out_dir=tmp_path / "b",
                            progress=False)
    assert b == a
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()
    mtime = (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns
    assert gate.recon_probe(vae, fmnist_data, cfg, seed=0, device="cpu", out_dir=tmp_path / "a",
                               progress=False) == a
    assert (tmp_path / "a" / "checkpoint.pt").stat().st_mtime_ns == mtime
    # another VAE's probe folder is redone (not an error, not reused): as a fresh folder would be
    other = ConvVAE(1, 28, cfg.latent_dim, cfg.width).eval()
    redo = gate.recon_probe(other, fmnist_data, cfg, seed=0, device="cpu", out_dir=tmp_path / "a",
                               progress=False)
    fresh = gate.recon_probe(other, fmnist_data, cfg, seed=0, device="cpu", out_dir=tmp_path / "c",
                                progress=False)
    assert redo == fresh
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "c" / "model.pt").read_bytes()
    assert (tmp_path / "a" / "model.pt").read_bytes() != (tmp_path / "b" / "model.pt").read_bytes()


def test_recon_probe_at_chance_is_below_the_gate(fmnist_data, tmp_path):
    """An untrained VAE's reconstructions carry nothing of the class: the probe stays at chance, which the
    trainer's divergence check stops at epoch 2; that is reported as the VAE's failure, not the lr's."""
    from varmix.core.errors import VAEBelowGate

    torch.manual_seed(0)
    vae = ConvVAE(1, 28, 4, width=4).eval()
    with pytest.raises(VAEBelowGate, match=r"probe classifier trained on the VAE's reconstructions learnt "
                                           r"nothing \(training diverged: method erm, epoch 2.*vae\.epochs"):
        gate.recon_probe(vae, fmnist_data, tiny_cfg(probe_epochs=2, probe_subset=128), seed=0,
                            device="cpu", out_dir=tmp_path, progress=False)


def test_recon_probe_rejects_bad_input(fmnist_data, tmp_path):
    cfg = tiny_cfg(probe_subset=16)
    with pytest.raises(ValueError, match="VAEConfig"):
        gate.recon_probe(ConvVAE(1, 28, 4, width=4), fmnist_data, {"probe_subset": 16}, seed=0,
                            out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"images of shape \(1, 28, 28\) given to a VAE for images \(3, 32, 32\)"):
        gate.recon_probe(ConvVAE(3, 32, 4, width=4), fmnist_data, cfg, seed=0, out_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing started


@pytest.mark.parametrize("metrics,failed,passed", [
    ({"psnr": 21.4, "recon_probe_accuracy": 0.9}, ["test PSNR 21.40 dB is below min_psnr = 22 dB "
                                                  "(profiles.default.vae.min_psnr)"], ["min_recon_accuracy"]),
    ({"psnr": 30.0, "recon_probe_accuracy": 0.7993},
     ["reaches 0.7993 clean test accuracy, below min_recon_accuracy = 0.8 "
      "(profiles.default.vae.min_recon_accuracy)"], ["min_psnr ="]),
    ({"psnr": 12.0, "recon_probe_accuracy": 0.1},
     ["test PSNR 12.00 dB is below min_psnr = 22 dB", "0.1000 clean test accuracy, below min_recon_accuracy"],
     []),
])
def test_check_gate_names_value_threshold_key_and_remedy(metrics, failed, passed):
    from varmix.core.errors import UserError, VAEBelowGate

    cfg = tiny_cfg(min_psnr=22.0, min_recon_accuracy=0.8)
    with pytest.raises(VAEBelowGate) as err:
        gate.check_gate(metrics, cfg, profile="default")
    msg = str(err.value)
    assert isinstance(err.value, UserError)
    for part in failed:
        assert part in msg
    for part in passed:
        assert part not in msg
    for remedy in ("vae.epochs", "vae.width", "vae.latent_dim"):
        assert remedy in msg


def test_check_gate_passes_at_or_above_and_without_thresholds():
    cfg = tiny_cfg(min_psnr=22.0, min_recon_accuracy=0.8)
    gate.check_gate({"psnr": 22.0, "recon_probe_accuracy": 0.8}, cfg)
    gate.check_gate({"psnr": 35.0, "recon_probe_accuracy": 1.0}, cfg)
    gate.check_gate({"psnr": 5.0, "recon_probe_accuracy": 0.0}, tiny_cfg())  # no gate
    gate.check_gate({}, tiny_cfg())  # nothing to check, nothing needed
    only_psnr = tiny_cfg(min_psnr=22.0)
    gate.check_gate({"psnr": 23.0}, only_psnr)  # the probe is not needed when it is not gated
    with pytest.raises(ValueError, match=r"metrics\['recon_probe_accuracy'\] = None.*min_recon_accuracy"):
        gate.check_gate({"psnr": 30.0}, cfg)


def test_gate_settings_do_not_invalidate_the_vae_checkpoint(fmnist, tmp_path):
    train_x, test_x = fmnist
    cfg = tiny_cfg(epochs=1, train_subset=64)
    train_vae(cfg, train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    # a changed gate or probe continues the same checkpoint; a changed training setting does not
    train_vae(tiny_cfg(epochs=1, train_subset=64, min_psnr=20.0, min_recon_accuracy=0.5, probe_epochs=9,
                       probe_subset=99), train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="different run"):
        train_vae(tiny_cfg(epochs=1, train_subset=64, lr_schedule="cosine"), train_x, test_x, tmp_path,
                  seed=0, device="cpu", progress=False)


def test_cosine_schedule():
    cos = tiny_cfg(lr=2e-3, lr_schedule="cosine")
    assert vae_mod.step_lr(cos, 0, 100) == pytest.approx(2e-3)
    assert vae_mod.step_lr(cos, 50, 100) == pytest.approx(1e-3)
    assert vae_mod.step_lr(cos, 99, 100) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 0.99)))
    assert vae_mod.step_lr(tiny_cfg(lr=2e-3), 99, 100) == 2e-3


def test_training_follows_the_cosine_schedule(fmnist, tmp_path):
    train_x, test_x = fmnist
    cfg = tiny_cfg(epochs=1, train_subset=128, lr=2e-3, lr_schedule="cosine")  # 2 steps of 64
    train_vae(cfg, train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(vae_mod.step_lr(cfg, 1, 2)) == 1e-3
