"""FID/KID of the mixers' images (varmix.evaluate.sample_distance) and the VAE's own dataset (vae.dataset)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from varmix.core.config import VAEConfig
from varmix.evaluate import sample_distance as sd
from varmix.learn.data import ImageData, load_raw, to_float
from varmix.learn.models import build_model
from varmix.learn.vae import ConvVAE
from varmix.pipeline import session


@pytest.fixture(scope="module")
def fmnist():
    """256 real Fashion-MNIST training images (uint8) with labels, and 128 test images."""
    d = load_raw("fashion-mnist")
    return d.train_x[:256].clone(), d.train_y[:256].clone(), d.test_x[:128].clone()


@pytest.fixture(scope="module")
def classifier():
    """A randomly initialised small CNN in eval mode (batch norm at its initial statistics)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("small_cnn", 1, 10, 28, [0.2860], [0.3530]).eval()


@pytest.fixture(scope="module")
def features(classifier):
    return sd.feature_extractor("classifier", classifier)


@pytest.fixture(scope="module")
def vae():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConvVAE(1, 28, latent_dim=4, width=4).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# the feature extractor
def test_classifier_features_are_the_penultimate_layer_as_torchmetrics_wants(classifier, features):
    torch.manual_seed(1)
    x = torch.rand(5, 1, 28, 28)
    f = features(x)
    assert f.shape == (5, 128 * 2 * 2) and f.dtype == torch.float64 and features.num_features == 512
    # the classifier's last linear layer applied to them gives the classifier's logits
    with torch.no_grad():
        assert torch.allclose(classifier.head(f.float()), classifier(x), atol=1e-5)
    # always in eval mode: an image's features do not depend on its batch
    features.train()
    assert not features.training and not features.body.training
    assert torch.allclose(features(x[:1]), f[:1], atol=1e-6)  # (batch-size rounding aside)
    # frozen: no gradients are tracked
    assert not f.requires_grad and not any(p.requires_grad for p in features.parameters())


def test_feature_extractor_rejects_wrong_images_and_names(features):
    with pytest.raises(ValueError, match=r"images are a torch.uint8 tensor of shape \(2, 1, 28, 28\): expected float"):
        features(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 28, 28\): expected float images \[N, 1, H, W\]"):
        features(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="fid_features = 'vgg' is unknown: expected one of classifier, inception"):
        sd.feature_extractor("vgg")
    with pytest.raises(ValueError, match="fid_features = 'classifier' needs the trained classifier: model is None"):
        sd.feature_extractor("classifier")
    with pytest.raises(ValueError, match="model is a Linear: expected a varmix classifier"):
        sd.ClassifierFeatures(torch.nn.Linear(3, 2))


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_says_how_to_get_it():
    with pytest.raises(sd.InceptionUnavailable, match=r"fid_features = 'inception' needs torch-fidelity.*pip "
                                                      r"install torch-fidelity.*vae.fid_features: classifier"):
        sd.feature_extractor("inception")
    with pytest.raises(sd.InceptionUnavailable):
        sd.distances(torch.rand(4, 3, 32, 32), {"a": torch.rand(4, 3, 32, 32)}, sd.INCEPTION_FEATURES)


# ----------------------------------------------------------------------------------------------
# the distances
def _noisy(x, std, seed=0):
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_a_set_against_itself_is_at_distance_zero(fmnist, features):
    x = to_float(fmnist[0])
    d = sd.distance(x, x.clone(), features)
    other = sd.distance(x, _noisy(x, 0.2), features)
    assert abs(d["fid"]) < 1e-4 * other["fid"] and abs(d["fid"]) < 1e-6
    # KID's unbiased estimate for the same images is zero up to its subsets' spread, far below another set's
    assert abs(d["kid_mean"]) < 3 * d["kid_std"] and abs(d["kid_mean"]) < 0.05 * other["kid_mean"]


def test_distances_grow_with_noise(fmnist, features):
    x = to_float(fmnist[0])
    stds = (0.02, 0.05, 0.1, 0.2, 0.4)
    table = sd.distances(x, {f"{s}": _noisy(x, s) for s in stds}, features)
    assert list(table["samples"]) == [f"{s}" for s in stds] and (table["n"] == 256).all()
    fid, kid = table["fid"].tolist(), table["kid_mean"].tolist()
    assert fid[0] > 0 and all(a < b for a, b in zip(fid, fid[1:])), fid
    # KID resolves less: below std 0.1 the noise is within its subsets' spread for these features
    assert all(a < b for a, b in zip(kid[2:], kid[3:])), kid
    assert kid[2] > 2 * table["kid_std"][2]


def test_distances_are_reproducible_and_leave_the_global_rng_alone(fmnist, features):
    x, other = to_float(fmnist[0]), to_float(fmnist[2])
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sd.distances(x, {"other": other}, features, subsets=5, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = sd.distances(x, {"other": other}, features, subsets=5, seed=3)
    assert a.equals(b)
    c = sd.distances(x, {"other": other}, features, subsets=5, seed=4)
    assert c["kid_mean"][0] != a["kid_mean"][0] and c["fid"][0] == a["fid"][0]  # FID draws nothing


def test_kid_subset_size_defaults_to_half_the_smallest_set_and_must_fit(fmnist, features):
    x, other = to_float(fmnist[0]), to_float(fmnist[2])  # 256 and 128 images
    auto = sd.distances(x, {"other": other}, features, subsets=4)
    assert auto.equals(sd.distances(x, {"other": other}, features, subsets=4, subset_size=64))
    sd.distances(x, {"other": other}, features, subsets=1, subset_size=128)  # the whole smallest set: fine
    with pytest.raises(ValueError, match=r"subset_size = 129 is larger than the smallest set \(128 images\)"):
        sd.distances(x, {"other": other}, features, subset_size=129)
    with pytest.raises(ValueError, match="subset_size = 1 is invalid: expected an integer >= 2"):
        sd.distances(x, {"other": other}, features, subset_size=1)
    with pytest.raises(ValueError, match="subsets = 0 is invalid: expected an integer >= 1"):
        sd.distances(x, {"other": other}, features, subsets=0)


def test_distances_reject_bad_images(features):
    x = torch.rand(8, 1, 28, 28)
    with pytest.raises(ValueError, match=r"real is a torch.float32 tensor of shape \(8, 28, 28\): expected float images"):
        sd.distances(x[:, 0], {"a": x}, features)
    with pytest.raises(ValueError, match=r"samples\['a'\] has images of shape \(1, 32, 32\), the real images "
                                         r"\(1, 28, 28\): expected the same shape"):
        sd.distances(x, {"a": torch.rand(8, 1, 32, 32)}, features)
    with pytest.raises(ValueError, match=r"samples\['a'\] has values in \[0, 2\]: expected images in \[0, 1\]"):
        sd.distances(x, {"a": x * 0 + torch.tensor([0.0, 2.0]).repeat(392).view(1, 1, 28, 28)}, features)
    with pytest.raises(ValueError, match=r"a set of 1 image\(s\): FID and KID need at least 2"):
        sd.distances(x, {"a": x[:1]}, features)
    with pytest.raises(ValueError, match="samples is a dict: expected a non-empty mapping"):
        sd.distances(x, {}, features)
    with pytest.raises(ValueError, match="feature = 64 is invalid: expected a feature module"):
        sd.distances(x, {"a": x}, 64)
    with pytest.raises(ValueError, match="images with 3 channel.s. given to features for 1-channel images"):
        sd.distances(torch.rand(8, 3, 28, 28), {"a": torch.rand(8, 3, 28, 28)}, features)


# ----------------------------------------------------------------------------------------------
# the mixed images
def test_mixed_samples_are_bit_identical_for_the_same_seed(fmnist, vae):
    x, y = to_float(fmnist[0][:100]), fmnist[1][:100]
    kw = dict(num_classes=10, vae=vae, batch_size=32)
    a = sd.mixed_samples(x, y, torch.Generator().manual_seed(7), **kw)
    b = sd.mixed_samples(x, y, torch.Generator().manual_seed(7), **kw)
    c = sd.mixed_samples(x, y, torch.Generator().manual_seed(8), **kw)
    assert list(a) == list(sd.SAMPLE_METHODS)
    for m in sd.SAMPLE_METHODS:
        assert a[m].shape == x.shape and a[m].dtype == torch.float32
        assert torch.equal(a[m], b[m]), m
        assert not torch.equal(a[m], c[m]), m
        assert not torch.equal(a[m], x), m  # they mix


def test_mixed_samples_pair_the_methods_and_reuse_the_mixers(fmnist, vae):
    """Every method mixes the same pairs at the same lambda: Mixup-R's images are input mixup's images of
    the VAE's reconstructions, and mixup's are varmix.learn.mixing.mixup's batch by batch."""
    from varmix.learn.mixing import mixup

    x, y = to_float(fmnist[0][:65]), fmnist[1][:65]  # batches of 32, 33 (a last batch of one joins)
    out = sd.mixed_samples(x, y, torch.Generator().manual_seed(1), num_classes=10, vae=vae, batch_size=32,
                           methods=["mixup", "mixup_r"])
    with torch.no_grad():
        recon = sd.mixed_samples(vae.reconstruct(x), y, torch.Generator().manual_seed(1), num_classes=10,
                                 batch_size=32, methods=["mixup"])["mixup"]
    assert torch.allclose(out["mixup_r"], recon, atol=1e-6) and len(out["mixup"]) == 65
    seeds = torch.randint(2**62, (2,), generator=torch.Generator().manual_seed(1)).tolist()
    by_batch = [mixup(x[a:b], y[a:b], torch.Generator().manual_seed(sd_), num_classes=10).x
                for (a, b), sd_ in zip([(0, 32), (32, 65)], seeds)]
    assert torch.equal(out["mixup"], torch.cat(by_batch))


def test_mixed_samples_reject_bad_arguments(fmnist, vae):
    x, y = to_float(fmnist[0][:8]), fmnist[1][:8]
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="method 'manifold_mixup' has no mixed images to measure"):
        sd.mixed_samples(x, y, gen, num_classes=10, methods=["manifold_mixup"])
    with pytest.raises(ValueError, match="method 'varmixup' needs a trained VAE: vae = NoneType"):
        sd.mixed_samples(x, y, gen, num_classes=10, methods=["varmixup"])
    with pytest.raises(ValueError, match="alpha has no value for 'cutmix'"):
        sd.mixed_samples(x, y, gen, num_classes=10, methods=["cutmix"], alpha={"mixup": 1.0})
    with pytest.raises(ValueError, match="batch_size = 1 is invalid: expected an integer >= 2"):
        sd.mixed_samples(x, y, gen, num_classes=10, batch_size=1, methods=["mixup"])
    with pytest.raises(ValueError, match=r"x holds 1 image\(s\): mixing needs at least 2"):
        sd.mixed_samples(x[:1], y[:1], gen, num_classes=10, methods=["mixup"])


def test_mixer_distances_table_and_the_trained_features(fmnist, vae, tmp_path):
    train_x, train_y, test_x = fmnist
    data = ImageData("fashion-mnist", train_x, train_y, test_x, torch.zeros(len(test_x), dtype=torch.int64))
    cfg = VAEConfig(probe_epochs=1, probe_subset=128)
    feature, info = sd.fid_features(cfg, data, tmp_path / "features", seed=0, device="cpu", progress=False)
    assert info["fid_features"] == "classifier" and info["fid_feature_classifier_images"] == 128
    assert 0 <= info["fid_feature_classifier_accuracy"] <= 1 and (tmp_path / "features" / "model.pt").is_file()
    assert isinstance(feature, sd.ClassifierFeatures) and feature.num_features == 512
    table = sd.mixer_distances(train_x[:128], train_y[:128], test_x, feature, torch.Generator().manual_seed(0),
                               num_classes=10, vae=vae, batch_size=64)
    assert list(table["samples"]) == ["test images", "VAE reconstructions", *sd.SAMPLE_METHODS]
    assert list(table.columns) == ["samples", "n", "fid", "kid_mean", "kid_std"]
    assert table[["fid", "kid_mean", "kid_std"]].notna().all().all()
    # an untrained VAE decodes grey blurs: its images are the furthest from the data
    far = table.set_index("samples")["fid"]
    assert far["VAE reconstructions"] > far["mixup"] > far["test images"]
    with pytest.raises(ValueError, match=r"train_x is a torch.float32 tensor .*: expected uint8 images"):
        sd.mixer_distances(to_float(train_x), train_y, test_x, feature, torch.Generator(), num_classes=10)


# ----------------------------------------------------------------------------------------------
# params.yaml's keys and a VAE from another dataset (vae.dataset)
@pytest.mark.parametrize("key,value,message", [
    ("dataset", "svhn", "profiles.smoke.vae.dataset = 'svhn' is invalid: expected one of fashion-mnist, cifar10"),
    ("fid_features", "vgg", "profiles.smoke.vae.fid_features = 'vgg' is invalid: expected one of classifier, "
                            "inception"),
    ("fid_samples", 1, "profiles.smoke.vae.fid_samples = 1 is invalid: expected an integer >= 2"),
])
def test_vae_keys_are_validated(key, value, message):
    from varmix.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        VAEConfig.from_dict({key: value}, "profiles.smoke.vae")
    assert message in str(err.value)
    c = VAEConfig.from_dict({}, "profiles.smoke.vae")
    assert (c.dataset, c.fid_features, c.fid_samples) == (None, "classifier", 1000)


def _session(tmp_path, dataset, vae_dataset):
    """A smoke Session for ``dataset`` whose VAE trains on ``vae_dataset``, with the fixture datasets of
    tests/test_data.py prepared into tmp_path/prep."""
    import yaml

    from varmix.core import config

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    raw.update(profile="smoke", dataset=dataset, data_dir=str(tmp_path / "prep"))
    raw["profiles"]["smoke"]["vae"]["dataset"] = vae_dataset
    params = config.Params.from_dict(raw)
    return session.Session(params, session.Layout(tmp_path / "work", dataset, "smoke"), torch.device("cpu"))


def _prepare(tmp_path, *names):
    from test_data import write_cifar, write_tiny_imagenet

    from varmix.learn import data

    for name in names:
        if name == "tiny-imagenet":
            write_tiny_imagenet(tmp_path / "raw")
        else:
            write_cifar(tmp_path / "raw", name, n_per_file=8)
        data.prepare(name, tmp_path / "prep", tmp_path / "raw", verify_md5=False)


def test_a_vae_trains_on_its_own_dataset_and_mixes_the_classifiers_images(tmp_path):
    from varmix.learn.mixing import varmixup
    from varmix.learn.vae import train_vae

    _prepare(tmp_path, "cifar10", "cifar100")
    s = _session(tmp_path, "cifar10", "cifar100")
    assert s.vae_dataset == "cifar100"
    d = s.load_data()
    v = s.load_vae_data(d)
    assert v.name == "cifar100" and v.train_x.shape == (8, 3, 32, 32)
    assert len(d.train_x) == 40 and v.num_classes == 100  # cifar10's fixture: 5 batches of 8
    cfg = VAEConfig(latent_dim=4, width=4, epochs=1, batch_size=4)
    vae = train_vae(cfg, v.train_x, v.test_x, s.layout.vae_folder("plain", s.vae_seed()), seed=0, device="cpu", progress=False)
    assert s.load_vae().image_shape == (3, 32, 32)  # the stage's vae.pt, checked against cifar10's shape
    mixed = varmixup(to_float(d.train_x[:4]), d.train_y[:4], torch.Generator().manual_seed(0), num_classes=10,
                     vae=vae)
    assert mixed.x.shape == (4, 3, 32, 32)
    # without vae.dataset the VAE's data is the classifier's, not read twice
    same = _session(tmp_path, "cifar10", None)
    assert same.vae_dataset == "cifar10" and same.load_vae_data(d) is d


def test_a_vae_dataset_of_other_channels_stops_before_anything_is_read(tmp_path, monkeypatch):
    # only the channels must match: another image size (tiny-imagenet for cifar10) is resized
    # (tests/test_cross_dataset.py)
    from varmix.learn import data

    s = _session(tmp_path, "cifar10", "fashion-mnist")
    read = []
    monkeypatch.setattr(data, "load", lambda *a, **k: read.append(a))
    with pytest.raises(ValueError) as err:
        s.load_vae_data()
    assert str(err.value).startswith("profiles.smoke.vae.dataset = 'fashion-mnist' has images of shape "
                                     "(1, 28, 28), the classifier's dataset 'cifar10' (3, 32, 32)")
    assert not read


def test_a_vae_for_other_images_is_refused_when_loaded(tmp_path):
    from varmix.learn.vae import save_vae

    s = _session(tmp_path, "cifar10", None)
    save_vae(s.layout.vae_folder("plain", s.vae_seed()) / "vae.pt", ConvVAE(1, 28, latent_dim=4, width=4), VAEConfig(latent_dim=4, width=4))
    with pytest.raises(ValueError, match=r"vae.pt is for images of shape \(1, 28, 28\), the dataset 'cifar10' "
                                         r"has \(3, 32, 32\): retrain it"):
        s.load_vae()


def test_the_fid_keys_keep_the_vae_checkpoint_and_its_dataset_does_not(fmnist, tmp_path):
    from varmix.learn.vae import _resume_key, train_vae

    train_x, test_x = fmnist[0][:64], fmnist[2][:32]
    cfg = VAEConfig(latent_dim=4, width=4, epochs=1, batch_size=32)
    train_vae(cfg, train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    # FID/KID settings do not change the VAE's training: the same checkpoint is continued
    train_vae(VAEConfig(latent_dim=4, width=4, epochs=1, batch_size=32, fid_features="inception", fid_samples=9),
              train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="different run"):
        train_vae(VAEConfig(latent_dim=4, width=4, epochs=1, batch_size=32, dataset="fashion-mnist"),
                  train_x, test_x, tmp_path, seed=0, device="cpu", progress=False)
    # without vae.dataset the key is the one checkpoints had before the setting existed
    assert "dataset" not in _resume_key(cfg, 0, 64, 32, (1, 28, 28))["config"]
