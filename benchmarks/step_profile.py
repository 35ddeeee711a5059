"""Where a training step's time goes: the trainer's step (the closure benchmarks/throughput.py times)
under torch.profiler, its operators grouped into a few parts, each part's counted FLOPs and its share of
the matmul peak. One markdown table.

The step is ``varmix.learn.train.train_step`` on device-resident uint8 data, exactly as throughput.py's varmix
rows run it. Per (arch, shape, method):

- ``ms/step``: the part's self time (torch.profiler: every operator's own time, children excluded, summed
  over the part's operators) per step, over ``--steps`` profiled steps after ``--warmup``; the row
  "outside any operator" is the profiled wall time minus all operators' self time (Python, the
  optimiser's and autograd's bookkeeping between kernels).
- ``GFLOP/step``: torch.utils.flop_counter's count for the part's operators in one step (2 FLOPs per
  multiply-add; convolutions, matmuls and their backward only: the other parts do no counted FLOPs).
- ``GFLOP/s`` and ``of peak``: that count over the part's time, and over a large fp32 matmul's rate
  measured in the same run (throughput.matmul_peak). The step's row: all counted FLOPs over the
  unprofiled step time (the profiler itself costs a few percent).

    python benchmarks/step_profile.py                                   # small_cnn and preact_resnet18, 3x32x32, erm
    python benchmarks/step_profile.py --archs small_cnn,resnet34 --shapes 1x28x28 --methods erm,varmixup
    python benchmarks/step_profile.py --archs small_cnn --shapes 1x28x28 --portable --no-channels-last --threads 2

``--portable``: the default profile's kernels (``cpu_kernels: portable``: oneDNN off, and AVX2 kernels as
``session.CPU_KERNELS`` pins them), where the operators are ATen's own (``slow_conv2d`` and its backward).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))          # throughput.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # varmix, from a checkout

import throughput  # noqa: E402

from varmix.core import names
from varmix.pipeline.session import CPU_KERNELS  # noqa: E402
from varmix.learn.train import resolve_device  # noqa: E402

# (part, pattern over the profiler's operator names), first match wins. Autograd's nodes
# ("ConvolutionBackward0", "autograd::engine::evaluate_function: ...") are grouped with what they compute.
PARTS = (
    ("convolution, backward", re.compile(r"convolution_backward|ConvolutionBackward|conv2d_backward")),
    ("convolution, forward", re.compile(r"conv")),
    ("matmul (linear layers), fwd + bwd", re.compile(r"addmm|::mm$|bmm|matmul|linear|AddmmBackward|MmBackward|BmmBackward")),
    ("batch norm, fwd + bwd", re.compile(r"batch_norm|BatchNorm")),
    ("pooling, fwd + bwd", re.compile(r"pool|Pool")),
    ("optimiser (Adam)", re.compile(r"_foreach|_fused_adam|Optimizer|optimizer|adam")),
    ("activations, loss, augmentation, mixing, copies", re.compile(r".")),
)
OUTSIDE = "outside any operator"
# which counted FLOPs (flop_counter's aten overloads) belong to which part
FLOP_PARTS = {"convolution": "convolution, forward", "convolution_backward": "convolution, backward",
              "addmm": "matmul (linear layers), fwd + bwd", "mm": "matmul (linear layers), fwd + bwd",
              "bmm": "matmul (linear layers), fwd + bwd"}
HEADERS = ("arch", "shape", "method", "part", "ms/step", "share", "GFLOP/step", "GFLOP/s", "of peak")
NUMERIC = {"ms/step", "share", "GFLOP/step", "GFLOP/s", "of peak"}


def part_of(name: str) -> str:
    return next(part for part, pattern in PARTS if pattern.search(name))


def flops_by_part(step) -> dict[str, float]:
    """Counted FLOPs of one step, per part."""
    with FlopCounterMode(display=False) as counter:
        step()
    out: dict[str, float] = defaultdict(float)
    for op, flops in counter.get_flop_counts()["Global"].items():
        part = FLOP_PARTS.get(str(op).split(".")[1])  # aten.convolution (an OpOverloadPacket)
        if part is None:
            raise RuntimeError(f"flop_counter counted {op}, which no part of the table claims: add it to FLOP_PARTS")
        out[part] += flops
    return out


def profile_step(method: str, arch: str, shape, args, dev: torch.device,
                 peak: float) -> tuple[list[tuple[str, ...]], str]:
    """The table's rows for one (arch, shape, method) and a note naming its largest operators."""
    step, losses = throughput.make_varmix_step(method, arch, shape, args, dev)
    seconds = throughput.timed(step, args.warmup, args.steps, dev) / args.steps
    flops = flops_by_part(step)
    throughput.sync(dev)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        throughput.sync(dev)
        wall = (time.perf_counter() - start) / args.steps
    throughput._check_finite(losses[-1].item(), "varmix", method, arch)
    self_s: dict[str, float] = defaultdict(float)
    per_op = {}
    for event in prof.key_averages():
        per_op[event.key] = event.self_cpu_time_total / 1e6 / args.steps
        self_s[part_of(event.key)] += per_op[event.key]
    self_s[OUTSIDE] = max(wall - sum(self_s.values()), 0.0)

    head = (arch, throughput.shape_name(shape), method)
    rows = []
    for part in [p for p, _ in PARTS] + [OUTSIDE]:
        t, f = self_s.get(part, 0.0), flops.get(part, 0.0)
        rate = f / t / 1e9 if f and t else None
        rows.append(head + (part, f"{t * 1e3:,.1f}", f"{t / wall:.1%}", f"{f / 1e9:,.2f}" if f else "—",
                            throughput.fmt_rate(rate), "—" if rate is None else f"{rate / peak:.1%}"))
    total = sum(flops.values())
    rows.append(head + ("**the step** (unprofiled)", f"{seconds * 1e3:,.1f}", "", f"{total / 1e9:,.2f}",
                        throughput.fmt_rate(total / seconds / 1e9), f"{total / seconds / 1e9 / peak:.1%}"))
    largest = sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]
    note = (f"- {' '.join(head)}, largest operators (self time per step): "
            + "; ".join(f"{name} {t * 1e3:,.1f} ms" for name, t in largest))
    return rows, note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N")
    p.add_argument("--archs", type=throughput.csv_choices("--archs", names.ARCHS),
                   default=("small_cnn", "preact_resnet18"), help="comma-separated (default small_cnn,preact_resnet18)")
    p.add_argument("--shapes", type=throughput.parse_shapes, default=((3, 32, 32),), help="default 3x32x32")
    p.add_argument("--methods", type=throughput.csv_choices("--methods", names.VICINAL_METHODS), default=("erm",),
                   help="comma-separated, among " + ", ".join(names.VICINAL_METHODS) + " (default erm)")
    p.add_argument("--batch-size", type=throughput.int_at_least(2), default=128, help="default 128")
    p.add_argument("--steps", type=throughput.int_at_least(1), default=3, help="profiled steps (default 3)")
    p.add_argument("--warmup", type=throughput.int_at_least(0), default=1, help="untimed steps first (default 1)")
    p.add_argument("--top", type=throughput.int_at_least(0), default=6,
                   help="largest operators named under the table, per profile (default 6)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="contiguous memory format (the trainer's default is channels_last)")
    p.add_argument("--threads", type=throughput.int_at_least(1), default=None, help="torch CPU threads")
    p.add_argument("--portable", action="store_true",
                   help="the portable kernels (oneDNN off, AVX2 kernels pinned), as the default profile runs")
    args = p.parse_args(argv)
    if args.portable:  # before the first tensor operation, which fixes torch's kernel set (as session.start)
        for key, value in CPU_KERNELS.items():
            os.environ.setdefault(key, value)
        torch.backends.mkldnn.enabled = False
    try:
        dev = resolve_device(args.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # what make_varmix_step reads besides the above: throughput.py's defaults
    defaults = throughput.get_args_parser().parse_args([])
    for key in ("optimizer", "num_classes", "amp", "latent_dim", "vae_width"):
        setattr(args, key, getattr(defaults, key))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peak_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    peak = throughput.matmul_peak(dev, peak_dtype)
    print(f"# varmix step profile: torch {torch.__version__}, device {dev}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch_size}, {args.steps} profiled step(s) after {args.warmup} warm-up, {args.optimizer}, "
          f"channels_last {args.channels_last}, bf16 autocast {dev.type == 'cuda'}"
          + (", portable kernels (oneDNN off, ATEN_CPU_CAPABILITY=avx2)" if args.portable else ""))
    print(f"peak: a large matmul runs at {peak:,.0f} GFLOP/s in {str(peak_dtype).removeprefix('torch.')} on {dev}")
    print()
    rows, notes = [], []
    for arch in args.archs:
        for shape in args.shapes:
            for method in args.methods:
                print(f"profiling {arch} {throughput.shape_name(shape)} {method} ...", file=sys.stderr)
                more, note = profile_step(method, arch, shape, args, dev, peak)
                rows += more
                notes.append(note)
    print(throughput.markdown_table(rows, HEADERS, NUMERIC))
    print()
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
