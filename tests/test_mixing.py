"""Vicinal methods: shapes, targets, the lambda distribution, seeding and each method's defining property."""

from __future__ import annotations

import pytest
import torch

from varmix.core.names import VICINAL_METHODS as METHODS  # the mixers' methods
from varmix.learn import mixing
from varmix.learn.mixing import (
    MixedBatch,
    bce_softmax,
    cutmix,
    erm,
    make_mixer,
    manifold_mixup,
    mixed_loss,
    mixup,
    mixup_r,
    one_hot,
    sample_lambda,
    soft_cross_entropy,
    varmixup,
)
from varmix.learn.vae import ConvVAE

K = 5


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    v = ConvVAE(3, 32, latent_dim=4, width=4).eval()
    for p in v.parameters():
        p.requires_grad_(False)
    with torch.no_grad():  # sharper weights: codes and images vary, so latent and pixel mixing differ
        for p in v.parameters():
            p.mul_(3.0)
    return v


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(123)
    x = torch.rand(8, 3, 32, 32, generator=g)
    y = torch.randint(K, (8,), generator=g)
    return x, y


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(method: str, x, y, g, vae, **kw) -> MixedBatch:
    extra = {"vae": vae} if method in ("mixup_r", "varmixup") else {}
    return getattr(mixing, method)(x, y, g, num_classes=K, **extra, **kw)


# ----------------------------------------------------------------------------------------------
def test_mixers_cover_config_methods():
    assert set(mixing.MIXERS) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_shapes_dtypes_and_targets(method, batch, vae):
    x, y = batch
    out = run(method, x, y, gen(), vae)
    assert isinstance(out, MixedBatch)
    assert out.x.shape == x.shape and out.x.dtype == torch.float32
    assert float(out.x.min()) >= 0 and float(out.x.max()) <= 1
    assert out.target.shape == (8, K) and out.target.dtype == torch.float32
    torch.testing.assert_close(out.target.sum(1), torch.ones(8))
    assert isinstance(out.lam, float) and 0 <= out.lam <= 1
    if method == "erm":
        assert out.perm is None and out.lam == 1.0
    else:
        assert out.perm.dtype == torch.int64 and sorted(out.perm.tolist()) == list(range(8))
        # the target is the lam-weighted mix of the pair's one-hot labels
        expected = out.lam * one_hot(y, K) + (1 - out.lam) * one_hot(y[out.perm], K)
        torch.testing.assert_close(out.target, expected)
    assert out.mix_layer is None or method == "manifold_mixup"


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_output(method, batch, vae):
    x, y = batch
    a, b = run(method, x, y, gen(5), vae), run(method, x, y, gen(5), vae)
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and a.lam == b.lam
    assert a.mix_layer == b.mix_layer
    if method != "erm":
        assert torch.equal(a.perm, b.perm)
        c = run(method, x, y, gen(6), vae)
        assert c.lam != a.lam or not torch.equal(c.perm, a.perm)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_lambda_follows_beta(alpha):
    g = gen(1)
    lams = torch.tensor([sample_lambda(alpha, g) for _ in range(20000)], dtype=torch.float64)
    assert float(lams.min()) >= 0 and float(lams.max()) <= 1
    assert float(lams.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(lams.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)
    # Beta(a, a) CDF at 0.25 differs by alpha: P(lam < 1/4) = 1/4 for alpha = 1
    if alpha == 1.0:
        assert float((lams < 0.25).double().mean()) == pytest.approx(0.25, abs=0.01)


def test_sample_lambda_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [sample_lambda(1.0, gen(3)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert torch.equal(state, torch.get_rng_state())


def test_erm_is_identity(batch):
    x, y = batch
    g = gen()
    before = g.get_state()
    out = erm(x, y, g, num_classes=K)
    assert out.x is x and torch.equal(out.target, one_hot(y, K))
    assert torch.equal(g.get_state(), before)  # draws nothing


def test_mixup_pixels(batch):
    x, y = batch
    out = mixup(x, y, gen(), num_classes=K, lam=0.3)
    assert out.lam == 0.3
    torch.testing.assert_close(out.x, 0.3 * x + 0.7 * x[out.perm])


def test_soft_cross_entropy_equals_two_ce_form(batch):
    x, y = batch
    out = mixup(x, y, gen(), num_classes=K, lam=0.3)
    logits = torch.randn(8, K, generator=gen(9))
    ce = torch.nn.functional.cross_entropy
    expected = 0.3 * ce(logits, y) + 0.7 * ce(logits, y[out.perm])
    torch.testing.assert_close(soft_cross_entropy(logits, out.target), expected)
    with pytest.raises(ValueError, match=r"\(8, 5\).*\(8, 4\)"):
        soft_cross_entropy(logits, torch.zeros(8, 4))


def test_bce_softmax_is_the_manifold_mixup_reference_loss(batch):
    # vikasverma1077/manifold_mixup: bce_loss = nn.BCELoss(); loss = bce_loss(softmax(output), target)
    x, y = batch
    out = manifold_mixup(x, y, gen(), num_classes=K, lam=0.3)
    logits = 3 * torch.randn(8, K, generator=gen(9))
    reference = torch.nn.BCELoss()(torch.nn.Softmax(dim=1)(logits), out.target)
    assert torch.equal(bce_softmax(logits, out.target), reference)
    p, t = torch.softmax(logits.double(), 1), out.target.double()  # the mean over all B·K entries
    by_hand = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    torch.testing.assert_close(bce_softmax(logits, out.target).double(), by_hand, rtol=1e-5, atol=1e-7)
    # not a rescaled soft CE: value and gradient direction both differ
    lg = logits.clone().requires_grad_(True)
    (g_bce,) = torch.autograd.grad(mixed_loss("bce_softmax", lg, out.target), lg)
    (g_ce,) = torch.autograd.grad(mixed_loss("soft_ce", lg, out.target), lg)
    assert mixed_loss("soft_ce", logits, out.target) == soft_cross_entropy(logits, out.target)
    assert float(torch.nn.functional.cosine_similarity(g_bce.flatten(), g_ce.flatten(), dim=0)) < 0.999
    assert g_bce.norm() < g_ce.norm() / 2
    with pytest.raises(ValueError, match=r"bce_softmax: logits \(8, 5\) and target \(8, 4\)"):
        bce_softmax(logits, torch.zeros(8, 4))
    with pytest.raises(ValueError, match=r"loss = 'bce' is invalid: expected one of soft_ce, bce_softmax"):
        mixed_loss("bce", logits, out.target)


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_lambda_is_kept_area(seed):
    x = torch.zeros(4, 1, 28, 28)
    x[1::2] = 1.0  # images 0, 2 black; 1, 3 white
    y = torch.tensor([0, 1, 0, 1])
    out = cutmix(x, y, gen(seed), num_classes=2)
    for i in range(4):
        partner = int(out.perm[i])
        if float(x[i].mean()) == float(x[partner].mean()):
            continue
        kept = float((out.x[i] == x[i]).double().mean())
        assert out.lam == pytest.approx(kept)
        # pasted pixels form one axis-aligned box
        changed = (out.x[i, 0] != x[i, 0]).nonzero()
        if len(changed):
            rows, cols = changed[:, 0], changed[:, 1]
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(box) == len(changed)


def test_cutmix_forced_lambda_sets_box_size():
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    assert cutmix(x, y, gen(), num_classes=K, lam=1.0).lam == 1.0
    out = cutmix(x, y, gen(), num_classes=K, lam=0.75)  # side 16 of 32, clipped at the border
    assert 0.75 <= out.lam <= 1.0


def test_manifold_mixup_leaves_x_and_draws_layer(batch):
    x, y = batch
    layers = set()
    for s in range(30):
        out = manifold_mixup(x, y, gen(s), num_classes=K, layers=(0, 2, 3))
        assert out.x is x and out.perm is not None
        layers.add(out.mix_layer)
    assert layers == {0, 2, 3}


def test_mixup_r_mixes_reconstructions(batch, vae):
    x, y = batch
    out = mixup_r(x, y, gen(), num_classes=K, lam=0.4, vae=vae)
    with torch.no_grad():
        r = vae.reconstruct(x)
    torch.testing.assert_close(out.x, 0.4 * r + 0.6 * r[out.perm])


def test_varmixup_interpolates_posterior_means(batch, vae):
    x, y = batch
    with torch.no_grad():
        r = vae.reconstruct(x)
        mu, _ = vae.encode(x)
    one = varmixup(x, y, gen(), num_classes=K, lam=1.0, vae=vae)
    assert torch.equal(one.x, r)  # lam = 1: the first image of each pair, reconstructed
    zero = varmixup(x, y, gen(), num_classes=K, lam=0.0, vae=vae)
    torch.testing.assert_close(zero.x, r[zero.perm])
    half = varmixup(x, y, gen(), num_classes=K, lam=0.5, vae=vae)
    with torch.no_grad():
        expected = vae.decode(0.5 * mu + 0.5 * mu[half.perm])
    torch.testing.assert_close(half.x, expected)
    # decoding the latent midpoint is not pixel mixup of the reconstructions
    assert float((half.x - (0.5 * r + 0.5 * r[half.perm])).abs().max()) > 0.05
    assert not half.x.requires_grad


@pytest.mark.parametrize("method", METHODS)
def test_make_mixer_matches_function(method, batch, vae):
    x, y = batch
    mixer = make_mixer(method, num_classes=K, alpha=2.0, vae=vae, layers=(1,))
    a = mixer(x, y, gen(4))
    b = run(method, x, y, gen(4), vae, alpha=2.0, **({"layers": (1,)} if method == "manifold_mixup" else {}))
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and a.lam == b.lam
    if method == "manifold_mixup":
        assert a.mix_layer == 1


# ----------------------------------------------------------------------------------------------
# bad input
@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "1"])
def test_bad_alpha(alpha, batch):
    x, y = batch
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(alpha, gen())
    with pytest.raises(ValueError, match=f"alpha = {alpha!r}"):
        mixup(x, y, gen(), num_classes=K, alpha=alpha)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "erm"])
def test_bad_inputs_named(method, batch, vae):
    x, y = batch
    cases = [
        (dict(x=(x * 255).to(torch.uint8)), "uint8"),
        (dict(x=x[0]), r"\(3, 32, 32\)"),
        (dict(y=y.int()), "int32"),
        (dict(y=y[:5]), r"\(8,\)"),
        (dict(y=torch.full((8,), K)), r"5\.\.5.*0\.\.4"),
        (dict(y=torch.full((8,), -1)), r"-1\.\.-1"),
        (dict(y=y.to("meta")), "y is on meta but x on cpu"),
        (dict(x=x[:1], y=y[:1]), "batch size 1"),
        (dict(lam=1.5), "lam = 1.5"),
        (dict(num_classes=0), "num_classes = 0"),
        (dict(gen="seed"), "gen = 'seed'"),
    ]
    for change, word in cases:
        args = dict(x=x, y=y, gen=gen(), num_classes=K)
        args.update(change)
        if method in ("mixup_r", "varmixup"):
            args["vae"] = vae
        with pytest.raises(ValueError, match=word):
            getattr(mixing, method)(args.pop("x"), args.pop("y"), args.pop("gen"), **args)


def test_vae_methods_check_the_vae(batch, vae):
    x, y = batch
    for f in (mixup_r, varmixup):
        with pytest.raises(ValueError, match="vae = NoneType"):
            f(x, y, gen(), num_classes=K)
        with pytest.raises(ValueError, match=r"\(1, 28, 28\).*\(3, 32, 32\)"):
            f(torch.rand(4, 1, 28, 28), y[:4], gen(), num_classes=K, vae=vae)


def test_erm_rejects_forced_mixing(batch):
    x, y = batch
    with pytest.raises(ValueError, match="lam = 0.5"):
        erm(x, y, gen(), num_classes=K, lam=0.5)


def test_manifold_mixup_bad_layers(batch):
    x, y = batch
    for layers in ((), (-1,), "012", (1.5,)):
        with pytest.raises(ValueError, match="layers"):
            manifold_mixup(x, y, gen(), num_classes=K, layers=layers)


def test_make_mixer_errors(vae):
    with pytest.raises(ValueError, match="'cowmix'.*erm, mixup, mixup_r, manifold_mixup, cutmix, varmixup"):
        make_mixer("cowmix", num_classes=K, alpha=1.0)
    with pytest.raises(ValueError, match="varmixup.*VAE"):
        make_mixer("varmixup", num_classes=K, alpha=1.0)
    with pytest.raises(ValueError, match="alpha = 0"):
        make_mixer("mixup", num_classes=K, alpha=0)
    with pytest.raises(ValueError, match="layers"):
        make_mixer("manifold_mixup", num_classes=K, alpha=1.0, layers=())


# ----------------------------------------------------------------------------------------------
# mix probability (clean batches mixed in)
def test_mix_prob_mixes_that_fraction_of_batches_reproducibly(batch, vae):
    x, y = batch
    mixer = make_mixer("varmixup", num_classes=K, alpha=1.0, vae=vae, prob=0.5)
    g = gen(7)
    clean = [mixer(x, y, g).perm is None for _ in range(400)]
    assert 0.4 < sum(clean) / len(clean) < 0.6
    g2 = gen(7)
    assert [mixer(x, y, g2).perm is None for _ in range(400)] == clean
    plain = make_mixer("mixup", num_classes=K, alpha=1.0, prob=1.0)
    # prob 1 draws nothing extra: the stream is exactly the reference mixer's
    assert torch.equal(plain(x, y, gen(3)).x, mixup(x, y, gen(3), num_classes=K).x)


def test_mix_prob_clean_batch_is_erm(batch, vae):
    x, y = batch
    mixer = make_mixer("mixup", num_classes=K, alpha=1.0, prob=1e-9)
    out = mixer(x, y, gen(0))
    assert torch.equal(out.x, x) and torch.equal(out.target, one_hot(y, K)) and out.lam == 1.0


@pytest.mark.parametrize("prob", [0, 1.5, True, "half"])
def test_mix_prob_rejects_non_probabilities(prob):
    with pytest.raises(ValueError, match=f"prob = {prob!r} is invalid: expected a probability in \\(0, 1\\]"):
        make_mixer("mixup", num_classes=K, alpha=1.0, prob=prob)
