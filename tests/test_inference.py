"""varmix.learn.inference: the inference copy gives the model's bits (its 2x2 max-pool as strided maxima), the
folded copy the model's function within rounding; both leave the model as it was, and their bits do not
depend on the instruction set torch's kernels use with the portable kernels."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from varmix.learn.inference import MaxPool2x2, fold_batch_norm, inference_copy, max_pool_2x2
from varmix.learn.models import build_model


def trained_like(arch: str, channels: int = 1, size: int = 28) -> nn.Module:
    """A fresh model in eval mode whose batch norms hold running statistics and affine weights away from
    their defaults (a fold of the defaults would be close to the identity and prove little)."""
    torch.manual_seed(0)
    model = build_model(arch, channels, 10, size, [0.5] * channels, [0.25] * channels)
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.3)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def images(n: int, seed: int) -> torch.Tensor:
    """Fashion-MNIST-like inputs: random pixels with a zero border (the ties max-pooling meets)."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    x[:, :, :6] = 0
    return x


@pytest.mark.parametrize("shape", [(3, 5, 28, 28), (2, 3, 7, 7), (2, 2, 6, 9), (1, 1, 2, 2)])
def test_max_pool_2x2_has_max_pool2d_bits(shape):
    h = torch.relu(torch.randn(shape, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(max_pool_2x2(h), F.max_pool2d(h, 2))
    with pytest.raises(ValueError, match=r"input of shape \(2, 3\): expected \[N, C, H, W\]"):
        max_pool_2x2(torch.zeros(2, 3))


@pytest.mark.parametrize("arch", ["small_cnn", "resnet34"])
def test_inference_copy_has_the_models_bits_with_and_without_autograd(arch):
    model = trained_like(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model)
    pools = sum(type(m) is nn.MaxPool2d for m in model.modules())
    assert sum(isinstance(m, MaxPool2x2) for m in fast.modules()) == pools
    x, y = images(8, 2), torch.arange(8) % 10
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    grads = []
    for m in (model, fast):  # an attack's input gradient: max_pool2d's own backward, ties included
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(m(xa), y).backward()
        grads.append(xa.grad)
    assert torch.equal(grads[0], grads[1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched
    assert not fast.training and not model.training


@pytest.mark.parametrize("arch, folds", [("small_cnn", 3), ("resnet34", 4)])
def test_folded_model_equals_the_model_within_rounding(arch, folds):
    model = trained_like(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for folded in (fold_batch_norm(model), inference_copy(model, fold=True)):
        norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == norms - folds
        x = images(16, 2)
        with torch.no_grad():
            want, got = model(x), folded(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert not folded.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_folded_model_passes_input_gradients():
    model = trained_like("small_cnn")
    folded = inference_copy(model, fold=True)
    x, y = images(4, 3), torch.tensor([0, 1, 2, 3])
    grads = []
    for m in (model, folded):
        xa = x.clone().requires_grad_(True)
        F.cross_entropy(m(xa), y).backward()
        grads.append(xa.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def test_copies_refuse_a_model_in_training_mode_a_non_module_and_a_bad_fold():
    for make in (fold_batch_norm, inference_copy):
        with pytest.raises(ValueError, match="training mode: an inference copy .* needs eval mode"):
            make(trained_like("small_cnn").train())
        with pytest.raises(ValueError, match="model is a dict: expected a torch.nn.Module"):
            make({})
    with pytest.raises(ValueError, match="fold = 'yes' is invalid: expected True or False"):
        inference_copy(trained_like("small_cnn"), "yes")


_LOGITS = """
import hashlib, torch
torch.backends.mkldnn.enabled = False  # cpu_kernels: portable
torch.set_num_threads(2)
from varmix.learn.inference import inference_copy
from tests.test_inference import images, trained_like
model = trained_like("small_cnn")
x = images(64, 4)
with torch.no_grad():
    outs = model(x), inference_copy(model)(x), inference_copy(model, fold=True)(x)
print(torch.backends.cpu.get_cpu_capability(), *(hashlib.sha256(o.numpy().tobytes()).hexdigest() for o in outs))
"""


def _digests(capability: str, mkl: str | None) -> tuple[str, ...]:
    """torch's kernel set and the digests of the logits of the model, its inference copy and its folded copy,
    in a fresh process with ATEN_CPU_CAPABILITY = ``capability``, MKL_CBWR = AVX2 (as session.CPU_KERNELS
    pins it) and MKL limited to the instructions ``mkl`` (None: the CPU's own)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "MKL_CBWR": "AVX2",
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.pop("MKL_ENABLE_INSTRUCTIONS", None)
    if mkl:
        env["MKL_ENABLE_INSTRUCTIONS"] = mkl
    out = subprocess.run([sys.executable, "-c", _LOGITS], env=env, cwd=root, capture_output=True, text=True,
                         check=True).stdout.split()
    return tuple(out)


def test_copies_have_the_same_bits_on_avx2_and_avx512_cpus():
    # The pipeline's portable kernels (session.CPU_KERNELS: ATEN avx2, MKL_CBWR AVX2; oneDNN off) on this CPU
    # as it is and with MKL limited to AVX2 (as on an AVX2-only CPU), and torch's AVX-512 kernels with either:
    # the copies' bits are the same in all four, as the model's are. torch's unvectorised kernels
    # (ATEN_CPU_CAPABILITY=default, a CPU without AVX2, which the pipeline does not promise) change the last
    # digits of all three alike.
    pinned = _digests("avx2", None)
    if pinned[0] != "AVX2":
        pytest.skip(f"this CPU has no AVX2 (torch used {pinned[0]})")
    assert pinned[1] == pinned[2]  # the inference copy: the model's bits
    assert pinned[1] != pinned[3]  # the fold rounds otherwise than the model (hence eval.fold_batch_norm)
    assert _digests("avx2", "AVX2")[1:] == pinned[1:]
    wide = _digests("avx512", None)
    if wide[0] != "AVX512":
        pytest.skip(f"this CPU has no AVX-512 (torch used {wide[0]})")
    assert wide[1:] == pinned[1:]
    assert _digests("avx512", "AVX2")[1:] == pinned[1:]
    plain = _digests("default", None)
    assert plain[1] == plain[2] and (plain[1] == pinned[1]) == (plain[3] == pinned[3])


@pytest.mark.parametrize("fold", [False, True])
def test_session_loads_inference_copies_and_folds_by_the_setting(tmp_path, fold):
    import yaml

    from varmix.core.config import Params
    from varmix.core.io import save_torch
    from varmix.learn.train import MODEL_FORMAT
    from varmix.pipeline import session

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "params.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["eval"]["fold_batch_norm"] = fold
    params = Params.from_dict(raw)
    s = session.Session(params, session.Layout(tmp_path, "fashion-mnist", "smoke"), torch.device("cpu"))
    model = trained_like("small_cnn")
    build = {"arch": "small_cnn", "in_channels": 1, "num_classes": 10, "image_size": 28, "mean": [0.5], "std": [0.25]}
    for arm in params.arms:  # one model for every arm of seed 0
        s.layout.model_dir(arm, 0).mkdir(parents=True)
        save_torch(s.layout.model_dir(arm, 0) / "model.pt", {"format": MODEL_FORMAT, "build": build,
                                                             "state_dict": model.state_dict()})
    loaded = s.load_models(0)["erm"]
    assert not loaded.training and any(isinstance(m, MaxPool2x2) for m in loaded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules()) is not fold
    x = images(8, 6)
    with torch.no_grad():
        want, got = model(x), loaded(x)
    if fold:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    else:
        assert torch.equal(got, want)
