"""varmix.learn.train on real Fashion-MNIST subsets with small_cnn: learning, resuming, outputs and errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from varmix.core import config, errors, names
from varmix.core.config import TrainConfig
from varmix.core.names import METHODS
from varmix.learn import attacks, mixing, train
from varmix.learn.data import ImageData, load_raw, to_float
from varmix.learn.models import build_model
from varmix.learn.vae import ConvVAE

N_TRAIN, N_TEST = 768, 256


@pytest.fixture(scope="module")
def fmnist():
    d = load_raw("fashion-mnist")
    return ImageData(d.name, d.train_x[:2000], d.train_y[:2000], d.test_x[:1000], d.test_y[:1000])


def _cfg(epochs=3, **kw):
    base = dict(arch="small_cnn", batch_size=128, epochs={m: epochs for m in METHODS},
                alpha={m: 1.0 for m in METHODS}, train_subset=N_TRAIN, test_subset=N_TEST)
    base.update(kw)
    return TrainConfig(**base)


def _weights(out_dir):
    return torch.load(out_dir / "model.pt", weights_only=False)["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(fmnist, tmp_path_factory):
    """An uninterrupted 3-epoch mixup run (mixup + augmentation exercise the whole random stream)."""
    out = tmp_path_factory.mktemp("reference")
    summary = train.train_classifier("mixup", _cfg(3), fmnist, out, seed=1, device="cpu")
    return out, summary


# ----------------------------------------------------------------------------------------------
def test_learns_and_writes_the_documented_files(reference, fmnist):
    out, summary = reference
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "test_loss", "test_acc", "lr"}  # no timings in out_dir
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert summary["test_acc"] == history[-1]["test_acc"] > 0.4  # 10 classes: chance is 0.1
    assert all(h["lr"] == 1e-3 for h in history)

    params = json.loads((out / "params.json").read_text())
    assert params["method"] == "mixup" and params["seed"] == 1 and params["arch"] == "small_cnn"
    own = config.to_dict(_cfg(3))
    own.update(epochs=3, alpha=1.0, mix_prob=1.0)  # the run's own values, not every method's
    del own["adversarial"]  # only the adversarial methods record their attack
    del own["processes"]  # how many processes train a run is not part of it (docs/DISTRIBUTED.md)
    assert params == json.loads(json.dumps({**own, "arm": "mixup", "method": "mixup", "seed": 1, "arch": "small_cnn",
                                            "dataset": "fashion-mnist", "n_train": N_TRAIN, "n_test": N_TEST,
                                            "image_shape": [1, 28, 28], "vae_md5": None}))

    logits = np.load(out / "test_logits.npy")
    labels = np.load(out / "test_labels.npy")
    assert logits.dtype == np.float32 and logits.shape == (N_TEST, 10)
    assert labels.dtype == np.int64 and np.array_equal(labels, fmnist.test_y[:N_TEST].numpy())
    assert (logits.argmax(1) == labels).mean() == pytest.approx(summary["test_acc"])

    model = train.load_classifier(out)
    assert not model.training
    again = train.predict_logits(model, fmnist.test_x[:N_TEST], batch_size=100)
    assert again.dtype == torch.float32 and again.shape == (N_TEST, 10)
    torch.testing.assert_close(again, torch.from_numpy(logits))
    floats = train.predict_logits(model, fmnist.test_x[:5].float() / 255)  # float input in [0, 1]
    torch.testing.assert_close(floats, again[:5])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["epoch"] == 3 and len(ckpt["history"]) == 3


def test_resume_after_interruption_is_bit_identical(reference, fmnist, tmp_path, kill_after_epoch):
    ref_out, _ = reference
    out = tmp_path / "run"
    kill_after_epoch(1)
    with pytest.raises(KeyboardInterrupt):
        train.train_classifier("mixup", _cfg(3), fmnist, out, seed=1, device="cpu")
    kill_after_epoch(None)
    assert not (out / "model.pt").exists()

    # continue with more epochs in two goes: 1 -> 2 (only epochs may change), then 2 -> 3
    s2 = train.train_classifier("mixup", _cfg(2), fmnist, out, seed=1, device="cpu")
    assert s2["resumed_from_epoch"] == 1 and s2["epochs"] == 2
    s3 = train.train_classifier("mixup", _cfg(3), fmnist, out, seed=1, device="cpu")
    assert s3["resumed_from_epoch"] == 2

    _assert_same_weights(_weights(out), _weights(ref_out))
    ref_hist = json.loads((ref_out / "history.json").read_text())
    hist = json.loads((out / "history.json").read_text())
    for key in ("train_loss", "test_loss", "test_acc"):
        assert [h[key] for h in hist] == [h[key] for h in ref_hist]
    assert np.array_equal(np.load(out / "test_logits.npy"), np.load(ref_out / "test_logits.npy"))

    # a finished run is not trained again
    s = train.train_classifier("mixup", _cfg(3), fmnist, out, seed=1, device="cpu")
    assert s["resumed_from_epoch"] == 3 and s["test_acc"] == s3["test_acc"]
    with pytest.raises(ValueError, match=r"already trained 3 epochs.*= 2"):
        train.train_classifier("mixup", _cfg(2), fmnist, out, seed=1, device="cpu")


def test_checkpoint_of_another_run_or_corrupt_is_refused(reference, fmnist, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((ref_out / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match=r"different run: lr = 0.001 there, 0.01 now"):
        train.train_classifier("mixup", _cfg(3, lr=1e-2), fmnist, out, seed=1, device="cpu")
    with pytest.raises(ValueError, match=r"different run: seed = 1 there, 2 now"):
        train.train_classifier("mixup", _cfg(3), fmnist, out, seed=2, device="cpu")
    with pytest.raises(ValueError, match=r"different run: arm = 'mixup' there, 'cutmix' now"):
        train.train_classifier("cutmix", _cfg(3), fmnist, out, seed=1, device="cpu")
    with pytest.raises(ValueError, match=r"different run: alpha = 1.0 there, 0.5 now"):
        train.train_classifier("mixup", _cfg(3, alpha={m: 0.5 for m in METHODS}), fmnist, out, seed=1, device="cpu")
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint.pt is corrupt"):
        train.train_classifier("mixup", _cfg(3), fmnist, out, seed=1, device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # nothing else written
    again = tmp_path / "again"
    again.mkdir()
    (again / "checkpoint.pt").write_bytes((ref_out / "checkpoint.pt").read_bytes())
    # other methods' settings and the attack are not this run's: the finished run is continued (not retrained)
    other = _cfg(3, alpha={**{m: 2.0 for m in METHODS}, "mixup": 1.0}, mix_prob={**{m: 0.5 for m in METHODS}, "mixup": 1.0},
                 adversarial=config.AdversarialConfig(steps=3))
    other = dataclasses.replace(other, epochs={**{m: 9 for m in METHODS}, "mixup": 3})
    assert train.train_classifier("mixup", other, fmnist, again, seed=1, device="cpu")["resumed_from_epoch"] == 3
    assert (again / "params.json").read_bytes() == (ref_out / "params.json").read_bytes()
    # a checkpoint of the older format (every method's epochs, alpha, mix_prob) is refused, saying why
    state = torch.load(ref_out / "checkpoint.pt", weights_only=False)
    state["params"].update(epochs={m: 3 for m in METHODS}, alpha={m: 1.0 for m in METHODS},
                           mix_prob={m: 1.0 for m in METHODS})
    torch.save(state, again / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint.pt records the settings of every method \(epochs, alpha, "
                                         r"mix_prob per method: an older varmix's format\).*Delete the checkpoint"):
        train.train_classifier("mixup", _cfg(3), fmnist, again, seed=1, device="cpu")


def test_sgd_schedule_and_determinism(fmnist, tmp_path):
    cfg = _cfg(2, optimizer="sgd", lr=0.05, schedule="step", milestones=(1,), lr_gamma=0.1, weight_decay=1e-4,
               train_subset=256, test_subset=64, augment=False, channels_last=False)
    a = train.train_classifier("erm", cfg, fmnist, tmp_path / "a", seed=3, device="cpu")
    b = train.train_classifier("erm", cfg, fmnist, tmp_path / "b", seed=3, device="cpu")
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["lr"] for h in hist] == pytest.approx([0.05, 0.005])
    assert a["test_acc"] == b["test_acc"]
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    c = train.train_classifier("erm", cfg, fmnist, tmp_path / "c", seed=4, device="cpu")
    assert not torch.equal(_weights(tmp_path / "a")["head.weight"], _weights(tmp_path / "c")["head.weight"])
    assert c["seed"] == 4


def test_cosine_schedule_decays_per_step_to_zero(fmnist, tmp_path):
    cfg = _cfg(2, schedule="cosine", lr=1e-3, train_subset=256, test_subset=64, augment=False)
    steps = 2  # 256 images in batches of 128
    factor = train.lr_factor(cfg, 2, steps)
    assert [factor(t) for t in range(5)] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                         (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])
    train.train_classifier("erm", cfg, fmnist, tmp_path / "a", seed=0, device="cpu")
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [h["lr"] for h in hist] == pytest.approx([1e-3, 0.5e-3])  # each epoch's first step
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the end: lr 0
    # a cosine run's length is its schedule's: continuing it to more epochs is refused
    with pytest.raises(ValueError, match=r"trained for 2 epochs on a cosine schedule.*continuing to 3"):
        train.train_classifier("erm", dataclasses.replace(cfg, epochs={m: 3 for m in METHODS}), fmnist,
                               tmp_path / "a", seed=0, device="cpu")


def test_arms_of_one_seed_see_the_same_images_crops_and_flips(fmnist, tmp_path, monkeypatch):
    # the study pairs arms by seed: the order and augmentation streams do not depend on what the method draws
    seen = {}
    real = train.augment_batch

    def record(x, gen, pad):
        out = real(x, gen, pad)
        seen.setdefault(current[0], []).append(out.clone())
        return out

    monkeypatch.setattr(train, "augment_batch", record)
    cfg = _cfg(2, train_subset=256, test_subset=64)
    current = ["erm"]
    train.train_classifier("erm", cfg, fmnist, tmp_path / "erm", seed=5, device="cpu")
    for method in ("mixup", "cutmix"):
        current[0] = method
        train.train_classifier(method, dataclasses.replace(cfg, mix_prob={m: 0.5 for m in METHODS}), fmnist,
                               tmp_path / method, seed=5, device="cpu")
    assert len(seen["erm"]) == 4
    for method in ("mixup", "cutmix"):
        assert all(torch.equal(a, b) for a, b in zip(seen["erm"], seen[method], strict=True)), method
    current[0] = "erm6"
    train.train_classifier("erm", cfg, fmnist, tmp_path / "erm6", seed=6, device="cpu")
    assert not torch.equal(seen["erm"][0], seen["erm6"][0])  # another seed, another order


def test_non_finite_loss_names_method_epoch_and_step(fmnist, tmp_path, monkeypatch):
    real = mixing.soft_cross_entropy
    calls = []

    def nan_on_third_step(logits, target):
        calls.append(1)
        loss = real(logits, target)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(mixing, "soft_cross_entropy", nan_on_third_step)
    with pytest.raises(FloatingPointError, match=r"cutmix: training loss is nan at epoch 1, step 3 of 4"):
        train.train_classifier("cutmix", _cfg(1, train_subset=512, batch_size=128), fmnist, tmp_path, seed=0,
                               device="cpu")
    assert not (tmp_path / "checkpoint.pt").exists()


def test_manifold_loss_switch_changes_the_step(fmnist):
    """train_step with loss='bce_softmax' takes the reference's gradient, BCELoss(softmax); soft_ce another."""
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.5], [0.5])
    xb, yb = fmnist.train_x[:32], fmnist.train_y[:32]
    mixer = mixing.make_mixer("manifold_mixup", num_classes=10, alpha=2.0)

    def step(loss):
        model = build_model("small_cnn", 1, 10, 28, [0.5], [0.5])
        model.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # new weights = old − gradient
        train.train_step(model, opt, mixer, xb, yb, torch.Generator().manual_seed(5), pad=None, amp=False,
                         channels_last=False, loss=loss)
        return {n: net.state_dict()[n] - p for n, p in model.state_dict().items() if n.endswith("weight")}

    grads = {loss: step(loss) for loss in names.MANIFOLD_LOSSES}
    # the reference's gradient, by hand, on the same mixed batch (same generator seed, same draws)
    model = build_model("small_cnn", 1, 10, 28, [0.5], [0.5])
    model.load_state_dict(net.state_dict())
    model.train()
    mb = mixer(to_float(xb), yb, torch.Generator().manual_seed(5))
    out = model(mb.x, mix_layer=mb.mix_layer, lam=mb.lam, perm=mb.perm)
    torch.nn.BCELoss()(torch.nn.Softmax(dim=1)(out), mb.target).backward()
    for n, p in model.named_parameters():
        if n.endswith("weight"):
            torch.testing.assert_close(grads["bce_softmax"][n], p.grad, rtol=1e-4, atol=1e-7)
    flat = {loss: torch.cat([g.flatten() for g in grads[loss].values()]) for loss in grads}
    assert flat["soft_ce"].norm() > 3 * flat["bce_softmax"].norm()  # the two losses' gradients differ
    assert train.loss_for("manifold_mixup", _cfg(manifold_loss="bce_softmax")) == "bce_softmax"
    assert train.loss_for("mixup", _cfg(manifold_loss="bce_softmax")) == "soft_ce"  # only Manifold Mixup


def test_manifold_loss_is_recorded_and_resume_with_another_is_refused(fmnist, tmp_path):
    cfg = _cfg(1, train_subset=256, test_subset=64, manifold_loss="bce_softmax")
    s = train.train_classifier("manifold_mixup", cfg, fmnist, tmp_path, seed=0, device="cpu", progress=False)
    assert json.loads((tmp_path / "params.json").read_text())["manifold_loss"] == "bce_softmax"
    ce = train.train_classifier("manifold_mixup", dataclasses.replace(cfg, manifold_loss="soft_ce"), fmnist,
                                tmp_path / "ce", seed=0, device="cpu", progress=False)
    assert s["train_loss"] < ce["train_loss"] / 3  # the history reports the loss that was optimised
    with pytest.raises(ValueError, match=r"different run: manifold_loss = 'bce_softmax' there, 'soft_ce' now"):
        train.train_classifier("manifold_mixup", dataclasses.replace(cfg, manifold_loss="soft_ce", epochs={
            m: 2 for m in METHODS}), fmnist, tmp_path, seed=0, device="cpu")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_end_to_end(method, fmnist, tmp_path):
    vae = None
    if method in train.VAE_METHODS:  # a tiny untrained VAE: enough to exercise the path
        torch.manual_seed(0)
        vae = ConvVAE(1, 28, latent_dim=4, width=4).eval()
    cfg = _cfg(1, train_subset=193, test_subset=64, batch_size=64, alpha={m: 2.0 for m in METHODS})
    s = train.train_classifier(method, cfg, fmnist, tmp_path / "run", seed=0, vae=vae, device="cpu",
                               progress=False, timings=tmp_path / "timings.json")
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"]) and s["method"] == method
    assert np.load(tmp_path / "run" / "test_logits.npy").shape == (64, 10)
    # 193 = 3 * 64 + 1: the last one-image batch is dropped (mixing needs a partner)
    times = json.loads((tmp_path / "timings.json").read_text())
    assert times[0]["images_per_s"] * times[0]["seconds"] == pytest.approx(192)


# ----------------------------------------------------------------------------------------------
def test_augment_batch_is_a_vectorised_crop_and_flip():
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (16, 2, 6, 5), dtype=torch.uint8)
    pad = 2
    expected_gen = torch.Generator().manual_seed(5)
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=expected_gen)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=expected_gen)
    flip = torch.rand(16, generator=expected_gen) < 0.5
    out = train.augment_batch(x, gen, pad)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for i in range(16):  # the slow per-sample definition
        crop = padded[i, :, oy[i]:oy[i] + 6, ox[i]:ox[i] + 5]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i
    assert flip.any() and (~flip).any() and (oy != pad).any()
    no_pad = train.augment_batch(x, gen, 0)  # flips only
    assert all(torch.equal(no_pad[i], x[i]) or torch.equal(no_pad[i], x[i].flip(-1)) for i in range(16))
    assert train.crop_padding(28) == 2 and train.crop_padding(32) == 4 and train.crop_padding(64) == 4


def test_bad_inputs_fail_before_training(fmnist, tmp_path):
    out = tmp_path / "never"

    def run(method="erm", cfg=None, data=fmnist, vae=None, seed=0):
        train.train_classifier(method, cfg or _cfg(1), data, out, seed=seed, vae=vae, device="cpu")

    with pytest.raises(ValueError, match=r"unknown method 'mixupp': expected one of erm, mixup, .*varmixup"):
        run("mixupp")
    with pytest.raises(ValueError, match=r"cfg.alpha.mixup = 0.0 is invalid: expected a number > 0"):
        run("mixup", _cfg(1, alpha={**_cfg(1).alpha, "mixup": 0.0}))
    with pytest.raises(ValueError, match=r"cfg.alpha.cutmix = -1.0"):
        run("erm", _cfg(1, alpha={**_cfg(1).alpha, "cutmix": -1.0}))  # any method's: the config is one
    shifted = ImageData(fmnist.name, fmnist.train_x, fmnist.train_y + 1, fmnist.test_x, fmnist.test_y)
    with pytest.raises(ValueError, match=r"wrong number of classes: fashion-mnist train labels range over "
                                         r"1..10, but the dataset has 10 classes"):
        run(data=shifted)
    with pytest.raises(ValueError, match=r"method 'varmixup' needs a trained VAE"):
        run("varmixup")
    with pytest.raises(ValueError, match=r"method 'mixup_r' needs a trained VAE"):
        run("mixup_r")
    with pytest.raises(ValueError, match=r"VAE is for 3-channel 32 px images, but fashion-mnist has 1-channel 28"):
        run("varmixup", vae=ConvVAE(3, 32, latent_dim=4, width=4))
    with pytest.raises(ValueError, match=r"cfg.manifold_layers\[1\] = 4 is invalid: expected an integer >= 0 and <= 3"):
        run("manifold_mixup", _cfg(1, manifold_layers=(0, 4)))
    with pytest.raises(ValueError, match=r"cfg.manifold_loss = 'bce' is invalid: expected one of soft_ce, "
                                         r"bce_softmax"):
        run("manifold_mixup", _cfg(1, manifold_loss="bce"))
    with pytest.raises(ValueError, match=r"seed = -1"):
        run(seed=-1)
    with pytest.raises(ValueError, match=r"cfg.epochs.erm = 0 is invalid: expected an integer >= 1"):
        run(cfg=dataclasses.replace(_cfg(1), epochs={**_cfg(1).epochs, "erm": 0}))
    with pytest.raises(ValueError, match=r"cfg.mix_prob.mixup = 0.0 is invalid: expected a number > 0 and <= 1"):
        run("mixup", dataclasses.replace(_cfg(1), mix_prob={**_cfg(1).mix_prob, "mixup": 0}))
    with pytest.raises(ValueError, match=r"device = 'tpu'"):
        train.train_classifier("erm", _cfg(1), fmnist, out, seed=0, device="tpu")
    floats = ImageData(fmnist.name, fmnist.train_x.float(), fmnist.train_y, fmnist.test_x, fmnist.test_y)
    with pytest.raises(ValueError, match=r"train images: torch.float32 .*expected uint8"):
        run(data=floats)
    assert not out.exists()


def test_load_and_predict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pt"):
        train.load_classifier(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        train.load_classifier(tmp_path)
    model = build_model("small_cnn", 1, 10, 28, [0.5], [0.5])
    with pytest.raises(ValueError, match=r"x is a torch.int64 tensor"):
        train.predict_logits(model, torch.zeros(2, 1, 28, 28, dtype=torch.long))
    with pytest.raises(ValueError, match=r"batch_size = 0"):
        train.predict_logits(model, torch.zeros(2, 1, 28, 28), batch_size=0)
    model.train()
    train.predict_logits(model, torch.zeros(2, 1, 28, 28))
    assert model.training  # mode restored


def test_progress_bars_follow_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert train._tqdm_disable(None) is None
    assert train._tqdm_disable(True) is False and train._tqdm_disable(False) is True
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert train._tqdm_disable(None) is True


# ----------------------------------------------------------------------------------------------
# the adversarial methods (at, trades, iat; varmix.learn.attacks, docs/ADVERSARIAL.md)
def _adv_cfg(epochs=1, **adv):
    settings = dict(eps=8.0, step=2.0, steps=1, random_start=True, beta=6.0)
    settings.update(adv)
    return _cfg(epochs, train_subset=256, test_subset=64, adversarial=config.AdversarialConfig(**settings))


def test_a_run_records_its_own_settings_only():
    """params.json and the checkpoint's same-run check hold the run's own epochs, alpha and mix_prob, and the
    attack only for an adversarial method: declaring another method or arm leaves existing runs' bytes."""
    cfg = _cfg(3, mix_prob={m: 0.5 for m in METHODS})
    more = dataclasses.replace(cfg, epochs={**cfg.epochs, "cutmix": 9}, adversarial=config.AdversarialConfig(steps=9))

    def record(method, c):
        return config.RunSettings.of(method, c).record()
    mixup = record("mixup", cfg)
    assert (mixup["epochs"], mixup["alpha"], mixup["mix_prob"]) == (3, 1.0, 0.5) and "adversarial" not in mixup
    assert record("mixup", more) == mixup
    assert record("cutmix", more)["epochs"] == 9
    at = record("at", cfg)
    assert at["adversarial"] == config.to_dict(cfg.adversarial) and at["epochs"] == 3
    assert record("at", more)["adversarial"]["steps"] == 9
    # an arm's own settings are the run's, the other methods' stay out of its record
    arm = config.RunSettings("mixup_quarter", "mixup", 3, 1.0, 0.25, cfg).record()
    assert arm == {**mixup, "mix_prob": 0.25}


def _params(out_dir):
    return {k: v for k, v in _weights(out_dir).items() if "running" not in k and "num_batches" not in k}


def test_at_at_eps_zero_trains_exactly_as_erm(fmnist, tmp_path):
    """AT's inner maximisation in a ball of radius 0 returns the batch itself, in eval mode (batch norm's
    statistics untouched), so an AT run is ERM's bit for bit: weights, buffers, logits, losses."""
    erm = train.train_classifier("erm", _adv_cfg(2), fmnist, tmp_path / "erm", seed=2, device="cpu")
    at0 = train.train_classifier("at", _adv_cfg(2, eps=0.0, steps=2), fmnist, tmp_path / "at0", seed=2,
                                 device="cpu")
    _assert_same_weights(_weights(tmp_path / "at0"), _weights(tmp_path / "erm"))
    assert at0["train_loss"] == erm["train_loss"] and at0["test_acc"] == erm["test_acc"]
    assert np.array_equal(np.load(tmp_path / "at0" / "test_logits.npy"), np.load(tmp_path / "erm" / "test_logits.npy"))
    # at the paper's radius the run differs, and its training loss (on the attacked batches) is higher
    at8 = train.train_classifier("at", _adv_cfg(2), fmnist, tmp_path / "at8", seed=2, device="cpu")
    assert not torch.equal(_weights(tmp_path / "at8")["head.weight"], _weights(tmp_path / "erm")["head.weight"])
    assert at8["train_loss"] > erm["train_loss"]


def test_trades_at_beta_zero_takes_erm_steps(fmnist, tmp_path):
    """TRADES with beta 0 is the clean CE: its parameters follow ERM's bit for bit. Its batch-norm running
    statistics differ, as in the reference: the adversarial batch's train-mode forward pass updates them too."""
    train.train_classifier("erm", _adv_cfg(2), fmnist, tmp_path / "erm", seed=2, device="cpu")
    t0 = train.train_classifier("trades", _adv_cfg(2, beta=0.0), fmnist, tmp_path / "t0", seed=2, device="cpu")
    _assert_same_weights(_params(tmp_path / "t0"), _params(tmp_path / "erm"))
    hist = json.loads((tmp_path / "erm" / "history.json").read_text())
    assert t0["train_loss"] == hist[-1]["train_loss"]
    w0, we = _weights(tmp_path / "t0"), _weights(tmp_path / "erm")
    assert w0["stages.0.1.num_batches_tracked"] == 2 * we["stages.0.1.num_batches_tracked"]
    t6 = train.train_classifier("trades", _adv_cfg(2), fmnist, tmp_path / "t6", seed=2, device="cpu")
    assert not torch.equal(_weights(tmp_path / "t6")["head.weight"], we["head.weight"])
    assert t6["train_loss"] > hist[-1]["train_loss"]  # CE + 6 KL


def test_iat_mixes_as_mixup_does(fmnist):
    """IAT's two batches are mixup's (varmix.learn.mixing.mixup) on the clean batch, then on the attacked one,
    with lambda and partners drawn from the same generator in that order; the attack uses its own."""
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.286], [0.353])
    x, y = to_float(fmnist.train_x[:16]), fmnist.train_y[:16]
    adversary = train.Adversary.from_config("iat", config.AdversarialConfig(steps=2))
    mixer = mixing.make_mixer(train.ADVERSARIAL_MIXER["iat"], num_classes=10, alpha=1.0)
    clean, adv = train.iat_batches(adversary, net, mixer, x, y, torch.Generator().manual_seed(3),
                                   torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(3)
    ref_clean = mixing.mixup(x, y, g, num_classes=10, alpha=1.0)
    x_adv = attacks.pgd_linf(net, x, y, 8 / 255, 2 / 255, 2, torch.Generator().manual_seed(4))
    ref_adv = mixing.mixup(x_adv, y, g, num_classes=10, alpha=1.0)
    for got, ref in ((clean, ref_clean), (adv, ref_adv)):
        assert got.lam == ref.lam and torch.equal(got.perm, ref.perm)
        assert torch.equal(got.x, ref.x) and torch.equal(got.target, ref.target)
    assert clean.lam != adv.lam  # two draws, not one lambda for both halves
    assert not torch.equal(adv.x, mixing.mixup(x, y, torch.Generator().manual_seed(3), num_classes=10).x)


def test_iat_loss_is_the_mean_of_its_two_halves(fmnist):
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.286], [0.353]).train()
    x, y = to_float(fmnist.train_x[:16]), fmnist.train_y[:16]
    adversary = train.Adversary.from_config("iat", config.AdversarialConfig(steps=1))
    mixer = mixing.make_mixer("mixup", num_classes=10, alpha=1.0)
    gens = lambda: (torch.Generator().manual_seed(3), torch.Generator().manual_seed(4))  # noqa: E731
    # the batches first: the attack runs in eval mode and leaves the batch-norm statistics as they are
    clean, adv = train.iat_batches(adversary, net, mixer, x, y, *gens())
    value = train.adversarial_loss(adversary, net, mixer, x, y, *gens())
    halves = [mixing.soft_cross_entropy(net(b.x), b.target) for b in (clean, adv)]  # train mode: batch statistics
    assert value.ndim == 0 and value.requires_grad
    torch.testing.assert_close(value, 0.5 * (halves[0] + halves[1]), rtol=0, atol=0)
    assert abs(float(halves[0].detach()) - float(halves[1].detach())) > 1e-4


def test_bad_adversarial_settings_are_named(fmnist, tmp_path):
    base = {"arch": "small_cnn", "epochs": 1, "alpha": 1.0}
    cases = [({"eps": -1}, r"params: profiles.smoke.train.adversarial.eps = -1.0 is invalid: expected a number "
                           r">= 0 and <= 255"),
             ({"eps": 300}, r"adversarial.eps = 300.0 is invalid: expected a number >= 0 and <= 255"),
             ({"eps": float("nan")}, r"adversarial.eps = nan is invalid: expected a finite number >= 0 and <= 255"),
             ({"step": 0}, r"adversarial.step = 0.0 is invalid: expected a number > 0 and <= 255"),
             ({"steps": 0}, r"adversarial.steps = 0 is invalid: expected an integer >= 1 and <= 10000"),
             ({"beta": -0.5}, r"adversarial.beta = -0.5 is invalid: expected a number >= 0 and <= 1000.0"),
             ({"beta": "six"}, r"adversarial.beta = 'six' is invalid: expected a number >= 0"),
             ({"random_start": "yes"}, r"adversarial.random_start = 'yes' is invalid: expected true or false"),
             ({"epsilon": 8}, r"unknown key profiles.smoke.train.adversarial.epsilon; allowed keys in "
                              r"profiles.smoke.train.adversarial: beta, eps, random_start, step, steps")]
    for adv, message in cases:
        with pytest.raises(errors.ConfigError, match=message):
            config.TrainConfig.from_dict({**base, "adversarial": adv}, "profiles.smoke.train")
    assert config.TrainConfig.from_dict(base, "k").adversarial == config.AdversarialConfig()
    # a TrainConfig built in code is checked by the trainer, before any work
    out = tmp_path / "never"
    for adv, message in (({"eps": -1.0}, r"cfg.adversarial.eps = -1.0 is invalid: expected a number >= 0 and <= 255"),
                         ({"steps": 0}, r"cfg.adversarial.steps = 0 is invalid: expected an integer >= 1"),
                         ({"beta": float("nan")}, r"cfg.adversarial.beta = nan is invalid: expected a finite number")):
        with pytest.raises(ValueError, match=message):
            train.train_classifier("trades", _adv_cfg(1, **adv), fmnist, out, seed=0, device="cpu")
    assert not out.exists()


def test_interrupted_at_run_resumes_bit_identically(fmnist, tmp_path, kill_after_epoch):
    cfg = _adv_cfg(3, steps=2)
    ref = train.train_classifier("at", cfg, fmnist, tmp_path / "ref", seed=1, device="cpu")
    kill_after_epoch(1)
    with pytest.raises(KeyboardInterrupt):
        train.train_classifier("at", cfg, fmnist, tmp_path / "run", seed=1, device="cpu")
    kill_after_epoch(None)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert sorted(state["generators"]) == ["attack", "augment", "mix", "order"]  # the attack's stream is saved
    assert json.loads((tmp_path / "run" / "params.json").read_text())["adversarial"] == config.to_dict(cfg.adversarial)
    s = train.train_classifier("at", cfg, fmnist, tmp_path / "run", seed=1, device="cpu")
    assert s["resumed_from_epoch"] == 1 and s["train_loss"] == ref["train_loss"]
    _assert_same_weights(_weights(tmp_path / "run"), _weights(tmp_path / "ref"))
    assert np.array_equal(np.load(tmp_path / "run" / "test_logits.npy"), np.load(tmp_path / "ref" / "test_logits.npy"))
    # the non-adversarial methods keep their three streams (their checkpoints are as before)
    train.train_classifier("erm", _adv_cfg(1), fmnist, tmp_path / "erm", seed=1, device="cpu")
    assert sorted(torch.load(tmp_path / "erm" / "checkpoint.pt", weights_only=False)["generators"]) == [
        "augment", "mix", "order"]
    # a resumed run with other attack settings is another run
    with pytest.raises(ValueError, match=r"different run: adversarial = .*'steps': 2.* there, .*'steps': 3.* now"):
        train.train_classifier("at", _adv_cfg(4, steps=3), fmnist, tmp_path / "run", seed=1, device="cpu")


def test_the_attack_draws_from_a_stream_of_its_own(fmnist, tmp_path, monkeypatch):
    """Whether the attack draws (random start) or not, an IAT run sees the same images, crops, flips,
    lambdas and partners: the attack's stream is not the order, augmentation or mixing stream."""
    seen = {}
    real_mixup, real_augment = mixing.MIXERS["mixup"], train.augment_batch

    def mixup(x, y, gen, **kw):
        mb = real_mixup(x, y, gen, **kw)
        seen[current].append((mb.lam, mb.perm.clone()))
        return mb

    def augment(x, gen, pad):
        out = real_augment(x, gen, pad)
        seen[current].append(out.clone())
        return out

    monkeypatch.setitem(mixing.MIXERS, "mixup", mixup)
    monkeypatch.setattr(train, "augment_batch", augment)
    for current in ("start", "no_start"):
        seen[current] = []
        train.train_classifier("iat", _adv_cfg(1, random_start=current == "start"), fmnist, tmp_path / current,
                               seed=0, device="cpu")
    assert len(seen["start"]) == 2 * 3  # 2 batches: augmentation, clean mixup, adversarial mixup
    for a, b in zip(seen["start"], seen["no_start"], strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else (a[0] == b[0] and torch.equal(a[1], b[1]))
    assert not torch.equal(_weights(tmp_path / "start")["head.weight"], _weights(tmp_path / "no_start")["head.weight"])
