"""Throughput of varmix against reference-style baselines, measured in the same run: one markdown table.

Training (rows "train"): for every architecture x image shape x method, images/s of

- varmix: the trainer's own step, ``varmix.learn.train.train_step`` (batched augmentation on the device, the
  mixer of ``varmix.learn.mixing.make_mixer``, forward, soft-target loss, backward, optimiser step from
  ``make_optimizer``), with the uint8 images resident on the device, channels_last (the trainer's default,
  ``--no-channels-last`` to switch off) and, on CUDA only, bf16 autocast and fused optimisers. These are
  the numbers of ``train_classifier`` minus evaluation and checkpointing.
- baseline: the loop of facebookresearch/mixup-cifar10's train.py: a ``torch.utils.data.DataLoader``
  (shuffle, ``--workers``, default 0 = batches are loaded in the main process) over a ``Dataset`` of uint8
  images served as PIL images through per-sample torchvision transforms (RandomCrop with padding,
  RandomHorizontalFlip, ToTensor, Normalize); the batch is copied to the device; one lambda from
  ``np.random.beta`` and a ``torch.randperm`` partner per batch; loss ``lam * CE(y_a) + (1 - lam) *
  CE(y_b)``; the reference's per-step ``loss.item()`` and accuracy read-back; fp32 (PyTorch's defaults,
  under which cuDNN convolutions may use TF32), contiguous memory, plain (non-fused) optimiser. CutMix
  follows clovaai/CutMix-PyTorch (numpy box centre), Manifold Mixup Verma et al. (numpy layer draw).
  mixup_r / varmixup run the VAE with autograd on, as a script that loads a VAE and calls it inline
  would: the graph is recorded and backward also runs through the VAE.

Both paths use the same architecture (``varmix.learn.models.build_model``), batch size, optimiser settings and
synthetic data (random uint8 images and labels, fixed seed), so no dataset is needed. ``speedup`` is
varmix img/s / baseline img/s; ``cost vs ERM`` is a method's time per image over ERM's, on the same path
(ERM is therefore always measured). mixup_r and varmixup use an untrained ``ConvVAE`` (its speed does not
depend on its weights); manifold_mixup uses alpha 2, the others alpha 1 (the value does not change the
cost). Warm-up steps are excluded from the clock; on CUDA the device is synchronised before every clock
read, and ``cudnn.benchmark`` is on for both paths (both the trainer and mixup-cifar10 set it).

Corruptions (rows "corrupt"): images/s of ``varmix.evaluate.corruptions.corrupt`` (batched torch ops on float
images on the device) per corruption over severities 1-5, the 15 x 5 benchmark suite as a whole, and,
for a representative few corruptions, a reference-style baseline: the per-image Python loop of
hendrycks/robustness make_cifar_c.py (uint8 image -> its convert_img, ToTensor then ToPILImage -> numpy /
scipy / PIL -> uint8), always on the CPU in one process. The baseline follows that loop and the libraries'
algorithms, not the script's exact corruption code (see ``REFERENCE_CORRUPTIONS``). Each corruption is timed
in ``--repeats`` rounds; within a round the two paths run back to back at each severity, so that a ratio
compares them on the same machine state (this VM's speed drifts by up to 2x over seconds), and the table
shows medians. The loop's convert_img share is timed image by image and shown on its own row and in a note.

    python benchmarks/throughput.py --quick                   # smoke check, ~80 s on a 2-core CPU
    python benchmarks/throughput.py                           # full table; 2-core EPYC (AVX2) ~19 min (2 timed steps)
    python benchmarks/throughput.py --steps 1                 # full table; 2-core CPU ~13 min
    python benchmarks/throughput.py --device cuda             # full table on a GPU (30 timed steps)
    python benchmarks/throughput.py --archs small_cnn --shapes 1x28x28 --only train --steps 10
    python benchmarks/throughput.py --only corrupt --shapes 3x32x32 --corruption-images 1000
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from varmix.core import (
    config,  # noqa: E402
    names,
)
from varmix.core.names import BENCHMARK_CORRUPTIONS, CORRUPTIONS  # noqa: E402
from varmix.evaluate.corruptions import CONSTANTS, corrupt  # noqa: E402
from varmix.learn import mixing
from varmix.learn.models import build_model  # noqa: E402
from varmix.learn.train import crop_padding, make_optimizer, resolve_device, train_step  # noqa: E402
from varmix.learn.vae import CHANNELS, IMAGE_SIZES, ConvVAE  # noqa: E402

try:  # skimage.filters.gaussian, which make_cifar_c calls, is scipy.ndimage.gaussian_filter underneath
    from scipy.ndimage import gaussian_filter
except ImportError:  # pragma: no cover - scipy is a varmix dependency
    gaussian_filter = None

DEFAULT_ARCHS = ("resnet34", "preact_resnet18")
DEFAULT_SHAPES = ((3, 32, 32), (1, 28, 28))
# Timed steps / warm-up steps per measurement. A 128-image ResNet-34 step takes ~9 s on 2 CPU cores
# (3x32x32; PreAct ResNet-18 about half that), so the 48 CPU measurements of the full table take ~16 min.
DEVICE_DEFAULTS = {"cpu": {"steps": 2, "warmup": 1}, "cuda": {"steps": 30, "warmup": 5}}
QUICK = {"batch_size": 16, "steps": 1, "warmup": 1, "corruption_images": 32, "corruption_batch": 32, "repeats": 1}
SUITE_IMAGES = 10_000  # the CIFAR-10-C test set, for the suite's time estimate
MANIFOLD_ALPHA = 2.0   # Verma et al.'s recommendation; every other method uses alpha 1


# FLOPs per trained image of the varmix step, per (method, arch, shape); filled by varmix_train_seconds
FLOPS_PER_IMAGE: dict = {}


def matmul_peak(dev: torch.device, dtype: torch.dtype) -> float:
    """GFLOP/s of a large square matmul (the hardware's practical limit for dense work): n = 4096 on the
    CPU, 8192 on CUDA; the best of 10 timed products after two untimed ones. (On the 2-core EPYC, 3 products
    gave anything from 103 to 164 GFLOP/s from one run to the next; main() also measures it before and after
    the training rows and keeps the higher.)"""
    n = 8192 if dev.type == "cuda" else 4096
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev, dtype)
    b = torch.randn(n, n, generator=gen).to(dev, dtype)
    reps = 10
    torch.mm(a, b)
    torch.mm(a, b)
    best = math.inf
    for _ in range(reps):
        best = min(best, timed(lambda: torch.mm(a, b), 0, 1, dev))
    return 2 * n ** 3 / best / 1e9


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(step, warmup: int, steps: int, dev: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    sync(dev)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(dev)
    return time.perf_counter() - start


def make_vae(c: int, s: int, args, dev: torch.device) -> ConvVAE:
    return ConvVAE(c, s, latent_dim=args.latent_dim, width=args.vae_width).to(dev).eval()


def alpha_of(method: str) -> float:
    return MANIFOLD_ALPHA if method == "manifold_mixup" else 1.0


# ----------------------------------------------------------------------------------------------
# varmix: the trainer's step on device-resident data
def make_varmix_step(method: str, arch: str, shape, args, dev: torch.device):
    """The trainer's step for ``method`` on ``arch`` (a fresh seeded model, optimiser and mixer, a small
    on-device batch source): returns (step, losses), step() running one ``train_step`` and appending its
    loss to losses. benchmarks/step_profile.py profiles the same closure."""
    c, s, _ = shape
    cfg = config.TrainConfig(arch=arch, optimizer=args.optimizer, batch_size=args.batch_size,
                             amp=args.amp, channels_last=args.channels_last)
    torch.manual_seed(0)
    model = build_model(arch, c, args.num_classes, s, [0.5] * c, [0.25] * c)
    model.to(dev, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    optimizer, _ = make_optimizer(cfg, model, dev)
    vae = None
    if method in ("mixup_r", "varmixup"):
        vae = make_vae(c, s, args, dev)
        for p in vae.parameters():  # the trainer's VAE is frozen
            p.requires_grad_(False)
    mixer = mixing.make_mixer(method, num_classes=args.num_classes, alpha=alpha_of(method), vae=vae,
                              layers=cfg.manifold_layers)
    gen = torch.Generator().manual_seed(0)
    n = args.batch_size * 4  # a small on-device "dataset", indexed like the trainer does
    x_all = torch.randint(0, 256, (n, c, s, s), generator=gen, dtype=torch.uint8).to(dev)
    y_all = torch.randint(0, args.num_classes, (n,), generator=gen).to(dev)
    amp = cfg.amp and dev.type == "cuda"
    pad = crop_padding(s)
    losses = []

    def step():
        idx = torch.randint(0, n, (args.batch_size,), generator=gen).to(dev)
        losses.append(train_step(model, optimizer, mixer, x_all[idx], y_all[idx], gen, pad=pad, amp=amp,
                                 channels_last=cfg.channels_last))

    model.train()
    return step, losses


def varmix_train_seconds(method: str, arch: str, shape, args, dev: torch.device) -> float:
    step, losses = make_varmix_step(method, arch, shape, args, dev)
    seconds = timed(step, args.warmup, args.steps, dev)
    _check_finite(losses[-1].item(), "varmix", method, arch)
    # One more step, untimed, under torch's FLOP counter: every matmul/convolution of the step (forward,
    # backward, the frozen VAE of mixup_r/varmixup included), counted as 2 FLOPs per multiply-add.
    with FlopCounterMode(display=False) as counter:
        step()
    FLOPS_PER_IMAGE[method, arch, shape] = counter.get_total_flops() / args.batch_size
    return seconds


# ----------------------------------------------------------------------------------------------
# baseline: facebookresearch/mixup-cifar10's loop (DataLoader + per-sample PIL transforms, fp32)
class SyntheticImages(torch.utils.data.Dataset):
    """Random uint8 images served like torchvision's CIFAR10 / FashionMNIST: the image is kept as a numpy
    HWC (or HW) array, ``__getitem__`` makes a PIL image and applies the transform."""

    def __init__(self, n: int, shape, num_classes: int, transform, seed: int = 0):
        c, s, _ = shape
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (n, s, s, c) if c == 3 else (n, s, s), dtype=np.uint8)
        self.targets = rng.integers(0, num_classes, n).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def rand_bbox(size, lam: float):
    """clovaai/CutMix-PyTorch's box: side sqrt(1 - lam), centre from np.random, clipped."""
    w, h = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = np.random.randint(w), np.random.randint(h)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h)
    return bbx1, bby1, bbx2, bby2


def baseline_train_seconds(method: str, arch: str, shape, args, dev: torch.device) -> float:
    c, s, _ = shape
    mean, std = [0.5] * c, [0.25] * c
    transform = transforms.Compose([
        transforms.RandomCrop(s, padding=crop_padding(s)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    torch.manual_seed(0)
    np.random.seed(0)
    n_batches = args.warmup + args.steps
    loader = torch.utils.data.DataLoader(
        SyntheticImages(args.batch_size * n_batches, shape, args.num_classes, transform),
        batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
    # The transform normalises, so the model's own input normalisation is the identity here.
    model = build_model(arch, c, args.num_classes, s, [0.0] * c, [1.0] * c).to(dev)
    cfg = config.TrainConfig()  # optimiser hyper-parameters and mixing layers, as the varmix path uses
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    criterion = nn.CrossEntropyLoss()
    vae = make_vae(c, s, args, dev) if method in ("mixup_r", "varmixup") else None  # requires_grad as loaded
    mean_t = torch.tensor(mean, device=dev).view(1, c, 1, 1)
    std_t = torch.tensor(std, device=dev).view(1, c, 1, 1)
    alpha = alpha_of(method)
    batches = iter(loader)
    stats = {"loss": 0.0, "correct": 0.0, "total": 0}

    def step():
        inputs, targets = next(batches)
        inputs, targets = inputs.to(dev), targets.to(dev)
        lam, index, mix_layer = 1.0, None, None
        if method != "erm":
            lam = np.random.beta(alpha, alpha)
            index = torch.randperm(inputs.size(0)).to(dev)
        if method == "mixup":
            inputs = lam * inputs + (1 - lam) * inputs[index, :]
        elif method == "cutmix":
            bbx1, bby1, bbx2, bby2 = rand_bbox(inputs.size(), lam)
            inputs[:, :, bbx1:bbx2, bby1:bby2] = inputs[index, :, bbx1:bbx2, bby1:bby2]
            lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (inputs.size(-1) * inputs.size(-2)))
        elif method == "manifold_mixup":
            mix_layer = int(np.random.choice(cfg.manifold_layers))  # Verma et al.: a layer per batch
        elif method in ("mixup_r", "varmixup"):  # the VAE works on [0, 1] images: undo Normalize, redo it
            pixels = inputs * std_t + mean_t
            mu, _ = vae.encode(pixels)
            if method == "mixup_r":
                recon = vae.decode(mu)
                pixels = lam * recon + (1 - lam) * recon[index, :]
            else:
                pixels = vae.decode(lam * mu + (1 - lam) * mu[index, :])
            inputs = (pixels - mean_t) / std_t
        targets_a, targets_b = targets, (None if index is None else targets[index])
        outputs = model(inputs, mix_layer=mix_layer, lam=lam if mix_layer is not None else None,
                        perm=index if mix_layer is not None else None)
        _, predicted = torch.max(outputs.data, 1)
        if index is None:  # erm: the plain loop
            loss = criterion(outputs, targets)
            correct = predicted.eq(targets).cpu().sum().float()
        else:
            loss = lam * criterion(outputs, targets_a) + (1 - lam) * criterion(outputs, targets_b)
            correct = (lam * predicted.eq(targets_a).cpu().sum().float()
                       + (1 - lam) * predicted.eq(targets_b).cpu().sum().float())
        stats["loss"] += loss.item()  # the reference's per-step read-backs (host syncs on CUDA)
        stats["correct"] += float(correct)
        stats["total"] += targets.size(0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model.train()
    seconds = timed(step, args.warmup, args.steps, dev)
    _check_finite(stats["loss"], "baseline", method, arch)
    return seconds


def _check_finite(loss: float, path: str, method: str, arch: str) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"{path} {method} on {arch}: the training loss is {loss}")


# ----------------------------------------------------------------------------------------------
# corruptions
def varmix_corruption_seconds(name: str, x: torch.Tensor, batch: int, severity: int,
                              gen: torch.Generator) -> float:
    """Seconds to corrupt all of x (float, on its device) at ``severity``, in batches of ``batch``."""
    return timed(lambda: [corrupt(x[i:i + batch], name, severity, gen) for i in range(0, len(x), batch)],
                 0, 1, x.device)


# Reference-style baseline: make_cifar_c.py builds CIFAR-10-C with a per-image Python loop,
#     convert_img = trn.Compose([trn.ToTensor(), trn.ToPILImage()])
#     for img, label in zip(test_data.data, test_data.targets):
#         cifar_c.append(np.uint8(corruption(convert_img(img))))
# each corruption taking a PIL image and returning a float array in [0, 255] made with numpy /
# scikit-image / PIL. CONVERT_IMG and baseline_corruption_seconds are that loop; the functions below keep
# those libraries' algorithms for a representative few corruptions; they are not the script's exact code
# (skimage is not installed here:
# its gaussian is scipy.ndimage.gaussian_filter underneath, and its rgb2hsv / hsv2rgb are re-written in
# numpy below; pixelate uses the image's size instead of the hard-coded 32).
def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv's algorithm (blue, then green, then red max wins; grey pixels get hue 0)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = np.ptp(rgb, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(delta == 0, 0.0, delta / v)
        h = np.select([b == v, g == v, r == v], [4 + (r - g) / delta, 2 + (b - r) / delta, (g - b) / delta])
    h = np.where(delta == 0, 0.0, (h / 6) % 1)
    return np.nan_to_num(np.stack([h, s, v], -1))


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb's algorithm (sector choice with np.choose)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6)
    f = h * 6 - hi
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    hi = np.stack([hi, hi, hi], -1).astype(np.uint8) % 6
    return np.choose(hi, np.stack([np.stack((v, t, p), -1), np.stack((q, v, p), -1), np.stack((p, v, t), -1),
                                   np.stack((p, q, v), -1), np.stack((t, p, v), -1), np.stack((v, p, q), -1)]))


def ref_gaussian_noise(img: Image.Image, c: float) -> np.ndarray:
    x = np.array(img) / 255.0
    return np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def ref_gaussian_blur(img: Image.Image, c: float) -> np.ndarray:
    x = np.array(img) / 255.0
    x = gaussian_filter(x, sigma=(c, c, 0) if x.ndim == 3 else c, mode="nearest", truncate=4.0)
    return np.clip(x, 0, 1) * 255


def ref_brightness(img: Image.Image, c: float) -> np.ndarray:
    x = np.array(img) / 255.0
    if x.ndim == 2:  # grey: the HSV value is the pixel itself
        return np.clip(x + c, 0, 1) * 255
    x = _rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    return np.clip(_hsv2rgb(x), 0, 1) * 255


def ref_contrast(img: Image.Image, c: float) -> np.ndarray:
    x = np.array(img) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def ref_pixelate(img: Image.Image, c: float) -> Image.Image:
    w, h = img.size
    img = img.resize((int(w * c), int(h * c)), Image.BOX)
    return img.resize((w, h), Image.BOX)


REFERENCE_CORRUPTIONS = {"gaussian_noise": ref_gaussian_noise, "brightness": ref_brightness,
                         "contrast": ref_contrast, "pixelate": ref_pixelate}
if gaussian_filter is not None:
    REFERENCE_CORRUPTIONS["gaussian_blur"] = ref_gaussian_blur


CONVERT_IMG = transforms.Compose([transforms.ToTensor(), transforms.ToPILImage()])  # the script's convert_img


def baseline_corruption_seconds(name: str, images: np.ndarray, severity: int) -> tuple[float, float]:
    """Seconds of make_cifar_c's loop over all uint8 ``images`` at ``severity``, in two parts: the script's
    convert_img, and the corruption with its uint8 cast (timed image by image, so that the two are paired)."""
    fn, c = REFERENCE_CORRUPTIONS[name], CONSTANTS[name][severity - 1]
    out = []
    convert = corrupt_s = 0.0
    for img in images:
        t0 = time.perf_counter()
        pil = CONVERT_IMG(img)
        t1 = time.perf_counter()
        out.append(np.uint8(fn(pil, c)))
        t2 = time.perf_counter()
        convert += t1 - t0
        corrupt_s += t2 - t1
    return convert, corrupt_s


def corruption_rounds(name: str, x: torch.Tensor, u8: np.ndarray | None, batch: int, rounds: int) -> np.ndarray:
    """Seconds of each round [rounds, 3], each summed over severities 1-5: column 0 varmix, column 1 the
    baseline loop, column 2 the part of it spent in the script's convert_img (columns 1-2 NaN without
    ``u8``). Within a round every severity's varmix pass is followed at once by the baseline's loop at that
    severity, so the two see the same machine: on a shared VM the speed of the same operation drifts by up
    to 2x over seconds, and a ratio of paths timed apart would carry that drift. Every severity is warmed up
    first (cached matrices, allocator, CUDA kernels; two baseline images)."""
    gen = torch.Generator().manual_seed(0)
    np.random.seed(0)
    for severity in range(1, 6):
        corrupt(x[:batch], name, severity, gen)
        if u8 is not None:
            baseline_corruption_seconds(name, u8[:2], severity)
    out = np.zeros((rounds, 3))
    for r in range(rounds):
        for severity in range(1, 6):
            out[r, 0] += varmix_corruption_seconds(name, x, batch, severity, gen)
            if u8 is not None:
                convert, rest = baseline_corruption_seconds(name, u8, severity)
                out[r, 1] += convert + rest
                out[r, 2] += convert
    if u8 is None:
        out[:, 1:] = np.nan
    return out


# ----------------------------------------------------------------------------------------------
# table
HEADERS = ("device", "workload", "arch", "shape", "method", "varmix img/s", "baseline img/s",
           "speedup", "varmix cost vs ERM", "baseline cost vs ERM", "varmix GFLOP/s", "of peak")
NUMERIC = {"varmix img/s", "baseline img/s", "speedup", "varmix cost vs ERM", "baseline cost vs ERM",
           "varmix GFLOP/s", "of peak"}
DASH = "—"


def fmt_rate(v: float | None) -> str:
    return DASH if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def fmt_ratio(v: float | None) -> str:
    return DASH if v is None else f"{v:.2f}x"


def markdown_table(rows: list[tuple[str, ...]], headers=HEADERS, numeric=NUMERIC) -> str:
    """A markdown table, the ``numeric`` columns right-aligned (benchmarks/step_profile.py passes its own)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells, numeric_right=True):
        out = [c.rjust(w) if numeric_right and h in numeric else c.ljust(w)
               for c, w, h in zip(cells, widths, headers)]
        return "| " + " | ".join(out) + " |"

    rule = ["-" * (w - 1) + ":" if h in numeric else "-" * w for w, h in zip(widths, headers)]
    return "\n".join([line(headers, numeric_right=False), "| " + " | ".join(rule) + " |"]
                     + [line(r) for r in rows])


def shape_name(shape) -> str:
    return "x".join(map(str, shape))


def training_rows(args, dev: torch.device, device_label: str) -> list[tuple]:
    """The train rows; each row's last cell is the varmix step's GFLOP/s as a float (main() formats it and
    its share of the peak, measured after these rows)."""
    jobs = [(arch, shape, method, path) for arch in args.archs for shape in args.shapes
            for method in args.methods for path in ("varmix", "baseline")]
    seconds = {}
    bar = tqdm(jobs, desc="training", unit="run", file=sys.stderr, dynamic_ncols=True)
    for arch, shape, method, path in bar:
        bar.set_postfix_str(f"{arch} {shape_name(shape)} {method} {path}")
        fn = varmix_train_seconds if path == "varmix" else baseline_train_seconds
        seconds[arch, shape, method, path] = fn(method, arch, shape, args, dev) / args.steps / args.batch_size
    bar.close()

    rows = []
    for arch in args.archs:
        for shape in args.shapes:
            for method in args.methods:
                v, b = seconds[arch, shape, method, "varmix"], seconds[arch, shape, method, "baseline"]
                v_erm, b_erm = seconds[arch, shape, "erm", "varmix"], seconds[arch, shape, "erm", "baseline"]
                gflops = FLOPS_PER_IMAGE[method, arch, shape] / v / 1e9
                rows.append((device_label, "train", arch, shape_name(shape), method, fmt_rate(1 / v),
                             fmt_rate(1 / b), fmt_ratio(b / v), fmt_ratio(v / v_erm), fmt_ratio(b / b_erm),
                             gflops))
    return rows


def corruption_rows(args, dev: torch.device, device_label: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """The corrupt rows. Every figure is a median over ``args.repeats`` rounds (``corruption_rounds``): the
    img/s columns the median round's time, a speedup the median of the rounds' own ratios (each round's
    two paths timed side by side), and the baselined aggregate the median of the rounds' summed ratios."""
    rows, notes = [], []
    n = args.corruption_images
    jobs = [(shape, name) for shape in args.shapes for name in CORRUPTIONS]
    bar = tqdm(jobs, desc="corruptions", unit="corruption", file=sys.stderr, dynamic_ncols=True)
    seconds, data = {}, {}
    for shape, name in bar:
        bar.set_postfix_str(f"{shape_name(shape)} {name}")
        if shape not in data:
            c, h, w = shape
            x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))
            u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # NHWC, as CIFAR-10's .data
            data[shape] = (x.to(dev), u8[..., 0] if c == 1 else u8)
        x, u8 = data[shape]
        seconds[shape, name] = corruption_rounds(name, x, u8 if name in REFERENCE_CORRUPTIONS else None,
                                                 args.corruption_batch, args.repeats)
    bar.close()

    per_run = 5 * n  # images produced per corruption: n images x 5 severities
    ref = list(REFERENCE_CORRUPTIONS)
    for shape in args.shapes:
        sname = shape_name(shape)
        for name in CORRUPTIONS:
            t = seconds[shape, name]
            v, b = np.median(t[:, 0]), np.median(t[:, 1])
            has_b = name in REFERENCE_CORRUPTIONS
            label = name if name in BENCHMARK_CORRUPTIONS else f"{name} (extra)"
            rows.append((device_label, "corrupt", DASH, sname, label, fmt_rate(per_run / v),
                         fmt_rate(per_run / b if has_b else None),
                         fmt_ratio(np.median(t[:, 1] / t[:, 0]) if has_b else None), DASH, DASH, DASH, DASH))
        v_rounds = sum(seconds[shape, name][:, 0] for name in ref)
        b_rounds = sum(seconds[shape, name][:, 1] for name in ref)
        v_ref, b_ref = np.median(v_rounds), np.median(b_rounds)
        rows.append((device_label, "corrupt", DASH, sname, f"baselined {len(ref)} x 5 severities",
                     fmt_rate(len(ref) * per_run / v_ref), fmt_rate(len(ref) * per_run / b_ref),
                     fmt_ratio(np.median(b_rounds / v_rounds)), DASH, DASH, DASH, DASH))
        suite = np.median(sum(seconds[shape, name][:, 0] for name in BENCHMARK_CORRUPTIONS))
        rows.append((device_label, "corrupt", DASH, sname, f"suite {len(BENCHMARK_CORRUPTIONS)} x 5 severities",
                     fmt_rate(len(BENCHMARK_CORRUPTIONS) * per_run / suite), DASH, DASH, DASH, DASH, DASH,
                     DASH))
        c_rounds = sum(seconds[shape, name][:, 2] for name in ref)
        rows.append((device_label, "corrupt", DASH, sname, "(baseline: its convert_img alone)", DASH,
                     fmt_rate(len(ref) * per_run / np.median(c_rounds)), DASH, DASH, DASH, DASH, DASH))
        notes.append(f"- corruption suite, {sname}: varmix would take ~{suite / n * SUITE_IMAGES:.0f} s for "
                     f"{len(BENCHMARK_CORRUPTIONS)} corruptions x 5 severities x {SUITE_IMAGES:,} images "
                     f"(the baselined {len(ref)}: varmix ~{v_ref / n * SUITE_IMAGES:.0f} s, per-image loop "
                     f"~{b_ref / n * SUITE_IMAGES:.0f} s; their speedup round by round: "
                     f"{', '.join(f'{r:.1f}x' for r in b_rounds / v_rounds)}). Of the loop, the script's "
                     f"convert_img (ToTensor -> ToPILImage) takes {np.median(c_rounds / b_rounds):.0%}; without it "
                     f"the speedup would be {np.median((b_rounds - c_rounds) / v_rounds):.1f}x")
    return rows, notes


# ----------------------------------------------------------------------------------------------
# command line
def csv_choices(option: str, choices):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        unknown = [v for v in items if v not in choices]
        if unknown or not items:
            what = f"unknown {', '.join(map(repr, unknown))}" if unknown else "empty list"
            raise argparse.ArgumentTypeError(f"{what}; expected a comma-separated subset of {', '.join(choices)}")
        return items
    parse.__name__ = option  # argparse names the option's type in its messages
    return parse


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    shapes = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            c, h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected CxHxW, e.g. 3x32x32 or 1x28x28") from None
        if c not in CHANNELS or h != w or h not in IMAGE_SIZES:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected square images with C in {{{', '.join(map(str, CHANNELS))}}} and a side "
                f"in {{{', '.join(map(str, IMAGE_SIZES))}}} (the sizes the VAE of mixup_r / varmixup supports)")
        shapes.append((c, h, w))
    if not shapes:
        raise argparse.ArgumentTypeError("empty list; expected e.g. 3x32x32,1x28x28")
    return tuple(dict.fromkeys(shapes))


def int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is too small: expected an integer >= {lo}")
        return v
    parse.__name__ = f"integer >= {lo}"
    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (default: cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--archs", type=csv_choices("--archs", names.ARCHS), default=DEFAULT_ARCHS,
                   help=f"comma-separated, among {', '.join(names.ARCHS)} (default {','.join(DEFAULT_ARCHS)})")
    p.add_argument("--shapes", type=parse_shapes, default=DEFAULT_SHAPES,
                   help="comma-separated CxHxW image shapes, for training and corruptions "
                        "(default 3x32x32,1x28x28)")
    # The adversarial methods (at, trades, iat) have no reference-style loop here to compare with; their
    # cost per epoch is measured by benchmarks/paper_slice.py.
    p.add_argument("--methods", type=csv_choices("--methods", names.VICINAL_METHODS), default=names.VICINAL_METHODS,
                   help="comma-separated, among " + ", ".join(names.VICINAL_METHODS) + " (erm is always added: "
                        "the cost column is relative to it; default: all)")
    p.add_argument("--only", choices=("train", "corrupt"), default=None, help="run one part only (default: both)")
    p.add_argument("--batch-size", type=int_at_least(2), default=None, help="training batch (default 128)")
    p.add_argument("--steps", type=int_at_least(1), default=None,
                   help=f"timed training steps per measurement (default: {DEVICE_DEFAULTS['cpu']['steps']} "
                        f"on CPU, {DEVICE_DEFAULTS['cuda']['steps']} on CUDA)")
    p.add_argument("--warmup", type=int_at_least(0), default=None,
                   help=f"untimed steps before each measurement (default: {DEVICE_DEFAULTS['cpu']['warmup']} "
                        f"on CPU, {DEVICE_DEFAULTS['cuda']['warmup']} on CUDA)")
    p.add_argument("--workers", type=int_at_least(0), default=0,
                   help="baseline DataLoader num_workers (default 0 = load in the main process; "
                        "mixup-cifar10 uses 8)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="optimiser of both paths, with TrainConfig's lr (default adam)")
    p.add_argument("--num-classes", type=int_at_least(2), default=10, help="default 10")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="varmix path in fp32 on CUDA too")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="varmix path in contiguous memory format")
    p.add_argument("--latent-dim", type=int_at_least(1), default=16,
                   help="VAE latent size for mixup_r/varmixup (default 16)")
    p.add_argument("--vae-width", type=int_at_least(1), default=32,
                   help="VAE base width for mixup_r/varmixup (default 32)")
    p.add_argument("--corruption-images", type=int_at_least(1), default=None,
                   help="images per corruption and severity (default 1000)")
    p.add_argument("--corruption-batch", type=int_at_least(1), default=None,
                   help="images per varmix corruption call (default 500)")
    p.add_argument("--repeats", type=int_at_least(1), default=None,
                   help="corrupt rows: rounds per corruption, each timing severities 1-5 on both paths side by "
                        "side; the table shows medians over the rounds (default 5)")
    p.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="smoke check: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                        + " (explicit options win)")
    return p


def resolve_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    try:
        dev = resolve_device(None if args.device == "auto" else args.device)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    defaults = {"batch_size": 128, "corruption_images": 1000, "corruption_batch": 500, "repeats": 5,
                **DEVICE_DEFAULTS[dev.type], **(QUICK if args.quick else {})}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "erm" not in args.methods:
        args.methods = ("erm", *args.methods)
    if args.threads:
        torch.set_num_threads(args.threads)
    return dev


def main(argv: list[str] | None = None) -> int:
    p = get_args_parser()
    args = p.parse_args(argv)
    dev = resolve_args(p, args)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as both the trainer and mixup-cifar10 do
        name = torch.cuda.get_device_name(dev)
    else:
        name = "CPU"
    device_label = str(dev)

    print(f"# varmix throughput: torch {torch.__version__}, device {dev} ({name}), "
          f"{torch.get_num_threads()} CPU threads")
    if args.only != "corrupt":
        print(f"training: batch {args.batch_size}, {args.steps} timed step(s) after {args.warmup} warm-up per "
              f"measurement, {args.optimizer}; varmix: train_step, data on {dev}, channels_last "
              f"{args.channels_last}, bf16 autocast {args.amp and dev.type == 'cuda'}; baseline: DataLoader "
              f"num_workers={args.workers}, per-sample PIL transforms, fp32, contiguous, VAE with autograd on")
    if args.only != "train":
        print(f"corruptions: {args.corruption_images} images x severities 1-5 per corruption, {args.repeats} "
              f"round(s); varmix batches of {args.corruption_batch} on {dev}; baseline: make_cifar_c-style "
              f"per-image loop on the CPU ({', '.join(REFERENCE_CORRUPTIONS)}), timed right after varmix at each "
              f"severity")
    print()

    rows, notes = [], []
    if args.only != "corrupt":
        # The peak the training rows are measured against: fp32 on the CPU; on CUDA the dtype the step's
        # matmuls run in (bf16 under autocast, else fp32 with PyTorch's default matmul precision).
        peak_dtype = torch.bfloat16 if args.amp and dev.type == "cuda" else torch.float32
        before = matmul_peak(dev, peak_dtype)
        train = training_rows(args, dev, device_label)
        after = matmul_peak(dev, peak_dtype)
        peak = max(before, after)
        fp32 = peak if peak_dtype == torch.float32 else matmul_peak(dev, torch.float32)
        print(f"peak: a large matmul runs at {peak:,.0f} GFLOP/s in {str(peak_dtype).removeprefix('torch.')}"
              + ("" if peak_dtype == torch.float32 else f" ({fp32:,.0f} in float32)")
              + f" on {dev} (the higher of {before:,.0f} before and {after:,.0f} after the training rows); "
              + "'of peak' = the varmix step's counted FLOPs x img/s / that")
        print()
        rows += [r[:-1] + (fmt_rate(r[-1]), f"{r[-1] / peak:.1%}") for r in train]
    if args.only != "train":
        corr_rows, notes = corruption_rows(args, dev, device_label)
        rows += corr_rows
    print(markdown_table(rows))
    print()
    print(f"- speedup = varmix img/s / baseline img/s; {DASH} = not measured")
    if args.only != "corrupt":
        print("- train rows: cost vs ERM = the method's time per image / ERM's, on the same path")
        print("- train rows: varmix GFLOP/s = FLOPs per image of the varmix step (torch.utils.flop_counter: "
              "matmuls and convolutions of forward, backward and the VAE) x varmix img/s")
    if args.only != "train":
        print("- corrupt rows: images produced per second (an image at each of the 5 severities counts 5 times) "
              "in the median round; speedup = the median of the rounds' own ratios; the baseline runs on the "
              "CPU whatever the device")
    for line in notes:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
