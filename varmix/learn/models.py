"""Classifiers: ``build_model(arch, in_channels, num_classes, image_size, mean, std)``.

Every model takes images in ``[0, 1]`` and normalises them internally with ``mean``/``std`` buffers, so
mixing, corruptions and attacks all happen in pixel space. Every ``forward(x, mix_layer=None, lam=None,
perm=None)`` supports manifold mixup (Verma et al. 2019): the hidden state ``h`` at layer ``mix_layer``
is replaced by ``lam * h + (1 - lam) * h[perm]``. Layer 0 is the input, layer k the output of the k-th
stage (block group); ``model.num_mix_layers`` says how many layers can be mixed (0 .. n-1).

Architectures (names in ``varmix.core.names.ARCHS``):

- ``resnet34``: the paper's classifier. torchvision's BasicBlock in the [3, 4, 6, 3] layout with the
  CIFAR stem of the mixup literature (one 3x3 conv, stride 1, no max-pool) - the paper does not say which
  stem it used; the ImageNet stem (7x7 stride 2 + max-pool) would shrink a 32 px image to 8 px before the
  first block. Initialised like torchvision's ResNet (Kaiming normal, fan_out).
- ``preact_resnet18``: the PreAct ResNet-18 of Kuang Liu's pytorch-cifar, used unchanged by
  facebookresearch/mixup-cifar10 and Verma et al.'s manifold mixup. Like that reference it has no final
  BN-ReLU before pooling (He et al.'s pre-activation paper has one) and PyTorch's default init.
- ``small_cnn``: a ~0.1M-parameter CNN for CPU runs (seconds per epoch on a Fashion-MNIST subset).

The final spatial map is averaged with an adaptive pool (to 1x1 for the ResNets, 2x2 for small_cnn), so
28, 32 and 64 px inputs all work (the references' ``avg_pool2d(out, 4)`` assumes 32 px).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Mixable layers per architecture (input + one per stage): in config, which checks manifold_layers with it.
from varmix.core.names import ARCHS, NUM_MIX_LAYERS  # noqa: F401  (NUM_MIX_LAYERS re-exported)

# The ResNets downsample 8x: 16 px still leaves a 2x2 map before pooling.
MIN_IMAGE_SIZE = 16


def mix_hidden(h: torch.Tensor, partner: torch.Tensor, lam: float) -> torch.Tensor:
    """Manifold Mixup's interpolation of a hidden state with its partners' (``h[perm]`` in one process;
    gathered from every process under DDP, varmix.learn.train._logits_target): ``lam * h + (1 - lam) * partner``.
    The one expression every path mixes with, so a single-process and a distributed run mix alike."""
    return lam * h + (1.0 - lam) * partner


class MixableClassifier(nn.Module):
    """Shared plumbing: input normalisation, argument checks and the manifold-mixup loop over stages.

    Subclasses fill ``self.stages`` (an ``nn.ModuleList``; stage k's output is mix layer k + 1) and
    ``self.head`` (pooled features -> logits) and may override ``features_out`` for a final activation.
    """

    def __init__(self, in_channels: int, num_classes: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.stages = nn.ModuleList()
        self.head: nn.Module = nn.Identity()
        self.pool_size = 1  # the last feature map is average-pooled to pool_size x pool_size

    @property
    def num_mix_layers(self) -> int:
        return len(self.stages) + 1

    def features_out(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def forward(self, x: torch.Tensor, mix_layer: int | None = None, lam: float | None = None,
                perm: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input of shape {tuple(x.shape)}: expected [N, {self.in_channels}, H, W]")
        if mix_layer is not None:
            if not 0 <= mix_layer < self.num_mix_layers:
                raise ValueError(f"mix_layer={mix_layer}: expected 0..{self.num_mix_layers - 1}")
            if lam is None or perm is None:
                raise ValueError(f"mix_layer={mix_layer} needs lam and perm, got lam={lam!r} and "
                                 f"perm={'None' if perm is None else 'a tensor'}")
            if perm.shape != (x.shape[0],):
                raise ValueError(f"perm of shape {tuple(perm.shape)}: expected ({x.shape[0]},)")
        # Layer 0 is mixed in [0, 1] pixel space; normalisation is affine per channel, so this equals
        # mixing the normalised input.
        h = x
        if mix_layer == 0:
            h = mix_hidden(h, h[perm], lam)
        h = (h - self.mean) / self.std
        for k, stage in enumerate(self.stages, start=1):
            h = stage(h)
            if mix_layer == k:
                h = mix_hidden(h, h[perm], lam)
        h = self.features_out(h)
        h = torch.flatten(F.adaptive_avg_pool2d(h, self.pool_size), 1)
        return self.head(h)


# ----------------------------------------------------------------------------------------------
class SmallCNN(MixableClassifier):
    """conv32-pool / conv64-pool / conv128, each conv 3x3 + BN + ReLU, average pool to 2x2, linear.
    Pooling early keeps it at ~8 MFLOPs per 28 px image, so CPU epochs take seconds. The 2x2 pool keeps
    a coarse layout (quarters of the image) for the linear layer: on a Fashion-MNIST subset it learned
    clearly faster in the first epochs than a global average pool (64% vs 45% test accuracy after one
    epoch of 3000 images), at any input size."""

    def __init__(self, in_channels, num_classes, mean, std):
        super().__init__(in_channels, num_classes, mean, std)

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        self.stages = nn.ModuleList([block(in_channels, 32, True), block(32, 64, True), block(64, 128, False)])
        self.pool_size = 2
        self.head = nn.Linear(128 * 2 * 2, num_classes)


# ----------------------------------------------------------------------------------------------
class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016), as in Kuang Liu's pytorch-cifar."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(MixableClassifier):
    def __init__(self, in_channels, num_classes, mean, std):
        super().__init__(in_channels, num_classes, mean, std)
        blocks, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)))
            in_planes = planes
        # The stem conv belongs to stage 1, so mix layer 1 is "after layer1" as in Verma et al.
        stem = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        blocks[0] = nn.Sequential(stem, *blocks[0])
        self.stages = nn.ModuleList(blocks)
        self.head = nn.Linear(512, num_classes)


# ----------------------------------------------------------------------------------------------
class ResNet34(MixableClassifier):
    def __init__(self, in_channels, num_classes, mean, std):
        super().__init__(in_channels, num_classes, mean, std)
        stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
                             nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        stages, in_planes = [], 64
        for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            downsample = None
            if stride != 1 or in_planes != planes:
                downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                           nn.BatchNorm2d(planes))
            # imported here: torchvision.models costs ~1.5 s of import time that only resnet34 needs
            from torchvision.models.resnet import BasicBlock

            layer = [BasicBlock(in_planes, planes, stride, downsample)]
            layer += [BasicBlock(planes, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            in_planes = planes
        stages[0] = nn.Sequential(stem, *stages[0])  # stem + layer1 = stage 1 (mix layer 1)
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(512, num_classes)
        # torchvision's ResNet initialisation (the linear layer keeps PyTorch's default, as there).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


_BUILDERS = {"small_cnn": SmallCNN, "preact_resnet18": PreActResNet18, "resnet34": ResNet34}
assert set(_BUILDERS) == set(ARCHS)


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int,
                mean: Sequence[float], std: Sequence[float]) -> MixableClassifier:
    """A freshly initialised classifier (uses torch's global RNG for init: seed it, or fork it)."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    for name, value, lo in (("in_channels", in_channels, 1), ("num_classes", num_classes, 2),
                            ("image_size", image_size, MIN_IMAGE_SIZE)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name}={value!r}: expected an integer >= {lo}")
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean {mean} and std {std}: expected {in_channels} value(s) each (one per channel)")
    if any(not s > 0 for s in std):
        raise ValueError(f"std {std}: expected every value > 0")
    return _BUILDERS[arch](in_channels, num_classes, mean, std)
