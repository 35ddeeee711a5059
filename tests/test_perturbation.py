"""varmix.evaluate.perturbation: robust masks under PGD (survivor-only shortcut, worst case over restarts) and
torchattacks' AutoAttack, on real Fashion-MNIST images (CPU, a few dozen images)."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from varmix.evaluate import perturbation as P
from varmix.learn.attacks import pgd_linf
from varmix.learn.data import load_raw, to_float
from varmix.learn.models import build_model
from varmix.learn.train import predict_logits

EPS = [0, 1 / 255, 2 / 255, 4 / 255, 8 / 255]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _train(net, x, y, steps, lr):
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def fmnist():
    return load_raw("fashion-mnist")


@pytest.fixture(scope="module")
def batch(fmnist):
    return to_float(fmnist.test_x[:48]), fmnist.test_y[:48]


@pytest.fixture(scope="module")
def cnn(fmnist):
    """varmix's small CNN after 30 SGD steps on 64 training images (29 of the 48 test images right)."""
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.286], [0.353])
    return _train(net, to_float(fmnist.train_x[:64]), fmnist.train_y[:64], 30, 0.05)


@pytest.fixture(scope="module")
def linear(fmnist):
    """A 10-class linear model (fast enough for AutoAttack's 5000 Square queries on CPU)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    return _train(net, to_float(fmnist.train_x[:256]), fmnist.train_y[:256], 40, 0.5)


def clean_correct(model, x, y):
    return predict_logits(model, x).argmax(1) == y


# ----------------------------------------------------------------------------------------------
# pgd_robust
@pytest.fixture(scope="module")
def cnn_masks(cnn, batch):
    x, y = batch
    return P.pgd_robust(cnn, x, y, list(reversed(EPS)), steps=3, restarts=2, gen=gen(), batch_size=20)


def test_masks_monotone_in_eps_and_imply_clean_correct(cnn, batch, cnn_masks):
    x, y = batch
    assert list(cnn_masks) == EPS                                  # ascending, whatever order was given
    clean = clean_correct(cnn, x, y)
    assert torch.equal(cnn_masks[0], clean)                        # eps 0 = clean correctness, exactly
    for m in cnn_masks.values():
        assert m.dtype == torch.bool and m.shape == (len(x),) and m.device.type == "cpu"
        assert not (m & ~clean).any()                              # robust -> clean-correct
    for small, large in zip(EPS, EPS[1:]):
        assert not (cnn_masks[large] & ~cnn_masks[small]).any()    # robust at large -> robust at small
    assert 0 < int(cnn_masks[8 / 255].sum()) < int(clean.sum())    # the attack breaks some, not all


def test_more_restarts_never_raise_robustness(cnn, batch):
    """With one eps and the same seed, a run with r + 1 restarts draws its first r restarts exactly as the
    run with r restarts did (draw order: eps, restart, batch), so worst case over restarts means its
    survivors are a subset of the shorter run's. A short step (0.25 eps) leaves the outcome to the random
    start: here 22, 21 and 20 images survive 1, 2 and 3 restarts."""
    x, y = batch
    runs = [P.pgd_robust(cnn, x, y, [8 / 255], steps=1, restarts=r, step_factor=0.25, gen=gen(3))[8 / 255]
            for r in (1, 2, 3)]
    for fewer, more in zip(runs, runs[1:]):
        assert not (more & ~fewer).any()


def test_deterministic_for_a_seed_and_model_state_kept(cnn, batch, cnn_masks):
    x, y = batch
    cnn.train()
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    g = gen()
    again = P.pgd_robust(cnn, x, y, EPS, steps=3, restarts=2, gen=g, batch_size=20)
    assert cnn.training                                            # train/eval mode put back
    cnn.eval()
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in state.items())   # BN statistics untouched
    assert all(torch.equal(again[e], cnn_masks[e]) for e in EPS)
    assert not torch.equal(g.get_state(), gen().get_state())      # the starts came from gen


class CoinFlip(nn.Module):
    """3 classes; predicts class 0 iff pixel (0, 0, 0) >= 0.5, with a zero input gradient: from images of
    0.5, an attack stays at its random start, and whether an image survives one start is a fair coin
    (the start's sign at that pixel)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))                   # torchattacks reads the device from it

    def forward(self, x):
        s = (x[:, 0, 0, 0] >= 0.5).float()
        zero = (x * 0).flatten(1).sum(1)                              # keeps the graph: gradient 0
        return torch.stack([s, 1 - s, torch.full_like(s, 0.25)], 1) + zero[:, None]


def test_robust_means_surviving_every_restart():
    """200 coin flips per restart: an image survives r restarts with probability 2**-r only if it must
    survive each one (the worst case), and only if every survivor is attacked at every restart. Last
    restart wins, or any restart, or skipping images of a batch would leave about 100, 187 or 40 at r = 4;
    attacking every eps afresh would leave about 100 at the second eps, not nested in the first's."""
    x, y = torch.full((200, 1, 4, 4), 0.5), torch.zeros(200, dtype=torch.long)
    model = CoinFlip()
    counts = [int(P.pgd_robust(model, x, y, [0.1], steps=2, restarts=r, gen=gen(r), batch_size=3)[0.1].sum())
              for r in (1, 4)]
    assert 70 < counts[0] < 130 and 0 < counts[1] <= 25, counts
    # across eps likewise: the images still robust at 0.05 get one more flip at 0.1 (about 50 survive both)
    masks = P.pgd_robust(model, x, y, [0.05, 0.1], steps=1, restarts=1, gen=gen())
    assert not (masks[0.1] & ~masks[0.05]).any() and 25 < int(masks[0.1].sum()) < 75, int(masks[0.1].sum())


class TwoClassLinear(nn.Module):
    """2-class linear logits: CE's input gradient is (p1 - [y=1]) (w1 - w0), whose sign does not depend on
    the point, so one PGD step of 2.5 eps lands on the same corner of the ball from any random start:
    the outcome is a function of (image, eps), and the shortcut can be compared with a full attack exactly."""

    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(w.shape[1], 2)
        with torch.no_grad():
            self.lin.weight.copy_(w)
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1) - 0.3)


def test_survivor_shortcut_equals_attacking_every_image(fmnist):
    keep = (fmnist.test_y == 0) | (fmnist.test_y == 6)             # T-shirt vs shirt: a hard pair
    x, y = to_float(fmnist.test_x[keep][:60]), (fmnist.test_y[keep][:60] == 6).long()
    w = torch.randn(2, 784, generator=gen(5)) * 0.05
    model = TwoClassLinear(w).eval()
    eps_list = [0.5 / 255, 1 / 255, 2 / 255, 3 / 255, 5 / 255, 8 / 255]
    fast = P.pgd_robust(model, x, y, eps_list, steps=1, restarts=2, gen=gen(1), batch_size=7)

    clean = clean_correct(model, x, y)
    g = gen(2)
    for eps in eps_list:                                           # slow reference: every image, every restart
        ref = clean.clone()
        for _ in range(2):
            adv = pgd_linf(model, x, y, eps, 2.5 * eps, 1, g)
            ref &= model(adv).argmax(1) == y
        assert torch.equal(fast[eps], ref), eps
    counts = [int(fast[e].sum()) for e in eps_list]
    assert counts[0] > counts[-1] > 0 and len(set(counts)) > 2     # the shortcut had work to skip


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps_list=[-1 / 255]), r"eps_list entry = -0.0039\d* is invalid: expected a finite number in \[0, 1\]"),
    (dict(eps_list=[float("nan")]), r"eps_list entry = nan is invalid: expected a finite number in \[0, 1\]"),
    (dict(eps_list=[8]), r"eps_list entry = 8 is invalid: expected a finite number in \[0, 1\]"),
    (dict(eps_list=[]), r"eps_list = \[\] is invalid"),
    (dict(eps_list=0.1), r"eps_list = 0.1 is invalid: expected a list"),
    (dict(steps=0), r"steps = 0 is invalid: expected an integer >= 1"),
    (dict(steps=2.0), r"steps = 2.0 is invalid: expected an integer >= 1"),
    (dict(restarts=0), r"restarts = 0 is invalid: expected an integer >= 1"),
    (dict(step_factor=0), r"step_factor = 0 is invalid: expected a finite number > 0"),
    (dict(step_factor=float("inf")), r"step_factor = inf is invalid: expected a finite number > 0"),
    (dict(gen=None), r"gen = None is invalid: expected a CPU torch.Generator"),
    (dict(batch_size=0), r"batch_size = 0 is invalid: expected an integer >= 1"),
])
def test_pgd_robust_rejects_bad_arguments(kwargs, message, linear, batch):
    x, y = batch
    args = dict(eps_list=[8 / 255], steps=1, restarts=1, gen=gen()) | kwargs
    with pytest.raises(ValueError, match=message):
        P.pgd_robust(linear, x, y, **args)
    with pytest.raises(ValueError, match=r"x ranges over 0..255: expected images in \[0, 1\]"):
        P.pgd_robust(linear, x * 255, y, [8 / 255], steps=1, restarts=1, gen=gen())


def test_robust_accuracy_table(cnn_masks):
    t = P.robust_accuracy_table(cnn_masks)
    assert list(t.columns) == ["eps", "eps_255", "n", "robust", "accuracy"]
    assert t["eps_255"].tolist() == [0, 1, 2, 4, 8] and (t["n"] == 48).all()
    assert t["robust"].tolist() == [int(m.sum()) for m in cnn_masks.values()]
    assert t["accuracy"].tolist() == [int(m.sum()) / 48 for m in cnn_masks.values()]
    with pytest.raises(ValueError, match=r"masks have lengths \[3, 48\]"):
        P.robust_accuracy_table({0.0: cnn_masks[0], 0.1: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"masks\[0.0\] is a torch.float32 tensor of shape \(48,\)"):
        P.robust_accuracy_table({0.0: cnn_masks[0].float()})


# ----------------------------------------------------------------------------------------------
# autoattack_robust
needs_torchattacks = pytest.mark.skipif(
    importlib.util.find_spec("torchattacks") is None,
    reason="torchattacks is not installed (pip install --no-deps torchattacks==3.5.1)")


@pytest.fixture(scope="module")
def autoattack(linear, batch):
    """AutoAttack (standard) at 2/255 on the 48 images, with the caller's RNG state before and after."""
    x, y = batch
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    mask = P.autoattack_robust(linear, x, y, 2 / 255, seed=0)
    return mask, before, torch.get_rng_state()


@needs_torchattacks
def test_autoattack_robust_is_sound_and_strong(linear, batch, autoattack):
    x, y = batch
    mask, before, after = autoattack
    clean = clean_correct(linear, x, y)
    assert mask.dtype == torch.bool and mask.shape == (len(x),) and mask.device.type == "cpu"
    assert not (mask & ~clean).any() and 0 < int(mask.sum()) < int(clean.sum())
    one_step = P.pgd_robust(linear, x, y, [2 / 255], steps=1, restarts=1, gen=gen())[2 / 255]
    assert int(mask.sum()) <= int(one_step.sum())
    assert torch.equal(before, after)                              # the caller's global RNG is untouched


@needs_torchattacks
def test_autoattack_apgd_is_the_standard_versions_first_two_attacks(linear, batch, autoattack):
    """"apgd" (APGD-CE then APGD-T) is sound, at least as strong as one PGD step, repeats for a seed, and
    the standard version (which runs the same two first, then FAB-T and Square on the survivors) can only
    break more: its mask is inside apgd's."""
    x, y = batch
    standard, _, _ = autoattack
    a, b = (P.autoattack_robust(linear, x, y, 2 / 255, seed=0, version="apgd") for _ in range(2))
    clean = clean_correct(linear, x, y)
    assert torch.equal(a, b) and not (a & ~clean).any() and 0 < int(a.sum()) < int(clean.sum())
    assert not (standard & ~a).any()
    one_step = P.pgd_robust(linear, x, y, [2 / 255], steps=1, restarts=1, gen=gen())[2 / 255]
    assert int(a.sum()) <= int(one_step.sum())


@needs_torchattacks
def test_autoattack_robust_repeats_for_a_seed(linear, batch):
    """The "rand" version (APGD-CE then APGD-DLR, 20 EOT iterations, seconds on CPU) against CoinFlip, where
    APGD stays at its random start: the mask is the seed's coin flips (about 1/4 survive both attacks)."""
    x, y = torch.full((64, 1, 4, 4), 0.5), torch.zeros(64, dtype=torch.long)
    a, b, c = (P.autoattack_robust(CoinFlip(), x, y, 0.1, seed=s, version="rand", batch_size=20) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 4 < int(a.sum()) < 32, int(a.sum())
    x, y = batch
    assert torch.equal(P.autoattack_robust(linear, x, y, 0, seed=7), clean_correct(linear, x, y))


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=1.5), r"eps = 1.5 is invalid: expected a finite number in \[0, 1\]"),
    (dict(eps=-0.1), r"eps = -0.1 is invalid: expected a finite number in \[0, 1\]"),
    (dict(version="plus2"), r"version = 'plus2' is invalid: expected one of standard, rand, apgd"),
    (dict(seed=-1), r"seed = -1 is invalid: expected an integer in \[0, 2\*\*63\)"),
    (dict(batch_size=0), r"batch_size = 0 is invalid: expected an integer >= 1"),
])
def test_autoattack_robust_rejects_bad_arguments(kwargs, message, linear, batch):
    x, y = batch
    with pytest.raises(ValueError, match=message):
        P.autoattack_robust(linear, x, y, **(dict(eps=2 / 255, seed=0) | kwargs))


def test_autoattack_robust_says_how_to_install_torchattacks(linear, batch, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)        # import torchattacks -> ImportError
    with pytest.raises(ImportError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        P.autoattack_robust(linear, *batch, 2 / 255, seed=0)


def test_every_runs_masks_round_trip_and_tabulate(tmp_path):
    """save_masks/load_masks keep each run's masks (keys in 1/255), bytes stable; accuracy_table is one row
    per run and eps; runs with other eps or image counts are refused (the report pairs them per image)."""
    from varmix.evaluate import perturbation as P

    g = torch.Generator().manual_seed(0)
    runs = {f"{arm}-s{sd}": {e / 255: torch.rand(40, generator=g) < 0.8 - e / 20 for e in (0.0, 2.0, 8.0)}
            for arm in ("erm", "varmixup") for sd in (0, 1)}
    path = tmp_path / "perturbations.npz"
    P.save_masks(path, runs)
    first = path.read_bytes()
    P.save_masks(path, runs)
    assert path.read_bytes() == first
    back = P.load_masks(path)
    assert list(back) == list(runs) and list(back["erm-s1"]) == [0.0, 2.0, 8.0]
    assert np.array_equal(back["varmixup-s0"][8.0], runs["varmixup-s0"][8 / 255].numpy())
    table = P.accuracy_table(runs)
    assert list(table.columns) == ["arm", "seed", "eps_255", "accuracy"] and len(table) == 12
    row = table[(table.arm == "varmixup") & (table.seed == 1) & (table.eps_255 == 2.0)]
    assert row["accuracy"].item() == pytest.approx(runs["varmixup-s1"][2 / 255].float().mean().item())
    bad = dict(runs, **{"cutmix-s0": {e / 255: torch.ones(40, dtype=torch.bool) for e in (0.0, 4.0)}})
    with pytest.raises(ValueError, match=r"runs\['cutmix-s0'\] has eps \[0.0, 4.0\]/255 and 40 images, "
                                         r"runs\['erm-s0'\] \[0.0, 2.0, 8.0\] and 40: every run needs the same eps"):
        P.save_masks(tmp_path / "bad.npz", bad)
    assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(ValueError, match="run name 'erm0': expected '<arm>-s<seed>'"):
        P.accuracy_table({"erm0": runs["erm-s0"]})
