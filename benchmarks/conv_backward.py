"""The small CNN's convolution backward on the portable kernels, taken apart, with the bits checked: one table.

The portable training step (default profile: oneDNN off, ATen and MKL pinned to AVX2, 2 threads) spends
about half its time in ATen's ``slow_conv2d`` backward (benchmarks/step_profile.py --portable). For each of
the small CNN's three convolutions at the training batch, this script times side by side, interleaved over
``--rounds`` rounds (medians), on random tensors of the layer's shapes:

- ATen's ``convolution_backward`` as autograd calls it in training (input and weight gradients; the first
  layer, whose input is the image, only the weight gradient), and each gradient alone;
- the weight gradient as ``slow_conv2d`` defines it: im2col (``F.unfold``) and one GEMM per image, summed
  image by image into the gradient (``addmm_``), its bits compared with ATen's (``torch.equal``); timed with
  and without the unfold;
- the weight gradient as one whole-batch GEMM over the unfolded images (other bits: a different order of
  the sums);

each with its GFLOP/s and share of the matmul peak measured in the same run (throughput.py's). Timed alone,
a layer's operators do not take the time they take inside a training step (the allocator's and the caches'
state differ), so two more rows time the whole ERM training step (forward, backward, Adam) at the batch, as
autograd runs it and with every convolution's input and weight gradients computed in two separate
``convolution_backward`` calls, their parameters after the step compared bit for bit. It answers whether a
different arrangement of the same arithmetic could train faster with the study's bits.

    python benchmarks/conv_backward.py                  # ~1 min on a 2-core EPYC
    python benchmarks/conv_backward.py --out auto       # also writes benchmarks/results/conv-backward-cpu-<cpu>-<avx>-2threads.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from varmix.pipeline.session import CPU_KERNELS  # noqa: E402  (no torch import: set the kernels first)

for _key, _value in CPU_KERNELS.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from study_profile import add_out_option, cpu_name, write_out  # noqa: E402
from throughput import markdown_table, matmul_peak  # noqa: E402
from varmix.learn.models import build_model  # noqa: E402

HEADERS = ("layer", "measured", "ms", "GFLOP", "GFLOP/s", "of peak", "bits as ATen's")
NUMERIC = ("ms", "GFLOP", "GFLOP/s", "of peak")


def conv_layers(batch: int) -> list[tuple[str, torch.nn.Conv2d, tuple[int, ...]]]:
    """(name, the small CNN's convolution, its input's shape at ``batch``) for 1x28x28 images."""
    model = build_model("small_cnn", 1, 10, 28, [0.5], [0.25])
    out, size = [], 28
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            out.append((name, module, (batch, module.in_channels, size, size)))
            size //= 2  # each block halves the map (2x2 max-pool)
    return out


def gradient_flop(conv: torch.nn.Conv2d, shape: tuple[int, ...]) -> float:
    """FLOPs of one of the layer's gradients (input or weight) at input ``shape``: as many as its forward."""
    b, cin, h = shape[0], shape[1], shape[2]
    return 2.0 * b * conv.out_channels * cin * conv.kernel_size[0] * conv.kernel_size[1] * h * h


def cases(conv: torch.nn.Conv2d, shape: tuple[int, ...], gen: torch.Generator):
    """The timed closures for one layer, its weight gradient's FLOPs, and the bits check of the per-image sum."""
    x = torch.randn(shape, generator=gen)
    w = conv.weight.detach().clone()
    b, cout, h = shape[0], conv.out_channels, shape[2]
    go = torch.randn((b, cout, h, h), generator=gen)
    args = (go, x, w, None, list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0], 1)
    needs_input = shape[1] > 1  # autograd asks no input gradient of the image

    def aten(mask):
        return lambda: torch.ops.aten.convolution_backward(*args, mask)

    def unfold():
        return F.unfold(x, conv.kernel_size, padding=conv.padding)

    cols = unfold()
    go2 = go.reshape(b, cout, -1)

    def per_image(c=None):
        c = unfold() if c is None else c
        acc = torch.zeros(cout, c.shape[1])
        for n in range(b):
            acc.addmm_(go2[n], c[n].t())
        return acc

    def whole_batch():
        c = unfold()
        return go2.permute(1, 0, 2).reshape(cout, -1) @ c.permute(0, 2, 1).reshape(-1, c.shape[1])

    flop = gradient_flop(conv, shape)
    reference = torch.ops.aten.convolution_backward(*args, [False, True, False])[1].reshape(cout, -1)
    same = {"per image": torch.equal(per_image(), reference), "whole batch": torch.equal(whole_batch(), reference)}
    rows = [("ATen backward, as in training", aten([needs_input, True, False]), flop * (2 if needs_input else 1), "—"),
            ("ATen, weight gradient alone", aten([False, True, False]), flop, "—")]
    if needs_input:
        rows.append(("ATen, input gradient alone", aten([True, False, False]), flop, "—"))
    rows += [("weight gradient: unfold, GEMM per image summed in order", per_image, flop,
              "yes" if same["per image"] else "no"),
             ("  the same without the unfold", lambda: per_image(cols), flop, "yes" if same["per image"] else "no"),
             ("weight gradient: unfold, one whole-batch GEMM", whole_batch, flop, "yes" if same["whole batch"] else "no"),
             ("unfold (im2col) alone", unfold, 0.0, "—")]
    return rows


class TwoCallConv(torch.autograd.Function):
    """A convolution whose backward asks ATen for the input and the weight gradient in two calls."""

    @staticmethod
    def forward(ctx, x, w, conv):
        ctx.save_for_backward(x, w)
        ctx.conv = conv
        return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, go):
        x, w = ctx.saved_tensors
        c = ctx.conv
        args = (go, x, w, None, list(c.stride), list(c.padding), list(c.dilation), False, [0, 0], c.groups)
        gi = torch.ops.aten.convolution_backward(*args, [True, False, False])[0] if ctx.needs_input_grad[0] else None
        gw = torch.ops.aten.convolution_backward(*args, [False, True, False])[1] if ctx.needs_input_grad[1] else None
        return gi, gw, None


def step_cases(batch: int, layers, gen: torch.Generator):
    """The ERM training step as autograd runs it and with two-call convolution backwards, each on its own
    copy of one model and Adam; whether the two give the same parameters after one step."""
    x = torch.rand((batch, 1, 28, 28), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def make(two_calls: bool):
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 10, 28, [0.5], [0.25])
        if two_calls:
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.forward = lambda inp, m=m: TwoCallConv.apply(inp, m.weight, m)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return model, step

    (m0, s0), (m1, s1) = make(False), make(True)
    s0()
    s1()
    same = all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values()))
    flop = 3 * sum(gradient_flop(c, shape) for _, c, shape in layers)  # forward + 2 gradients, convs only
    return [("training step, as autograd runs it", s0, flop, "—"),
            ("training step, two-call convolution backward", s1, flop, "yes" if same else "no")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=128, help="the training batch (default 128, the profile's)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds; the table shows medians (default 9)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, the profile's)")
    add_out_option(p, "conv-backward")
    args = p.parse_args(argv)
    for name, value in (("--batch-size", args.batch_size), ("--rounds", args.rounds), ("--threads", args.threads)):
        if value < 1:
            p.error(f"{name} = {value}: expected a whole number >= 1")
    threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = False  # the portable kernels: slow_conv2d, as the default profile trains
    try:
        text = _measure(args)
    finally:  # a caller's process (the tests) keeps its own settings
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = mkldnn
    print(text)
    write_out(text, args.out, args.threads, "conv-backward")
    return 0


def _measure(args) -> str:
    """The table, as markdown with its heading and notes."""
    dev = torch.device("cpu")
    peak = matmul_peak(dev, torch.float32)  # GFLOP/s
    gen = torch.Generator().manual_seed(0)
    layers = conv_layers(args.batch_size)
    table = [(name, label, fn, flop, bits) for name, conv, shape in layers
             for label, fn, flop, bits in cases(conv, shape, gen)]
    table += [("small CNN", label, fn, flop, bits) for label, fn, flop, bits in step_cases(args.batch_size, layers, gen)]
    times: list[list[float]] = [[] for _ in table]
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for i, (_, _, fn, _, _) in enumerate(table):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    rows = []
    for (name, label, _, flop, bits), ts in zip(table, times):
        s = statistics.median(ts[1:])
        rate = flop / s / 1e9 if flop else None
        rows.append((name, label, f"{1e3 * s:.1f}", f"{flop / 1e9:.2f}" if flop else "—",
                     f"{rate:.1f}" if rate else "—", f"{100 * rate / peak:.1f}%" if rate else "—", bits))
    cpu, avx512 = cpu_name()
    text = (f"# The small CNN's convolution backward, portable kernels (batch {args.batch_size}, {args.threads} threads)\n\n"
            f"`python benchmarks/conv_backward.py` on {cpu} ({'with' if avx512 else 'without'} AVX-512); torch "
            f"{torch.__version__}; ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY')}, "
            f"MKL_CBWR={os.environ.get('MKL_CBWR')}, oneDNN off. Medians of {args.rounds} interleaved rounds. "
            f"Peak: a 4096² fp32 matmul, {peak:.0f} GFLOP/s, measured in this run. GFLOP: 2 per multiply-add of "
            f"each gradient computed (the step rows: the convolutions' forward and both gradients). Bits: the weight "
            f"gradient compared with ATen's by torch.equal; the step rows, the parameters after one step.\n\n"
            + markdown_table(rows, HEADERS, NUMERIC) + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main())
