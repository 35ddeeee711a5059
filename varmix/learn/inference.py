"""Classifiers for evaluation: ``inference_copy(model, fold_batch_norm)``, an eval-mode copy that computes faster
with the portable kernels (oneDNN off), and ``fold_batch_norm(model)``, eval-mode batch norm folded into the
convolution before it.

Why: ATen's own kernels, which the portable profiles run, leave the small CNN's eval forward far below the
machine's roofline (benchmarks/roofline.py measures each layer against it). Two of its passes are cheap to
replace:

- ``max_pool2d`` over 2x2 windows on NCHW maps runs at a few % of the memory bandwidth; the same maxima
  taken as two element-wise ``torch.maximum`` over strided views (rows, then columns) stream at several
  times its speed. A maximum is exact, so the values are the same bits (``max_pool_2x2``). The copy uses it
  only without autograd: ``max_pool2d``'s backward sends a window's gradient to one of tied maxima,
  ``maximum``'s splits it, and the attacks' input gradients keep today's bits.
- eval-mode ``BatchNorm2d`` after a bias-free ``Conv2d`` is an affine map per channel, so the pair equals one
  convolution with scaled weights and a bias (torch's ``fuse_conv_bn_eval``): one pass fewer over each
  batch-normed map. The folded convolution rounds otherwise (the product of weight and scale is rounded
  before the sums, not after): the same function, not the same bits, hence the profile's
  ``eval.fold_batch_norm`` (``pipeline.Session.load_models``).

Neither depends on the CPU's instruction set beyond what the portable kernels already pin: the fold is
element-wise float32 arithmetic (``rsqrt`` as ``1 / sqrt`` in every vectorised ATen path) and the maxima are
exact; tests/test_inference.py compares the bits under ``ATEN_CPU_CAPABILITY`` avx2 and avx512 and with MKL
limited to AVX2.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["MaxPool2x2", "fold_batch_norm", "inference_copy", "max_pool_2x2"]


def max_pool_2x2(h: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(h, 2)`` for ``h`` [N, C, H, W] (a trailing odd row or column dropped, as max_pool2d
    does): the maximum of row pairs, then of column pairs, each one element-wise ``torch.maximum`` over
    strided views. The same values bit for bit (a maximum rounds nothing); without a backward of its own
    worth using on ties (see the module docstring)."""
    if h.ndim != 4:
        raise ValueError(f"input of shape {tuple(h.shape)}: expected [N, C, H, W]")
    rows = h[:, :, : h.shape[2] // 2 * 2]
    rows = torch.maximum(rows[:, :, 0::2], rows[:, :, 1::2])
    cols = rows[..., : h.shape[3] // 2 * 2]
    return torch.maximum(cols[..., 0::2], cols[..., 1::2])


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` as :func:`max_pool_2x2` when autograd is off, ``F.max_pool2d`` when it records
    (so gradients, ties included, are max_pool2d's)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and h.requires_grad:
            return F.max_pool2d(h, 2)
        return max_pool_2x2(h)


def _is_pool_2x2(m: nn.Module) -> bool:
    def pair(v):
        return v if isinstance(v, tuple) else (v, v)

    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2) and pair(m.stride) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def _check_eval_module(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model is a {type(model).__name__}: expected a torch.nn.Module")
    if model.training:
        raise ValueError("model is in training mode: an inference copy (and a batch-norm fold) needs eval mode "
                         "(call model.eval())")


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) in which every ``BatchNorm2d`` that directly follows a ``Conv2d``
    in an ``nn.Sequential`` is folded into that convolution and replaced by ``nn.Identity``; ``model`` is
    left as it is. The copy is for inference and for gradients to the input (the attacks), not for
    training: its folded convolutions no longer normalise by a batch's statistics in training mode.
    Pairs elsewhere (torchvision's BasicBlock keeps its convolutions and norms as attributes, a pre-activation
    block normalises before its convolution) stay as they are. A model in training mode is a ValueError:
    its batch norms normalise by the batch's statistics, which no fold reproduces."""
    _check_eval_module(model)
    folded = copy.deepcopy(model)
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return folded.eval()


def inference_copy(model: nn.Module, fold: bool = False) -> nn.Module:
    """An eval-mode copy of ``model`` for the evaluation chapters: every ``nn.MaxPool2d(2)`` replaced by
    :class:`MaxPool2x2` (the same bits, with or without autograd) and, with ``fold``, batch norm folded
    (:func:`fold_batch_norm`: other last digits). ``model`` is left as it is; a model in training mode is a
    ValueError."""
    _check_eval_module(model)
    if not isinstance(fold, bool):
        raise ValueError(f"fold = {fold!r} is invalid: expected True or False")
    out = fold_batch_norm(model) if fold else copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in parent.named_children():
            if _is_pool_2x2(child):
                setattr(parent, name, MaxPool2x2())
    return out.eval()
