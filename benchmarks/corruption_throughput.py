"""Throughput of varmix.corruptions: images/s per corruption at severity 3, and the estimated time of the
full 15-corruption x 5-severity suite on 10,000 images.

    python benchmarks/corruption_throughput.py --shape 3x32x32 --n 1000 --device cpu

Inputs are uniform random images (every op's cost is data-independent). Each corruption runs once on one
batch to warm up (cached matrices, allocator, CUDA kernels), then is timed over --n images in batches of --batch; on
CUDA the device is synchronised before reading the clock.
"""

from __future__ import annotations

import argparse
import time

import torch

from varmix.config import BENCHMARK_CORRUPTIONS, CORRUPTIONS
from varmix.corruptions import corrupt

# Quoted from /work/shared/reference.md (measured for the project, not re-measured by this script): the
# numpy reference (PyPI imagecorruptions) takes ~35 ms per 32x32 image through all 19 corruptions, at one
# severity, on one core.
REFERENCE_MS_PER_IMAGE_ALL19 = 35.0
SUITE_IMAGES = 10_000


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected CxHxW, e.g. 3x32x32") from None
    if c not in (1, 3) or h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected C = 1 or 3 and H, W >= 8")
    return c, h, w


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_corruption(name: str, x: torch.Tensor, batch: int, severity: int, seed: int) -> float:
    """Seconds to corrupt all of x (on its device) in batches."""
    gen = torch.Generator().manual_seed(seed)
    corrupt(x[:batch], name, severity, gen)  # warm-up: cached matrices, allocator, CUDA kernels
    sync(x.device)
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        corrupt(x[i: i + batch], name, severity, gen)
    sync(x.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=parse_shape, default=(3, 32, 32), help="CxHxW (default 3x32x32)")
    ap.add_argument("--n", type=int, default=1000, help="images timed per corruption (default 1000)")
    ap.add_argument("--batch", type=int, default=500, help="images per call (default 500)")
    ap.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch < 1:
        ap.error("--n and --batch must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    c, h, w = args.shape
    x = torch.rand(args.n, c, h, w, generator=torch.Generator().manual_seed(args.seed)).to(device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"corruption throughput: {args.n} images {c}x{h}x{w}, batch {args.batch}, severity {args.severity}, "
          f"device {name}, torch {torch.__version__}")
    print(f"{'corruption':<20}{'images/s':>12}{'ms/image':>11}")
    seconds = {}
    for cname in CORRUPTIONS:
        t = time_corruption(cname, x, args.batch, args.severity, args.seed)
        seconds[cname] = t
        tag = "" if cname in BENCHMARK_CORRUPTIONS else "  (extra)"
        print(f"{cname:<20}{args.n / t:>12.0f}{1000 * t / args.n:>11.3f}{tag}")

    per_image_15 = sum(seconds[n] for n in BENCHMARK_CORRUPTIONS) / args.n
    per_image_19 = sum(seconds.values()) / args.n
    suite = per_image_15 * 5 * SUITE_IMAGES
    print(f"\nall 19 corruptions, one severity: {1000 * per_image_19:.3f} ms/image")
    print(f"estimated full suite (15 corruptions x 5 severities x {SUITE_IMAGES:,} images, timed at severity "
          f"{args.severity}): {suite:.0f} s = {suite / 60:.1f} min")
    ref_suite = REFERENCE_MS_PER_IMAGE_ALL19 / 1000 * 5 * SUITE_IMAGES
    speedup = REFERENCE_MS_PER_IMAGE_ALL19 / (1000 * per_image_19)
    print(f"numpy reference (imagecorruptions; a quoted figure from reference.md, not measured by this script): "
          f"~{REFERENCE_MS_PER_IMAGE_ALL19:.0f} ms/image through all 19, {speedup:.1f}x this run's "
          f"{1000 * per_image_19:.1f} ms; ~{ref_suite / 60:.0f} min for 19 x 5 severities x {SUITE_IMAGES:,} "
          f"images on one core")


if __name__ == "__main__":
    main()
