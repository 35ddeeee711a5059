"""Training throughput (images/s) of every method on the current device.

Runs the trainer's own step (``varmix.train.train_step``: augmentation, mixing, forward, backward,
optimiser step) on synthetic uint8 images kept on the device, so the numbers are those of
``train_classifier`` minus evaluation and checkpointing. Warm-up steps are excluded; on CUDA the clock is
read after ``torch.cuda.synchronize``. mixup_r and varmixup use an untrained ConvVAE of the given size
(its speed does not depend on its weights).

    python benchmarks/train_throughput.py                       # small_cnn, 1x28x28, CPU ~1 min
    python benchmarks/train_throughput.py --arch resnet34 --shape 3x32x32 --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from varmix import config, mixing  # noqa: E402
from varmix.models import build_model  # noqa: E402
from varmix.train import crop_padding, make_optimizer, resolve_device, train_step  # noqa: E402
from varmix.vae import ConvVAE  # noqa: E402


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected CxHxW, e.g. 1x28x28 or 3x32x32") from None
    if h != w or c < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected square images CxSxS")
    return c, h, w


def bench_method(method, args, shape, dev) -> dict:
    c, s, _ = shape
    cfg = config.TrainConfig(arch=args.arch, optimizer=args.optimizer, batch_size=args.batch_size,
                             amp=args.amp, channels_last=args.channels_last)
    torch.manual_seed(0)
    model = build_model(args.arch, c, args.num_classes, s, [0.5] * c, [0.25] * c)
    model.to(dev, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    optimizer, _ = make_optimizer(cfg, model, dev)
    vae = None
    if method in ("mixup_r", "varmixup"):
        vae = ConvVAE(c, s, latent_dim=args.latent_dim, width=args.vae_width).to(dev).eval()
        for p in vae.parameters():
            p.requires_grad_(False)
    alpha = 2.0 if method == "manifold_mixup" else 1.0
    mixer = mixing.make_mixer(method, num_classes=args.num_classes, alpha=alpha, vae=vae, layers=(0, 1, 2))
    gen = torch.Generator().manual_seed(0)
    n = args.batch_size * 4  # a small on-device "dataset" indexed like the trainer does
    x_all = torch.randint(0, 256, (n, c, s, s), generator=gen, dtype=torch.uint8).to(dev)
    y_all = torch.randint(0, args.num_classes, (n,), generator=gen).to(dev)
    amp = args.amp and dev.type == "cuda"
    pad = crop_padding(s)

    def run(steps):
        loss = None
        for _ in range(steps):
            idx = torch.randint(0, n, (args.batch_size,), generator=gen).to(dev)
            loss = train_step(model, optimizer, mixer, x_all[idx], y_all[idx], gen, pad=pad, amp=amp,
                              channels_last=args.channels_last)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return loss

    model.train()
    run(args.warmup)
    t0 = time.perf_counter()
    loss = run(args.steps)
    seconds = time.perf_counter() - t0
    return {"method": method, "images_per_s": args.steps * args.batch_size / seconds,
            "ms_per_step": 1000 * seconds / args.steps, "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="small_cnn", choices=config.ARCHS)
    p.add_argument("--shape", default="1x28x28", type=parse_shape, help="CxHxW (default 1x28x28)")
    p.add_argument("--batch-size", default=128, type=int)
    p.add_argument("--steps", default=10, type=int, help="timed steps per method")
    p.add_argument("--warmup", default=2, type=int, help="untimed steps per method before timing")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--methods", default=",".join(config.METHODS), help="comma-separated subset")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--num-classes", default=10, type=int)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="fp32 on CUDA (default: bf16 autocast)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--latent-dim", default=16, type=int, help="VAE latent size for mixup_r/varmixup")
    p.add_argument("--vae-width", default=32, type=int, help="VAE base width for mixup_r/varmixup")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in config.METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; expected among {', '.join(config.METHODS)}")
    if args.batch_size < 2 or args.steps < 1 or args.warmup < 0:
        p.error("--batch-size must be >= 2, --steps >= 1 and --warmup >= 0")
    try:
        dev = resolve_device(args.device)
    except ValueError as exc:
        p.error(str(exc))

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"arch {args.arch}, images {'x'.join(map(str, args.shape))}, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, {args.optimizer}, device {dev} ({name}), "
          f"amp {args.amp and dev.type == 'cuda'}, channels_last {args.channels_last}, torch {torch.__version__}")
    print(f"{'method':<16}{'images/s':>12}{'ms/step':>10}{'loss':>8}")
    for method in methods:
        r = bench_method(method, args, args.shape, dev)
        print(f"{r['method']:<16}{r['images_per_s']:>12.1f}{r['ms_per_step']:>10.1f}{r['loss']:>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
