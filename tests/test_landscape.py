"""Local linearity and loss surfaces (varmix.evaluate.landscape)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from varmix.evaluate import landscape as L

C, H, W, K = 2, 4, 4, 3
D = C * H * W


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, seed: int = 1, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, C, H, W, generator=gen(seed))).double()


def labels(n: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, K, (n,), generator=gen(seed))


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, K)).double()


def mlp() -> nn.Module:
    """A curved model, with batch-norm so that train-mode evaluation would be detectable."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(D, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, K)).double()
    with torch.no_grad():  # non-trivial running statistics
        m[2].running_mean.uniform_(-0.5, 0.5)
        m[2].running_var.uniform_(0.5, 2.0)
        m[-1].weight.mul_(4.0)
    return m


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(C, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * H * W, K)).double()


def true_logit(logits, y):  # a per-example loss that is exactly affine in x for a linear model
    return logits.gather(1, y[:, None]).squeeze(1)


QUAD_C = 3.0


def quad_loss(out, y):  # with nn.Flatten() as the "model": ℓ(x) = ½·c·‖x‖², so γ = ½·c·‖δ‖²
    return 0.5 * QUAD_C * (out ** 2).sum(1)


def affine_gap(model, x, y, delta, loss="ce"):
    """|ℓ(x+δ) − ℓ(x) − δᵀ∇ℓ(x)| computed independently of the library."""
    model.eval()
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    l0 = F.cross_entropy(out, y, reduction="none") if loss == "ce" else loss(out, y)
    (g,) = torch.autograd.grad(l0.sum(), xg)
    with torch.no_grad():
        out = model(x + delta)
        l1 = F.cross_entropy(out, y, reduction="none") if loss == "ce" else loss(out, y)
        return (l1 - l0.detach() - (delta * g).flatten(1).sum(1)).abs()


# ----------------------------------------------------------------------------------------------
# local linearity
def test_gamma_is_zero_when_loss_is_affine_in_x():
    x, y = images(), labels()
    gamma = L.local_linearity(linear_model(), x, y, eps=8 / 255, steps=5, gen=gen(), loss=true_logit)
    assert gamma.shape == (8,) and gamma.dtype == torch.float32 and gamma.device.type == "cpu"
    assert not gamma.requires_grad
    assert float(gamma.max()) < 1e-10


def test_gamma_positive_for_curved_model_and_matches_its_delta():
    model, x, y = mlp(), images(), labels()
    gamma, delta = L.local_linearity(model, x, y, eps=8 / 255, steps=10, gen=gen(), return_delta=True)
    assert bool((gamma > 1e-6).all())
    # the reported γ is the gap at the returned δ
    torch.testing.assert_close(gamma.double(), affine_gap(model, x, y, delta), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_quadratic_loss_reaches_exact_maximum(sign):
    # ℓ = ±½c‖x‖²: γ(δ) = |±½c‖δ‖²|, maximal at a corner of the ball; away from the image edges sign
    # ascent pushes every coordinate out to ±ε, so γ = ½c·D·ε² exactly (for the concave loss only if
    # the ascent is on the absolute gap, not the signed one).
    x, y = images(lo=0.3, hi=0.7), labels()
    eps = 4 / 255
    gamma, delta = L.local_linearity(nn.Flatten(), x, y, eps=eps, steps=10, gen=gen(),
                                     loss=lambda out, t: sign * quad_loss(out, t), return_delta=True)
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, eps))
    torch.testing.assert_close(gamma, torch.full((8,), 0.5 * QUAD_C * D * eps ** 2, dtype=torch.float32))


def test_delta_stays_in_eps_ball_and_image_range():
    x = images(seed=3)
    x[:, 0] = (x[:, 0] > 0.5).double()  # a channel of pixels exactly at 0 or 1
    x[:, 1, 0] = 1.0 - 1e-3              # near the top edge
    y = labels()
    eps = 16 / 255
    for model, loss in ((mlp(), "ce"), (nn.Flatten(), quad_loss)):
        _, delta = L.local_linearity(model, x, y, eps=eps, steps=10, gen=gen(), loss=loss, return_delta=True)
        assert float(delta.abs().max()) <= eps + 1e-12
        xa = x + delta
        assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    # the quadratic loss is maximised at the boundary: coordinates at 0/1 must have moved inwards
    assert float(delta[:, 0].abs().min()) > 0.5 * eps


def test_gamma_grows_with_eps_for_curved_model():
    model, x, y = mlp(), images(n=16), labels(n=16)
    means = [float(L.local_linearity(model, x, y, eps=k / 255, steps=10, gen=gen()).mean()) for k in (1, 4, 16)]
    assert means[0] < means[1] < means[2]
    assert means[2] > 4 * means[0]


def wiggly_loss(out, y):  # ℓ = Σ sin(40·x): |gap| has many interior maxima, so sign ascent overshoots them
    return torch.sin(40.0 * out).sum(1)


@pytest.mark.parametrize("case", ["mlp", "wiggly"])
def test_max_over_iterates_longer_run_never_reports_less(case):
    model, loss = (mlp(), "ce") if case == "mlp" else (nn.Flatten(), wiggly_loss)
    x, y = images(), labels()
    eps = 8 / 255
    runs = [L.local_linearity(model, x, y, eps=eps, steps=k, step_size=eps / 2, gen=gen(), loss=loss,
                              return_delta=True) for k in range(1, 9)]
    gammas = torch.stack([g for g, _ in runs])
    # same start and step size: the run with k steps follows the first k steps of longer runs, and γ is
    # the max over the iterates so far (a last-iterate or final-only report breaks this)
    assert bool((gammas[1:] >= gammas[:-1]).all())
    assert bool((gammas[-1] > gammas[0]).any())
    for g, delta in runs:  # γ is the gap at the reported δ, which is one of the iterates
        torch.testing.assert_close(g.double(), affine_gap(model, x, y, delta, loss), rtol=1e-5, atol=1e-8)


def one_pixel_wiggle(out, y):  # fast wiggles in one pixel: a full-box step often lands lower than the start
    return torch.sin(200.0 * out[:, 0])


def test_start_is_uniform_in_feasible_box_and_counts():
    # documented start: δ₀ = lo + (hi − lo)·U, U ~ rand(x.shape) from gen, box [max(−ε, −x), min(ε, 1 − x)]
    model, x, y = nn.Flatten(), images(n=16), labels(n=16)
    x[:4] = x[:4].round()  # some images entirely at 0/1
    eps = 8 / 255
    u = torch.rand(x.shape, generator=gen(), dtype=x.dtype)
    lo, hi = torch.clamp(-x, min=-eps), torch.clamp(1 - x, max=eps)
    start_gap = affine_gap(model, x, y, lo + (hi - lo) * u, one_pixel_wiggle)
    # a big step overshoots the wiggles: for some images the start is the best iterate
    gamma, delta = L.local_linearity(model, x, y, eps=eps, steps=1, step_size=2 * eps, gen=gen(),
                                     loss=one_pixel_wiggle, return_delta=True)
    end_gap = affine_gap(model, x, y, delta, one_pixel_wiggle)
    torch.testing.assert_close(gamma.double(), torch.maximum(start_gap, end_gap), rtol=1e-5, atol=1e-8)
    assert bool((gamma.double() >= start_gap * (1 - 1e-6)).all())
    assert bool((torch.isclose(gamma.double(), start_gap, rtol=1e-6)).any())


@pytest.mark.parametrize("case", ["mlp", "wiggly"])
def test_restarts_are_the_max_over_consecutive_starts_from_gen(case):
    model, loss = (mlp(), "ce") if case == "mlp" else (nn.Flatten(), wiggly_loss)
    x, y = images(n=12), labels(n=12)
    eps = 8 / 255
    g = gen(3)
    singles = []
    for _ in range(4):  # restart r starts from the r-th draw of rand(x.shape) from the same generator
        state = g.get_state()
        singles.append(L.local_linearity(model, x, y, eps=eps, steps=3, gen=g, loss=loss))
        g.set_state(state)
        torch.rand(x.shape, generator=g, dtype=x.dtype)
    gamma, delta = L.local_linearity(model, x, y, eps=eps, steps=3, gen=gen(3), loss=loss, restarts=4,
                                     batch_size=5, return_delta=True)
    assert torch.equal(gamma, torch.stack(singles).max(0).values)
    assert torch.equal(singles[0], L.local_linearity(model, x, y, eps=eps, steps=3, gen=gen(3), loss=loss))
    # more restarts never report less than one on the same stream (the max includes the first start)
    assert bool((gamma >= singles[0]).all()) and bool((gamma > singles[0]).any())
    torch.testing.assert_close(gamma.double(), affine_gap(model, x, y, delta, loss), rtol=1e-5, atol=1e-8)


def relu_below_zero(out, y):  # ℓ = Σ relu(−x)²: flat on [0, 1]; only points outside the image range curve it
    return (torch.relu(-out) ** 2).sum(1)


def test_plain_ball_leaves_image_range_clipped_ball_does_not():
    x, y = torch.zeros(6, C, H, W, dtype=torch.float64), labels(n=6)
    eps = 8 / 255
    clipped, d_clip = L.local_linearity(nn.Flatten(), x, y, eps=eps, steps=4, gen=gen(), loss=relu_below_zero,
                                        return_delta=True)
    plain, d_plain = L.local_linearity(nn.Flatten(), x, y, eps=eps, steps=4, gen=gen(), loss=relu_below_zero,
                                       return_delta=True, clip=False)
    assert float(clipped.abs().max()) == 0.0 and float(d_clip.min()) >= 0.0  # δ ≥ −x = 0: nothing to see
    # the plain ball starts at −ε + 2ε·U (the same draws U); coordinates that start below 0 ascend to −ε
    u = torch.rand(x.shape, generator=gen(), dtype=x.dtype)
    below = (u < 0.5).flatten(1).sum(1).double()
    torch.testing.assert_close(plain.double(), below * eps ** 2, rtol=1e-6, atol=0.0)
    assert float(d_plain.min()) == pytest.approx(-eps) and float(d_plain.abs().max()) <= eps + 1e-12
    # plain ≥ clipped per image is not guaranteed: the ascents start at different points (the same draws
    # scaled to different boxes), and with a wiggly loss the plain ball's ascent often ends lower
    xz = images(n=32) * (images(n=32, seed=4) > 0.5)  # half the pixels at 0
    yz = labels(n=32)
    c = L.local_linearity(nn.Flatten(), xz, yz, eps=eps, steps=3, gen=gen(), loss=wiggly_loss)
    p = L.local_linearity(nn.Flatten(), xz, yz, eps=eps, steps=3, gen=gen(), loss=wiggly_loss, clip=False)
    assert bool((p < c).any()) and bool((p > c).any())
    # images at least ε from 0 and 1: the two boxes are the same, so are the numbers
    inner, yi = images(lo=0.1, hi=0.9), labels()
    assert torch.equal(L.local_linearity(mlp(), inner, yi, eps=eps, steps=3, gen=gen()),
                       L.local_linearity(mlp(), inner, yi, eps=eps, steps=3, gen=gen(), clip=False))


def test_ascent_beats_random_start():
    model, x, y = mlp(), images(n=16), labels(n=16)
    eps = 8 / 255
    # with a zero-length step the ascent never moves: γ is the value at the random start
    start = L.local_linearity(model, x, y, eps=eps, steps=1, step_size=1e-300, gen=gen())
    ascent = L.local_linearity(model, x, y, eps=eps, steps=10, gen=gen())
    assert float(ascent.mean()) > 1.5 * float(start.mean())


def test_same_seed_same_gamma_and_batch_size_independent():
    model, x, y = mlp(), images(n=10), labels(n=10)
    a = L.local_linearity(model, x, y, eps=8 / 255, gen=gen(5))
    b = L.local_linearity(model, x, y, eps=8 / 255, gen=gen(5))
    c = L.local_linearity(model, x, y, eps=8 / 255, gen=gen(6))
    d = L.local_linearity(model, x, y, eps=8 / 255, gen=gen(5), batch_size=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(a, d, rtol=1e-6, atol=1e-9)


def test_model_mode_grads_and_bn_statistics_untouched():
    model, x, y = mlp(), images(), labels()
    model.train()
    model[-1].eval()  # a mixed-mode model must come back mixed
    model[1].weight.grad = torch.full_like(model[1].weight, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    L.local_linearity(model, x, y, eps=8 / 255, steps=3, gen=gen())
    assert model.training and model[2].training and not model[-1].training
    assert torch.equal(model[1].weight.grad, torch.full_like(model[1].weight, 7.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "1.weight")
    for k, v in model.state_dict().items():  # BN running stats not updated: evaluated in eval mode
        assert torch.equal(v, state[k]), k


def test_examples_are_independent_batchnorm_in_eval_mode():
    model, x, y = mlp(), images(), labels()
    model.train()
    full = L.local_linearity(model, x, y, eps=8 / 255, steps=4, gen=gen())
    alone = L.local_linearity(model, x[:1], y[:1], eps=8 / 255, steps=4, gen=gen())
    torch.testing.assert_close(full[:1], alone, rtol=1e-6, atol=1e-9)


def test_local_linearity_rejects_bad_inputs():
    model, x, y = mlp(), images(), labels()
    with pytest.raises(ValueError, match="eps"):
        L.local_linearity(model, x, y, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        L.local_linearity(model, x, y, eps=8.0)  # forgot to divide by 255
    with pytest.raises(ValueError, match="steps"):
        L.local_linearity(model, x, y, eps=0.03, steps=0)
    with pytest.raises(ValueError, match="step_size"):
        L.local_linearity(model, x, y, eps=0.03, step_size=-1.0)
    with pytest.raises(ValueError, match="y"):
        L.local_linearity(model, x, y[:5], eps=0.03)
    with pytest.raises(ValueError, match="x"):
        L.local_linearity(model, x[0], y, eps=0.03)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.local_linearity(model, x * 255, y, eps=0.03)
    with pytest.raises(ValueError, match="loss"):
        L.local_linearity(model, x, y, eps=0.03, loss="mse")
    with pytest.raises(ValueError, match="per-example"):
        L.local_linearity(model, x, y, eps=0.03, loss=lambda out, t: F.cross_entropy(out, t))
    with pytest.raises(ValueError, match="gen"):
        L.local_linearity(model, x, y, eps=0.03, gen=0)
    with pytest.raises(ValueError, match="batch_size"):
        L.local_linearity(model, x, y, eps=0.03, batch_size=0)
    with pytest.raises(ValueError, match=r"restarts = 0 is invalid: expected an integer >= 1"):
        L.local_linearity(model, x, y, eps=0.03, restarts=0)
    with pytest.raises(ValueError, match=r"clip = 'yes' is invalid: expected True"):
        L.local_linearity(model, x, y, eps=0.03, clip="yes")


# ----------------------------------------------------------------------------------------------
# tables
def test_linearity_table_long_and_summary():
    model, x, y = mlp(), images(), labels()
    long = L.linearity_table(model, x, y, eps_list_255=(2, 8), steps=3, gen_seed=4, per_example=True)
    assert list(long.columns) == ["eps_255", "eps", "image", "gamma"]
    assert len(long) == 16 and sorted(set(long.eps_255)) == [2, 8]
    direct = L.local_linearity(model, x, y, eps=8 / 255, steps=3, gen=gen(4))
    np.testing.assert_allclose(long[long.eps_255 == 8].gamma.to_numpy(), direct.double().numpy())
    wide = L.linearity_table(model, x, y, eps_list_255=(8,), steps=3, gen_seed=4, step_size_factor=1.0,
                             restarts=3, clip=False, per_example=True)
    np.testing.assert_array_equal(wide.gamma.to_numpy(), L.local_linearity(
        model, x, y, eps=8 / 255, steps=3, step_size=8 / 255 / 3, gen=gen(4), restarts=3, clip=False).double())
    summary = L.linearity_table(model, x, y, eps_list_255=(2, 8), steps=3, gen_seed=4)
    pd.testing.assert_frame_equal(summary, L.summarize_linearity(long))
    assert list(summary.columns) == ["eps_255", "eps", "n", "mean", "median", "std", "q25", "q75", "max"]
    row = summary[summary.eps_255 == 8].iloc[0]
    g = long[long.eps_255 == 8].gamma
    assert row.n == 8
    assert row["mean"] == pytest.approx(g.mean()) and row["std"] == pytest.approx(g.std())
    assert row["median"] == pytest.approx(g.median()) and row["max"] == pytest.approx(g.max())
    assert summary.set_index("eps_255")["mean"][8] > summary.set_index("eps_255")["mean"][2]
    # extra grouping columns (e.g. method) are kept
    both = pd.concat([long.assign(method="a"), long.assign(method="b")])
    assert len(L.summarize_linearity(both)) == 4
    with pytest.raises(ValueError, match="eps_list_255"):
        L.linearity_table(model, x, y, eps_list_255=())
    with pytest.raises(ValueError, match=r"eps_list_255\[1\]"):
        L.linearity_table(model, x, y, eps_list_255=(1, -2))
    with pytest.raises(ValueError, match="columns"):
        L.summarize_linearity(pd.DataFrame({"x": [1]}))


def test_gamma_per_image_is_a_fixed_image_order_for_every_model():
    x, y = images(), labels()
    tables = {}
    for m, model in (("erm", mlp()), ("varmixup_full", cnn())):
        for sd in (0, 1):
            tables[m, sd] = L.linearity_table(model, x, y, eps_list_255=(8, 2), steps=2, gen_seed=sd,
                                              per_example=True).assign(method=m, seed=sd)
    long = pd.concat(tables.values(), ignore_index=True).sample(frac=1.0, random_state=0)  # row order must not matter
    eps, per = L.gamma_per_image(long)
    assert eps.tolist() == [2.0, 8.0]
    assert list(per) == list(dict.fromkeys(zip(long["method"], long["seed"])))
    for key, t in tables.items():
        assert per[key].shape == (2, 8) and per[key].dtype == np.float64
        for i, e in enumerate(eps):
            np.testing.assert_array_equal(per[key][i], t[t.eps_255 == e].sort_values("image").gamma.to_numpy())
    # the mean over images is the summary's mean
    summary = L.summarize_linearity(long.drop(columns="eps")).set_index(["method", "seed", "eps_255"])
    assert per["erm", 1][1].mean() == pytest.approx(summary.loc[("erm", 1, 8), "mean"], abs=1e-12)
    # one model's table needs no keys
    e1, one = L.gamma_per_image(tables["erm", 0].drop(columns=["method", "seed"]), by=())
    np.testing.assert_array_equal(one[()], per["erm", 0])
    with pytest.raises(ValueError, match="several values in column 'seed'"):
        L.gamma_per_image(long, by=["method"])
    with pytest.raises(ValueError, match="more than one γ"):
        L.gamma_per_image(pd.concat([tables["erm", 0], tables["erm", 0]]))
    short = pd.concat([tables["erm", 0], tables["erm", 1][tables["erm", 1].image < 7]])
    with pytest.raises(ValueError, match="expected the images 0..7"):
        L.gamma_per_image(short)
    with pytest.raises(ValueError, match="lacks a value"):
        L.gamma_per_image(long[~((long.method == "erm") & (long.seed == 0) & (long.eps_255 == 2) & (long.image == 3))])
    with pytest.raises(ValueError, match="by = 'method'"):
        L.gamma_per_image(long, by="method")
    with pytest.raises(ValueError, match="columns eps_255, image and gamma"):
        L.gamma_per_image(long.drop(columns="image"))


# ----------------------------------------------------------------------------------------------
# input surface
def test_input_surface_centre_is_clean_loss_and_shapes():
    model, x, y = mlp(), images(), labels()
    model.train()
    s = L.input_surface(model, x, y, span=8 / 255, points=5, gen=gen(), batch_size=7)
    assert s["loss"].shape == (5, 5) and s["a"].shape == (5,) and s["b"].shape == (5,)
    assert s["a"][2] == 0.0 and s["a"][0] == pytest.approx(-8 / 255) and s["a"][-1] == pytest.approx(8 / 255)
    model.eval()
    with torch.no_grad():
        clean = float(F.cross_entropy(model(x), y))
    assert s["loss"][2, 2] == pytest.approx(clean, rel=1e-12)
    # gradient-sign direction: loss goes up along +a
    assert s["loss"][4, 2] > s["loss"][2, 2] > s["loss"][0, 2]
    again = L.input_surface(model, x, y, span=8 / 255, points=5, gen=gen())
    np.testing.assert_allclose(again["loss"], s["loss"], rtol=1e-12)


def test_input_surface_directions_on_affine_loss():
    # ℓ = true logit of a linear model: ℓ(x + a·u + b·v) = ℓ(x) + a·‖g‖₁ + b·gᵀv, g the input gradient
    model, x, y = linear_model(), images(lo=0.2, hi=0.8), labels()
    span = 4 / 255
    s = L.input_surface(model, x, y, span=span, points=3, gen=gen(3), loss=true_logit)
    g = model[1].weight[y].detach().view(-1, C, H, W)
    v = (torch.randint(0, 2, x.shape, generator=gen(3)) * 2 - 1).double()
    with torch.no_grad():
        l0 = true_logit(model(x), y)
    a, b = s["a"], s["b"]
    expect = np.array([[float((l0 + ai * g.abs().flatten(1).sum(1) + bj * (g * v).flatten(1).sum(1)).mean())
                        for bj in b] for ai in a])
    np.testing.assert_allclose(s["loss"], expect, rtol=1e-10, atol=1e-10)


def test_input_surface_clamps_images():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, K).double()

        def forward(self, inp):
            seen.append((float(inp.detach().min()), float(inp.detach().max())))
            return self.lin(inp.flatten(1))

    x, y = images(), labels()
    L.input_surface(Probe(), x, y, span=1.0, points=3, gen=gen())
    assert min(lo for lo, _ in seen) == 0.0 and max(hi for _, hi in seen) == 1.0


def test_input_surface_rejects_bad_inputs():
    model, x, y = mlp(), images(), labels()
    with pytest.raises(ValueError, match="points"):
        L.input_surface(model, x, y, span=0.03, points=2, gen=gen())
    with pytest.raises(ValueError, match="span"):
        L.input_surface(model, x, y, span=0.0, points=5, gen=gen())
    with pytest.raises(ValueError, match="y"):
        L.input_surface(model, x, y[:3], span=0.03, points=5, gen=gen())
    with pytest.raises(ValueError, match="gen"):
        L.input_surface(model, x, y, span=0.03, points=5, gen="seed")


# ----------------------------------------------------------------------------------------------
# weight surface
def test_filter_normalised_direction():
    model = cnn()
    d = L.filter_normalized_direction(model, gen())
    assert list(d) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert d[name].shape == p.shape
        if p.dim() <= 1:  # biases and BN weight/bias: 'biasbn' ignored
            assert bool((d[name] == 0).all()), name
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
            assert not torch.allclose(d[name], p.detach())
    again = L.filter_normalized_direction(model, gen())
    assert all(torch.equal(again[k], d[k]) for k in d)


def test_weight_surface_restores_weights_and_centre_is_clean_loss():
    model, x, y = cnn(), images(), labels()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    s = L.weight_surface(model, x, y, points=5, dims=1, span=1.0, gen=gen())
    assert set(s) == {"alpha", "loss", "accuracy"} and s["loss"].shape == (5,)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert s["alpha"][2] == 0.0
    assert s["loss"][2] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
    assert s["accuracy"][2] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert not np.allclose(s["loss"], s["loss"][2])  # the direction moves the weights


def test_weight_surface_uses_filter_normalised_direction():
    model, x, y = cnn(), images(), labels()
    s = L.weight_surface(model, x, y, points=3, dims=1, span=0.5, gen=gen(9))
    d = L.filter_normalized_direction(model, gen(9))
    moved = cnn()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(0.5 * d[name])
    moved.eval()
    with torch.no_grad():
        expect = float(F.cross_entropy(moved(x), y))
    assert s["loss"][2] == pytest.approx(expect, rel=1e-10)


def test_weight_surface_2d():
    model, x, y = cnn(), images(), labels()
    s = L.weight_surface(model, x, y, points=3, dims=2, span=1.0, gen=gen(), batch_size=3)
    assert s["loss"].shape == (3, 3) and s["accuracy"].shape == (3, 3) and s["beta"].shape == (3,)
    one = L.weight_surface(model, x, y, points=3, dims=1, span=1.0, gen=gen())
    # the first direction is the same in both: the β = 0 column equals the 1-D curve
    np.testing.assert_allclose(s["loss"][:, 1], one["loss"], rtol=1e-10)
    assert not np.allclose(s["loss"][1, :], s["loss"][1, 1])
    # e is a second, independent direction drawn from the same generator after d
    g = gen()
    d = L.filter_normalized_direction(model, g)
    e = L.filter_normalized_direction(model, g)
    moved = cnn()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(1.0 * d[name] - 1.0 * e[name])
    moved.eval()
    with torch.no_grad():
        expect = float(F.cross_entropy(moved(x), y))
    assert s["loss"][2, 0] == pytest.approx(expect, rel=1e-10)
    assert s["loss"][2, 0] != pytest.approx(s["loss"][1, 1], rel=1e-6)


def test_weight_surface_restores_weights_after_error():
    model, x, y = cnn(), images(), labels()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(out, t):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return F.cross_entropy(out, t, reduction="none")

    with pytest.raises(RuntimeError, match="boom"):
        L.weight_surface(model, x, y, points=3, gen=gen(), loss=failing)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_weight_surface_rejects_bad_inputs():
    model, x, y = cnn(), images(), labels()
    with pytest.raises(ValueError, match="points"):
        L.weight_surface(model, x, y, points=1)
    with pytest.raises(ValueError, match="dims"):
        L.weight_surface(model, x, y, dims=3)
    with pytest.raises(ValueError, match="span"):
        L.weight_surface(model, x, y, span=-1.0)
    with pytest.raises(ValueError, match="y"):
        L.weight_surface(model, x, y.double())
    with pytest.raises(ValueError, match="parameters"):
        L.weight_surface(nn.Flatten(), x, y, loss=quad_loss)
    with pytest.raises(ValueError, match="model"):
        L.weight_surface("net", x, y)


def test_grid_centre_exact():
    g = L._grid(1.0, 51)
    assert g[25] == 0.0 and g[0] == -1.0 and g[-1] == 1.0 and len(g) == 51
    assert np.all(np.diff(g) > 0) and math.isclose(g[1] - g[0], 0.04)
