"""varmix.learn.attacks: PGD in the l-inf ball ∩ [0, 1] (CE and TRADES's KL) and the TRADES loss, on real
Fashion-MNIST images with a small CNN (CPU, a few dozen images)."""

import math

import pytest
import torch
import torch.nn.functional as F

from varmix.learn import attacks
from varmix.learn.data import load_raw, to_float
from varmix.learn.mixing import soft_cross_entropy
from varmix.learn.models import build_model

EPS, STEP = 8 / 255, 2 / 255


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch():
    d = load_raw("fashion-mnist")
    return to_float(d.test_x[:32]), d.test_y[:32]


@pytest.fixture(scope="module")
def model(batch):
    """A small CNN after 30 SGD steps on the batch (not at initialisation, where the loss is flat), in eval."""
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.286], [0.353])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    x, y = batch
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _kl(model, x, x_adv):
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        return float(F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean"))


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", attacks.ATTACK_LOSSES)
@pytest.mark.parametrize("random_start", [True, False])
def test_attack_raises_the_loss_and_stays_in_the_ball(loss, random_start, model, batch):
    x, y = batch
    adv = attacks.pgd_linf(model, x, y, EPS, STEP, 5, gen(), random_start=random_start, loss=loss)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert float((adv - x).abs().max()) <= EPS + 1e-6           # the l-inf ball (up to float rounding)
    assert float((adv - x).abs().max()) > 0.9 * EPS              # ... and it goes to its edge
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1       # valid images
    with torch.no_grad():
        clean_ce, adv_ce = F.cross_entropy(model(x), y).item(), F.cross_entropy(model(adv), y).item()
    if loss == "ce":
        assert adv_ce > clean_ce + 0.05, (clean_ce, adv_ce)
        # each image's own loss rises, not just the mean
        with torch.no_grad():
            per = F.cross_entropy(model(adv), y, reduction="none") - F.cross_entropy(model(x), y, reduction="none")
        assert float((per > 0).float().mean()) > 0.9
    else:
        assert _kl(model, x, adv) > 1e-3  # KL(p(x) || p(x)) = 0 at the clean batch
        # the KL attack moves the prediction more than random noise of the same size does
        noise = (x + EPS * torch.sign(torch.randn(x.shape, generator=gen(9)))).clamp(0, 1)
        assert _kl(model, x, adv) > 3 * _kl(model, x, noise)


def test_more_steps_search_further(model, batch):
    x, y = batch
    ce = {}
    for steps in (1, 10):
        adv = attacks.pgd_linf(model, x, y, EPS, STEP, steps, gen(), random_start=False)
        with torch.no_grad():
            ce[steps] = F.cross_entropy(model(adv), y).item()
    assert ce[10] > ce[1]


@pytest.mark.parametrize("loss", attacks.ATTACK_LOSSES)
def test_same_generator_same_bytes_and_global_rng_untouched(loss, model, batch):
    x, y = batch
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = attacks.pgd_linf(model, x, y, EPS, STEP, 2, gen(4), loss=loss)
    b = attacks.pgd_linf(model, x, y, EPS, STEP, 2, gen(4), loss=loss)
    c = attacks.pgd_linf(model, x, y, EPS, STEP, 2, gen(5), loss=loss)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(state, torch.get_rng_state())  # the random start comes from gen only


@pytest.mark.parametrize("loss", attacks.ATTACK_LOSSES)
def test_random_start_is_drawn_from_the_generator(loss, model, batch):
    """With step 0 the attack returns its (projected) start: uniform in the ball (ce), x + 0.001 N(0, 1)
    (kl, the TRADES reference), from ``gen``'s float32 draws of x's shape."""
    x, y = batch
    start = attacks.pgd_linf(model, x, y, EPS, 0.0, 1, gen(7), loss=loss)
    g = gen(7)
    if loss == "ce":
        noise = (torch.rand(x.shape, generator=g) * 2 - 1) * EPS
    else:
        noise = 0.001 * torch.randn(x.shape, generator=g)
    assert torch.equal(start, (x + (x + noise - x).clamp(-EPS, EPS)).clamp(0, 1))
    inside = (x > EPS) & (x < 1 - EPS)  # pixels the [0, 1] clip does not touch
    delta = (start - x)[inside]
    if loss == "ce":
        assert float(delta.abs().max()) > 0.99 * EPS and abs(float(delta.mean())) < 0.02 * EPS
        assert float(delta.std()) == pytest.approx(EPS / math.sqrt(3), rel=0.05)  # U(-eps, eps)
    else:
        assert float(delta.std()) == pytest.approx(0.001, rel=0.05)


@pytest.mark.parametrize("loss", attacks.ATTACK_LOSSES)
def test_eps_zero_returns_x_exactly(loss, model, batch):
    x, y = batch
    adv = attacks.pgd_linf(model, x, y, 0.0, STEP, 3, gen(), random_start=True, loss=loss)
    assert torch.equal(adv, x) and adv.numpy().tobytes() == x.numpy().tobytes()


def test_model_mode_buffers_and_gradients_are_left_alone(batch):
    """The attack runs in eval mode (batch norm's running statistics neither used from the batch nor
    updated), puts the mode back, and accumulates no parameter gradient."""
    x, y = batch
    torch.manual_seed(0)
    net = build_model("small_cnn", 1, 10, 28, [0.286], [0.353]).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    net.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
    for loss in attacks.ATTACK_LOSSES:
        attacks.pgd_linf(net, x, y, EPS, STEP, 2, gen(), loss=loss)
        assert net.training
    assert seen and not any(seen)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())
    net.eval()
    attacks.pgd_linf(net, x, y, EPS, STEP, 1, gen())
    assert not net.training


def test_update_and_projection_follow_torchattacks(model, batch):
    """torchattacks.PGD's loop (random_start=False), written out: x' + step*sign(grad), delta clamped to
    [-eps, eps], then x + delta clamped to [0, 1]; varmix gives the same bytes. (A run of torchattacks
    3.5.1 itself gave the same bytes too: docs/ADVERSARIAL.md.)"""
    x, y = batch
    ref = x.clone()
    for _ in range(3):
        ref.requires_grad = True
        grad = torch.autograd.grad(torch.nn.CrossEntropyLoss()(model(ref), y), ref)[0]
        ref = ref.detach() + STEP * grad.sign()
        ref = torch.clamp(x + torch.clamp(ref - x, min=-EPS, max=EPS), min=0, max=1).detach()
    assert torch.equal(attacks.pgd_linf(model, x, y, EPS, STEP, 3, gen(), random_start=False), ref)


# ----------------------------------------------------------------------------------------------
def test_trades_loss_is_the_reference_formula_and_beta_zero_is_ce(model, batch):
    x, y = batch
    adv = attacks.pgd_linf(model, x, None, EPS, STEP, 2, gen(), loss="kl")
    lc, la = model(x), model(adv)
    onehot = F.one_hot(y, 10).float()
    # beta 0: the trainer's soft-target CE (ERM's loss) exactly, i.e. F.cross_entropy up to rounding
    assert torch.equal(attacks.trades_loss(lc, la, onehot, 0.0), soft_cross_entropy(lc, onehot))
    torch.testing.assert_close(attacks.trades_loss(lc, la, onehot, 0.0), F.cross_entropy(lc, y))
    # yaodongyu/TRADES: CE + beta * KLDivLoss(size_average=False)(log_softmax(adv), softmax(clean)) / B
    ref = F.cross_entropy(lc, y) + 6.0 * torch.nn.KLDivLoss(reduction="sum")(
        F.log_softmax(la, dim=1), F.softmax(lc, dim=1)) / len(x)
    value = attacks.trades_loss(lc, la, onehot, 6.0)
    torch.testing.assert_close(value, ref, rtol=1e-6, atol=0)
    assert float(value.detach()) > float(F.cross_entropy(lc, y).detach()) + 1e-3  # the KL term is there
    # the gradient flows through both logits (the reference does not detach the clean softmax)
    lc2, la2 = lc.detach().requires_grad_(), la.detach().requires_grad_()
    attacks.trades_loss(lc2, la2, onehot, 6.0).backward()
    ce_only = torch.autograd.grad(F.cross_entropy(lc2, y), lc2)[0]
    assert float(la2.grad.abs().max()) > 0 and not torch.allclose(lc2.grad, ce_only)


# ----------------------------------------------------------------------------------------------
def test_bad_arguments_are_named_with_their_range(model, batch):
    x, y = batch

    def run(**kw):
        args = dict(model=model, x=x, y=y, eps=EPS, step=STEP, steps=2, gen=gen())
        args.update(kw)
        return attacks.pgd_linf(**args)

    cases = [
        (dict(eps=-0.1), r"eps = -0.1 is invalid: expected a finite number >= 0 \(pixel units"),
        (dict(eps=float("nan")), r"eps = nan is invalid: expected a finite number >= 0"),
        (dict(step=float("inf")), r"step = inf is invalid: expected a finite number >= 0"),
        (dict(step="2/255"), r"step = '2/255' is invalid"),
        (dict(steps=0), r"steps = 0 is invalid: expected an integer >= 1"),
        (dict(steps=2.0), r"steps = 2.0 is invalid: expected an integer >= 1"),
        (dict(steps=True), r"steps = True is invalid"),
        (dict(loss="l2"), r"loss = 'l2' is invalid: expected one of ce, kl"),
        (dict(gen=0), r"gen = 0 is invalid: expected a CPU torch.Generator"),
        (dict(random_start=1), r"random_start = 1 is invalid: expected True or False"),
        (dict(x=(x * 255).to(torch.uint8)), r"x is a torch.uint8 tensor of shape \(32, 1, 28, 28\): expected float"),
        (dict(x=x * 255), r"x ranges over 0..255: expected images in \[0, 1\]"),
        (dict(y=y.int()), r"y is a torch.int32 tensor of shape \(32,\): expected int64 labels of shape \(32,\)"),
        (dict(y=None), r"y is a NoneType: expected int64 labels"),
        (dict(model=lambda t: t), r"model is a function: expected a torch.nn.Module"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            run(**change)
    run(y=None, loss="kl")  # the KL attack needs no labels
    lc = torch.zeros(4, 10)
    for beta, message in ((-1.0, r"beta = -1.0 is invalid: expected a finite number >= 0"),
                          (float("inf"), r"beta = inf is invalid"), (None, r"beta = None is invalid")):
        with pytest.raises(ValueError, match=message):
            attacks.trades_loss(lc, lc, F.softmax(lc, 1), beta)
    with pytest.raises(ValueError, match=r"logits_clean \(4, 10\) and logits_adv \(3, 10\)"):
        attacks.trades_loss(lc, lc[:3], F.softmax(lc, 1), 1.0)
