"""The study's own CPU work against the machine's limits, in one run: one markdown table and a per-layer roofline.

Measured side by side, in the pipeline's configuration (the default profile's models and batch sizes, the
portable kernels: ATEN_CPU_CAPABILITY=avx2, MKL_CBWR=AVX2 as ``session.CPU_KERNELS`` pins them, oneDNN off,
2 threads), beside the oneDNN kernels (``cpu_kernels: fast``) for reference:

- the small CNN's eval forward at the evaluation chapters' batch (``eval.batch_size``, 500) as
  ``robustness.corruption_grid`` ran it before ``varmix.learn.inference`` (the trained model in eval mode,
  ``no_grad``), under ``inference_mode``, as ``inference_copy`` makes it (2x2 max-pools as strided maxima:
  the same bits), that copy with eval-mode batch norm folded into the convolutions (``eval.fold_batch_norm``),
  and folded with each block's ReLU after its max-pool (the same values: max-pooling commutes with a ReLU;
  a quarter of the ReLU's work);
- the small CNN's training step at the profile's batch (128): the trainer's own ``train_step`` (ERM), as
  benchmarks/throughput.py builds it;
- the VAE's training step at the profile's VAE batch (32), plain and adversarial (the default profile's
  PGD), as ``learn.vae.train_vae``'s loop runs it (the batch's float conversion, ``vae_loss`` or
  ``adversarial_batch`` then ``vae_loss``, backward, Adam).

The peak is the matmul peak of benchmarks/throughput.py (a 4096² fp32 matmul, best of 10, before and after
the rows, the higher), measured in the same process under the same kernels. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, 2 per multiply-add) on each row's own
closure, as benchmarks/study_profile.py counts them. Each row is timed in ``--rounds`` rounds; within a round
every row runs once after the one before it (interleaved, so that a drift of the shared VM's speed hits all
rows alike), and the table shows the median over rounds and the rounds' spread.

The roofline: the memory bandwidth is a copy between two preallocated 256 MiB buffers (best of 10, read +
write counted), the peak the matmul's. Per layer of the eval forward (each leaf module timed alone on its
own input), the bound is max(FLOPs / peak, bytes / bandwidth), bytes = fp32 input + output + weights; the
portable convolution (``slow_conv2d``: im2col, then a GEMM) also writes and reads its column matrix, counted
in a second bound. The model's bound adds its layers' bounds. The training step's bound takes three times the
forward's layers (a backward computes the input and weight gradients: twice the forward's FLOPs, and reads
and writes about twice its tensors), an estimate. For the VAE, whose batch of 32 keeps every tensor small,
the floor is the step's operator count (aten operators, counted with a dispatch mode) times the time of one
small operator (an ``add`` of two 32-element tensors), measured in the same run.

    python benchmarks/roofline.py                     # 5-10 min on a 2-core EPYC (10 while shared)
    python benchmarks/roofline.py --out auto          # also writes benchmarks/results/roofline-cpu-<cpu>-<avx>-2threads.md
    python benchmarks/roofline.py --rounds 3 --quick  # smoke check: smaller batches, fewer repeats
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from varmix.pipeline.session import CPU_KERNELS  # noqa: E402  (no torch import: set the kernels first)

for _key, _value in CPU_KERNELS.items():
    os.environ.setdefault(_key, _value)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from study_profile import add_out_option, cpu_name, frozen, input_grad, write_out  # noqa: E402
from throughput import make_varmix_step, markdown_table, matmul_peak  # noqa: E402
from varmix.core import config  # noqa: E402
from varmix.learn.data import to_float  # noqa: E402
from varmix.learn.inference import inference_copy  # noqa: E402
from varmix.learn.models import build_model  # noqa: E402
from varmix.learn.vae import ConvVAE, adversarial_batch, vae_loss  # noqa: E402

SHAPE = (1, 28, 28)   # Fashion-MNIST, the study's dataset
NUM_CLASSES = 10
BANDWIDTH_BYTES = 256 * 2 ** 20  # per buffer: far beyond the 32 MiB L3 of the EPYCs measured here


# ----------------------------------------------------------------------------------------------
# the machine
def bandwidth(nbytes: int = BANDWIDTH_BYTES, reps: int = 10) -> float:
    """GB/s of ``dst.copy_(src)`` between two preallocated float32 buffers of ``nbytes`` (read + write
    counted), the best of ``reps`` after one untimed copy: the memory bandwidth the layers stream at."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best / 1e9


def op_seconds(n: int = 32, reps: int = 20_000) -> float:
    """Seconds per small operator: the median of five loops of ``reps`` out-of-place adds of two
    ``n``-element tensors (the dispatcher, the allocator and the kernel's launch, nearly no arithmetic)."""
    a, b = torch.ones(n), torch.ones(n)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            torch.add(a, b)
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


class _OpCount(TorchDispatchMode):
    """Counts the aten operators a closure dispatches (views and in-place ops included: each costs a call)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def op_count(fn: Callable[[], object]) -> int:
    with _OpCount() as mode:
        fn()
    return mode.count


def counted_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one ``fn()`` as FlopCounterMode counts them (convolutions and matmuls, 2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
# the rows
@dataclass
class Row:
    """One measured closure: ``fn()`` processes ``images`` images; ``fast``: with oneDNN on."""

    group: str
    name: str
    fn: Callable[[], object]
    images: int
    calls: int                      # timed calls per round
    fast: bool = False
    flops: float = 0.0              # per call
    count: Callable[[], float] | None = None  # FLOPs per call where FlopCounterMode cannot run fn itself
    same_bits: str = ""             # against the group's first row (the model before inference_copy)
    bound: float | None = None      # roofline bound, share of the peak
    times: list[float] = field(default_factory=list)  # seconds per image, one per round


def _kernels(fast: bool) -> None:
    torch.backends.mkldnn.enabled = fast


def relu_after_pool(model: nn.Module) -> nn.Module:
    """A copy of the small CNN with each block's ``ReLU, MaxPool2d`` as ``MaxPool2d, ReLU``: the same
    values (max commutes with a monotone map), the ReLU on a quarter of the elements."""
    model = copy.deepcopy(model)
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], nn.ReLU) and isinstance(seq[i + 1], nn.MaxPool2d):
                    seq[i], seq[i + 1] = seq[i + 1], seq[i]
    return model


def classifier(gen: torch.Generator) -> nn.Module:
    """The default profile's small CNN in eval mode, its batch norms holding non-trivial statistics (a fold
    of fresh ones would be nearly the identity; the speed does not depend on the values)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", SHAPE[0], NUM_CLASSES, SHAPE[1], [0.5], [0.25])
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def eval_rows(params: config.Params, batch: int, calls: int) -> tuple[list[Row], nn.Module, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    model = classifier(gen)
    fast = inference_copy(model)
    folded = inference_copy(model, fold=True)
    swapped = relu_after_pool(folded)
    x = to_float(torch.randint(0, 256, (batch, *SHAPE), generator=gen, dtype=torch.uint8))

    def under(ctx, m):
        def fn():
            with ctx():
                return m(x)
        return fn

    variants = [("before: eval mode, no_grad", under(torch.no_grad, model), False),
                ("inference_mode", under(torch.inference_mode, model), False),
                ("inference_copy: 2×2 max-pool as strided maxima", under(torch.no_grad, fast), False),
                ("inference_copy, batch norm folded (eval.fold_batch_norm)", under(torch.no_grad, folded), False),
                ("folded, ReLU after max-pool", under(torch.no_grad, swapped), False),
                ("oneDNN (fast), before", under(torch.no_grad, model), True),
                ("oneDNN (fast), folded", under(torch.no_grad, folded), True)]
    group = f"small CNN eval forward, batch {batch}"
    rows = [Row(group, name, fn, batch, calls, fast) for name, fn, fast in variants]
    return rows, model, x


def train_rows(params: config.Params, batch: int, calls: int) -> list[Row]:
    rows = []
    for name, fast, channels_last in (("today: train_step, ERM", False, False),
                                      ("oneDNN (fast), channels_last", True, True)):
        args = SimpleNamespace(optimizer=params.train.optimizer, batch_size=batch, amp=False,
                               channels_last=channels_last, num_classes=NUM_CLASSES)
        _kernels(fast)
        step, _ = make_varmix_step("erm", params.train.arch, SHAPE, args, torch.device("cpu"))
        rows.append(Row(f"small CNN training step, batch {batch}", name, step, batch, calls, fast))
    return rows


def vae_step(cfg: config.VAEConfig, adversarial: bool) -> tuple[Callable[[], None], Callable[[], float]]:
    """One step of train_vae's loop on a fixed batch of random uint8 images (the speed does not depend on
    the pixels), with its own generators; and its FLOPs: FlopCounterMode's module tracker refuses the
    attack's ``autograd.grad`` on a leaf, so the attack's share is counted as study_profile counts it (each
    PGD step a forward and a backward of vae_loss to the input)."""
    gen = torch.Generator().manual_seed(0)
    attack_gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    vae = ConvVAE(SHAPE[0], SHAPE[1], cfg.latent_dim, cfg.width).train()
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    xb = torch.randint(0, 256, (cfg.batch_size, *SHAPE), generator=gen, dtype=torch.uint8)

    def step():
        x = to_float(xb.clone())
        if adversarial:
            loss, _ = vae_loss(vae, adversarial_batch(vae, x, cfg, attack_gen), cfg, gen, target=x)
        else:
            loss, _ = vae_loss(vae, x, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain_step():
        opt.zero_grad(set_to_none=True)
        vae_loss(vae, to_float(xb.clone()), cfg, gen)[0].backward()

    def count() -> float:
        flops = counted_flops(plain_step)
        if adversarial:
            x = to_float(xb.clone())
            with frozen(vae):
                flops += cfg.adversarial.steps * counted_flops(
                    lambda: input_grad(lambda xa: vae_loss(vae, xa, cfg, gen, target=x)[0], x))
        return flops
    return step, count


def vae_rows(params: config.Params, calls: int) -> list[Row]:
    rows = []
    for kind in ("plain", "adversarial"):
        cfg = params.vae_of(kind)
        group = f"VAE training step ({kind}), batch {cfg.batch_size}"
        for name, fast in (("today", False), ("oneDNN (fast)", True)):
            step, count = vae_step(cfg, kind == "adversarial")
            rows.append(Row(group, name, step, cfg.batch_size, calls, fast, count=count))
    return rows


def run_rounds(rows: list[Row], rounds: int) -> None:
    """``rounds`` rounds; in each, every row: one untimed call, then ``calls`` timed ones."""
    for _ in range(rounds):
        for r in rows:
            _kernels(r.fast)
            r.fn()
            start = time.perf_counter()
            for _ in range(r.calls):
                r.fn()
            r.times.append((time.perf_counter() - start) / (r.calls * r.images))
    _kernels(False)


# ----------------------------------------------------------------------------------------------
# the roofline of a model, layer by layer
@dataclass
class Layer:
    name: str
    out_shape: tuple
    flops: float
    bytes: float        # fp32 input + output + weights
    im2col: float       # the portable convolution's column matrix, written and read (0 for other layers)
    seconds: float      # median of the timed calls of the layer alone, portable kernels

    def bound(self, peak: float, bw: float, with_im2col: bool = False) -> float:
        moved = self.bytes + (self.im2col if with_im2col else 0.0)
        return max(self.flops / (peak * 1e9), moved / (bw * 1e9))


def layers_of(model: nn.Module, x: torch.Tensor, reps: int) -> list[Layer]:
    """Every leaf module of ``model``'s forward on ``x`` (Identity, a folded batch norm, left out), in call
    order, with its counted FLOPs, the bytes it must move and its time alone on its own input (median of
    ``reps``, portable kernels, no_grad)."""
    calls: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, name=name: calls.append((name, mod, inp[0])))
             for name, m in model.named_modules() if not list(m.children()) and not isinstance(m, nn.Identity)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = []
    with torch.no_grad():
        for name, mod, inp in calls:
            inp = inp.clone()  # an in-place ReLU must not change the next call's input
            result = mod(inp.clone())
            weights = sum(p.numel() for p in mod.parameters())
            moved = 4.0 * (inp.numel() + result.numel() + weights)
            cols = 0.0
            if isinstance(mod, nn.Conv2d):  # slow_conv2d's im2col: [Cin * kh * kw, Hout * Wout] per image
                kh, kw = mod.kernel_size
                cols = 2 * 4.0 * result.shape[0] * mod.in_channels * kh * kw * result.shape[2] * result.shape[3]
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                mod(inp)
                times.append(time.perf_counter() - start)
            out.append(Layer(f"{name} {type(mod).__name__}", tuple(result.shape[1:]), counted_flops(lambda: mod(inp)),
                             moved, cols, statistics.median(times)))
    return out


def model_bound(layers: list[Layer], peak: float, bw: float, with_im2col: bool, skip=()) -> float:
    """The model's roofline: its counted FLOPs over the sum of its layers' bounds, as a share of the peak;
    layers whose type is in ``skip`` (folded away) count neither time nor bytes."""
    kept = [layer for layer in layers if not any(s in layer.name for s in skip)]
    seconds = sum(layer.bound(peak, bw, with_im2col) for layer in kept)
    return sum(layer.flops for layer in kept) / seconds / (peak * 1e9)


# ----------------------------------------------------------------------------------------------
def fmt(v: float, spec: str) -> str:
    return format(v, spec)


def main_table(rows: list[Row], peak: float) -> str:
    headers = ("measured", "kernels", "img/s", "rounds' range, img/s", "GFLOP/s", "of peak",
               "roofline bound, of peak", "bits as before")
    out = []
    for r in rows:
        per_image = statistics.median(r.times)
        rate = 1 / per_image
        gflops = r.flops / r.images * rate / 1e9
        lo, hi = 1 / max(r.times), 1 / min(r.times)
        out.append((f"{r.group}: {r.name}", "oneDNN" if r.fast else "portable", f"{rate:,.0f}",
                    f"{lo:,.0f}–{hi:,.0f}", f"{gflops:,.1f}", f"{gflops / peak:.1%}",
                    "" if r.bound is None else f"{r.bound:.0%}", r.same_bits))
    return markdown_table(out, headers, set(headers[2:7]))


def layer_table(layers: list[Layer], peak: float, bw: float, batch: int) -> str:
    headers = ("layer", "output (per image)", "MFLOP", "MB moved", "FLOP/byte", "bound, ms",
               "bound with im2col, ms", f"measured alone, ms (batch {batch})", "of its bound")
    rows = []
    for layer in layers:
        b = layer.bound(peak, bw)
        rows.append((layer.name, "×".join(map(str, layer.out_shape)), f"{layer.flops / 1e6:,.0f}",
                     f"{layer.bytes / 1e6:,.1f}", f"{layer.flops / layer.bytes:.1f}", f"{b * 1e3:.2f}",
                     f"{layer.bound(peak, bw, True) * 1e3:.2f}", f"{layer.seconds * 1e3:.2f}",
                     f"{b / layer.seconds:.0%}"))
    return markdown_table(rows, headers, set(headers[2:]))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the table shows medians (default 7)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's cpu_threads, 2)")
    p.add_argument("--quick", action="store_true", help="smoke check: batches of 16, one call per round")
    add_out_option(p, "roofline")
    return p


def main(argv: list[str] | None = None) -> int:
    p = get_args_parser()
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds {args.rounds}: expected at least 1")
    params = config.load_params(ROOT / "params.yaml", {"profile": "default"})
    threads = args.threads or params.selected.cpu_threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    _kernels(False)
    eval_batch = 16 if args.quick else params.eval.batch_size
    train_batch = 16 if args.quick else params.train.batch_size
    calls = (1, 1, 1) if args.quick else (3, 5, 10)

    cpu = torch.device("cpu")
    load_start = os.getloadavg()[0]  # how busy the machine was: the table says it
    peak_before = matmul_peak(cpu, torch.float32)
    bw = bandwidth()
    op_s = op_seconds()

    ev, model, x = eval_rows(params, eval_batch, calls[0])
    rows = ev + train_rows(params, train_batch, calls[1]) + vae_rows(params, calls[2])
    for r in rows:
        _kernels(r.fast)
        r.flops = r.count() if r.count is not None else counted_flops(r.fn)
    _kernels(False)
    today, folded = ev[0].fn(), ev[3].fn()
    for r in ev:  # the logits' bits against the model's (the oneDNN rows run their own convolutions)
        _kernels(r.fast)
        out = r.fn()
        r.same_bits = "yes" if torch.equal(out, today) else "no"
        if "ReLU after" in r.name:
            r.same_bits += f" ({'the same' if torch.equal(out, folded) else 'other'} bits as folded)"
    _kernels(False)
    run_rounds(rows, args.rounds)
    peak = max(peak_before, matmul_peak(cpu, torch.float32))

    layers = layers_of(model, x, 3 if args.quick else 7)
    folded_layers = layers_of(inference_copy(model, fold=True), x, 3 if args.quick else 7)
    bound_today = model_bound(layers, peak, bw, with_im2col=True)
    bound_folded = model_bound(layers, peak, bw, with_im2col=True, skip=("BatchNorm2d",))
    for r in ev:
        r.bound = bound_folded if "fold" in r.name else bound_today
    train_layers = layers_of(build_model("small_cnn", 1, NUM_CLASSES, 28, [0.5], [0.25]).eval(),
                             x[:train_batch].contiguous(), 3)
    for r in rows:
        if r.group.startswith("small CNN training"):
            r.bound = model_bound(train_layers, peak, bw, with_im2col=not r.fast)
    vae_floor = {}
    for r in rows:
        if r.group.startswith("VAE"):
            cfg = params.vae
            torch.manual_seed(0)
            vae = ConvVAE(SHAPE[0], SHAPE[1], cfg.latent_dim, cfg.width).eval()
            vae_layers = layers_of(vae, x[:cfg.batch_size].contiguous(), 3)
            roof = sum(layer.bound(peak, bw, not r.fast) for layer in vae_layers)
            _kernels(r.fast)
            ops = op_count(r.fn)
            _kernels(False)
            floor = ops * op_s
            vae_floor[f"{r.group}: {r.name}"] = (ops, floor, roof)
            # the step's FLOPs over its operators' floor plus three forwards' roofline (the attack's steps:
            # a forward and a backward each, so more forwards: the floor dominates either way)
            passes = r.flops / max(sum(layer.flops for layer in vae_layers), 1.0)
            r.bound = r.flops / (floor + passes * roof) / (peak * 1e9)

    name, avx512 = cpu_name()
    machine = f"{name} ({'with' if avx512 else 'no'} AVX-512), {threads} threads"
    command = " ".join(["python benchmarks/roofline.py", *(sys.argv[1:] if argv is None else argv)])
    ideal = model_bound(layers, peak, bw, with_im2col=False)
    ideal_folded = model_bound(layers, peak, bw, with_im2col=False, skip=("BatchNorm2d",))
    lines = [
        "# The study's CPU work against the machine's peak (profile default, portable kernels)", "",
        f"`{command}`", "",
        f"Machine: {machine}; torch {torch.__version__}; ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']}, "
        f"MKL_CBWR={os.environ['MKL_CBWR']}. The 1-minute load average was {load_start:.1f} when the run "
        f"started and {os.getloadavg()[0]:.1f} at its end, on {os.cpu_count()} CPUs (above the threads used: "
        f"other work shared the machine). Rates are medians of {args.rounds} interleaved rounds, and the range "
        f"column shows how far single rounds strayed.", "",
        f"- peak: a 4096² fp32 matmul, {peak:,.0f} GFLOP/s (best of 10; {peak_before:,.0f} before the rows, "
        f"the higher kept)",
        f"- memory bandwidth: a copy between two 256 MiB buffers, {bw:,.1f} GB/s (read + write); ridge point "
        f"{peak / bw:.1f} FLOP/byte",
        f"- one small operator (an add of two 32-element tensors): {op_s * 1e6:.1f} µs", "",
        main_table(rows, peak), "",
        "Roofline bound: the model's counted FLOPs over the sum of its layers' bounds, each max(FLOPs / peak, "
        "bytes / bandwidth); the portable rows count slow_conv2d's column matrix (im2col) among the bytes. "
        f"Eval forward without im2col traffic: {ideal:.0%} today, {ideal_folded:.0%} folded. The training "
        "step's bound is an estimate (backward = twice the forward's FLOPs and traffic). The VAE rows' bound is "
        "their FLOPs over the operators' floor (aten operators × one small operator's time) plus the "
        "roofline of as many forwards as the step's FLOPs make (backward twice the forward, as above):",
        "", *[f"- {g}: {ops:,} aten operators per step, floor {floor * 1e3:.2f} ms; one forward's roofline "
              f"{roof * 1e3:.2f} ms" for g, (ops, floor, roof) in vae_floor.items()], "",
        f"## The eval forward, layer by layer (portable kernels, batch {eval_batch}, each layer alone)", "",
        layer_table(layers, peak, bw, eval_batch), "",
        "The same, as the evaluation chapters run it with `eval.fold_batch_norm` on (`inference_copy(model, "
        "fold=True)`: batch norm folded, the max-pools as strided maxima):", "",
        layer_table(folded_layers, peak, bw, eval_batch), "",
        "The input's normalisation, the 2×2 adaptive average pool and the flatten run outside the modules "
        "(a few % of the forward's bytes) and are not listed.", ""]
    text = "\n".join(lines)
    print(text)
    write_out(text, args.out, threads, "roofline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
