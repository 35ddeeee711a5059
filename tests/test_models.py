"""varmix.learn.models: shapes, internal normalisation and the manifold-mixup contract for every arch."""

import pytest
import torch

from varmix.core.names import ARCHS
from varmix.learn.models import NUM_MIX_LAYERS, build_model

SHAPES = [(1, 28), (3, 32), (3, 64)]


def _model(arch, c=3, s=32, k=7, seed=0):
    torch.manual_seed(seed)
    return build_model(arch, c, k, s, [0.4] * c, [0.3] * c)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("c,s", SHAPES)
def test_output_shape(arch, c, s):
    model = _model(arch, c, s, k=7)
    out = model(torch.rand(2, c, s, s))
    assert out.shape == (2, 7) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.num_mix_layers == NUM_MIX_LAYERS[arch] >= 3


def test_small_cnn_is_small():
    n = sum(p.numel() for p in _model("small_cnn", 1, 28).parameters())
    assert 50_000 < n < 500_000


@pytest.mark.parametrize("arch", ARCHS)
def test_normalises_its_input_internally(arch):
    """A model with mean/std m, s on x gives what the same weights with mean 0, std 1 give on (x - m) / s."""
    torch.manual_seed(0)
    a = build_model(arch, 3, 5, 16, [0.2, 0.5, 0.7], [0.3, 0.2, 0.1]).eval()
    b = build_model(arch, 3, 5, 16, [0.0] * 3, [1.0] * 3).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x = torch.rand(2, 3, 16, 16)
    xn = (x - torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1)) / torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1)
    torch.testing.assert_close(a(x), b(xn), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(a(x), b(x), atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_manifold_mixing_contract(arch):
    # 16 px (the smallest size) keeps the ResNets quick; eval mode: batch norm uses running stats, so
    # each sample's output does not depend on the rest of the batch
    model = _model(arch, 1, 16).eval()
    x = torch.rand(3, 1, 16, 16)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        plain, permuted = model(x), model(x[perm])
        for k in range(model.num_mix_layers):
            torch.testing.assert_close(model(x, mix_layer=k, lam=1.0, perm=perm), plain)
            torch.testing.assert_close(model(x, mix_layer=k, lam=0.0, perm=perm), permuted)
            half = model(x, mix_layer=k, lam=0.5, perm=perm)
            assert not torch.allclose(half, plain, atol=1e-4) and not torch.allclose(half, permuted, atol=1e-4)
        # layer 0 is the input itself
        mixed_input = 0.3 * x + 0.7 * x[perm]
        torch.testing.assert_close(model(x, mix_layer=0, lam=0.3, perm=perm), model(mixed_input))


def test_mixing_keeps_gradients_in_train_mode():
    model = _model("small_cnn", 1, 28).train()
    x = torch.rand(4, 1, 28, 28)
    out = model(x, mix_layer=2, lam=0.4, perm=torch.tensor([1, 0, 3, 2]))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet50'.*small_cnn"):
        build_model("resnet50", 3, 10, 32, [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match=r"image_size=8.*>= 16"):
        build_model("small_cnn", 3, 10, 8, [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match=r"in_channels=0"):
        build_model("small_cnn", 0, 10, 32, [], [])
    with pytest.raises(ValueError, match=r"num_classes=1"):
        build_model("small_cnn", 3, 1, 32, [0.5] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match=r"expected 3 value"):
        build_model("small_cnn", 3, 10, 32, [0.5], [0.5])
    with pytest.raises(ValueError, match=r"std .*> 0"):
        build_model("small_cnn", 1, 10, 28, [0.5], [0.0])

    model = _model("small_cnn", 1, 28)
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"mix_layer=4: expected 0..3"):
        model(x, mix_layer=4, lam=0.5, perm=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"needs lam and perm"):
        model(x, mix_layer=1)
    with pytest.raises(ValueError, match=r"perm of shape \(3,\)"):
        model(x, mix_layer=1, lam=0.5, perm=torch.tensor([1, 0, 2]))
    with pytest.raises(ValueError, match=r"input of shape \(2, 3, 28, 28\): expected \[N, 1, H, W\]"):
        model(torch.rand(2, 3, 28, 28))
