"""Common corruptions (CIFAR-10-C, Hendrycks & Dietterich 2019) as batched torch ops.

Why hand-written: the PyPI package ``imagecorruptions`` uses the *ImageNet-C* constants (Gaussian noise
std .08-.38, JPEG quality 25-7, ...), refuses images smaller than 32x32 (Fashion-MNIST is 28x28), breaks on
current NumPy / scikit-image (glass_blur, gaussian_blur, fog) and needs pkg_resources; and it works one
numpy image at a time (slow: benchmarks/throughput.py measures it). Here each corruption works on
a batch of float images ``[N, C, H, W]`` in ``[0, 1]`` (torch ops; JPEG and spatter's water shading call
their libraries per image), of any size (>= 8 px), with 1 or 3
channels, on CPU or GPU, and the constants are those of hendrycks/robustness ``make_cifar_c.py`` (the
script that made CIFAR-10-C), kept in one table, ``CONSTANTS``.

Style follows ``make_cifar_c.py``: one function per corruption, ``name(x, severity, gen) -> Tensor``
(same shape and dtype, clamped to [0, 1]); ``corrupt(x, name, severity, gen)`` dispatches by name.
Randomness comes only from ``gen``, a CPU ``torch.Generator``: random tensors are drawn on the CPU from it
and then moved to ``x.device``, so CPU and GPU runs see the same random numbers (outputs then agree up to
float rounding). The original script is unseeded. Deterministic corruptions accept ``gen=None``.

Faithfulness, measured against make_cifar_c.py itself: tests/data/make_expected_corruptions.py ran the
script's functions (CIFAR constants; scikit-image 0.26, OpenCV 5.0, ImageMagick 6.9.11 via Wand) on two
32x32 RGB images at severities 1-5 with varmix's random draws fed into numpy's random functions, and
tests/test_corruptions.py pins varmix to those outputs (the script's float results, before its uint8 cast;
docs/DEPARTURES.md, section Corruptions has the table):

- equal to float32 rounding (< 0.001 of a level out of 255): gaussian, shot, impulse and speckle noise,
  defocus, zoom and gaussian blur, snow, frost, fog, brightness, contrast, elastic_transform, saturate,
  spatter (water and mud), jpeg_compression (bit for bit).
- within 1 level, where the script rounds to uint8 inside the corruption and varmix stays in float:
  pixelate (Pillow's uint8 between the two BOX passes), motion_blur (ImageMagick's 8-bit output), and
  glass_blur (the uint8 cast after its first blur floors values lying within 1e-5 of a level on either
  side: varmix's float32 input and the script's float64 land on different sides).

Where make_cifar_c calls a library, varmix re-implements the algorithm as a batched torch op: skimage's
``gaussian`` (mode 'nearest', truncate 4), scipy's ``zoom``/``map_coordinates`` (order 1), OpenCV's
``filter2D``/``GaussianBlur``/``warpAffine`` (border REFLECT_101), Pillow's BOX resize, skimage's
RGB<->HSV round trip (in closed form: brightness scales RGB by v'/v, saturation scales the distance to the
max channel by s'/s), ImageMagick's ``MotionBlurImage`` (one-sided Gaussian line kernel of width
2*ceil(radius)+1, integer-rounded offsets along the angle, edge pixels replicated). Two corruptions call
the script's own libraries: spatter's water shading (OpenCV's Canny, distanceTransform, equalizeHist,
filter2D, blur: per image on the CPU) and frost (OpenCV reads and resizes the five frost photographs the
script picks among, from the ``imagecorruptions`` wheel, which varmix uses for those files only).

Beyond CIFAR's 32x32 RGB images, where the script has no answer:

- constants are the CIFAR (32x32) ones at every image size; only elastic_transform (x image size, as in
  the script, using min(H, W)) and pixelate (relative factor) scale. Tiny-ImageNet-C used its own
  constants: for Tiny-ImageNet compare against the official release (``load_official``).
- frost crops H x W from the 0.2-scaled photographs; a photograph too small for the crop (frost2/3 are
  63 x 112 at 0.2: images over 62 rows or 104 columns) is scaled up just enough.
- 1-channel images: colour constants and the grey conversion use ITU-R 601 luma (0.299, 0.587, 0.114);
  frost blends the luma of the crop; saturate returns the luma of what the script would give for the grey
  image replicated to RGB (identity for severities 1-3, x * (1 - 0.701 * add) for 4-5, where the script
  tints grey pixels red).
- everything stays float; the released CIFAR-10-C was truncated to uint8 after each corruption.
- jpeg_compression (libjpeg via torchvision.io) and spatter's water shading (OpenCV) run per image on the
  CPU; shot_noise draws its Poisson counts on the CPU (torch.poisson needs the generator's device): GPU
  images make a round trip to the CPU there.

Also checked in tests/test_corruptions.py against the libraries themselves: gaussian_blur (scipy),
zoom_blur (scipy.ndimage.zoom), elastic_transform (scipy affine_transform + map_coordinates port) and
brightness / saturate (HSV round trip) agree to float precision, pixelate is within 1/255 of Pillow, JPEG is
byte-identical to Pillow's. Pixel error does not grow monotonically with severity for every corruption, by
make_cifar_c's constants: glass_blur (more blur at the same number of shuffles smooths them),
elastic_transform (the affine jitter shrinks from 0.08 to 0.03 x size), motion_blur 3 vs 4 (the larger
radius only adds taps beyond 3 sigma), frost 3 vs 4, saturate 2 vs 3, spatter 3 vs 4.

Speed: ``benchmarks/throughput.py --only corrupt`` measures images/s per corruption and for the 15 x 5 suite
(the README's benchmark table).

``load_official`` reads the official releases (CIFAR-10-C / CIFAR-100-C ``.npy`` files, Tiny-ImageNet-C
JPEG folders).
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from varmix.core.io import file_md5
from varmix.core.names import CORRUPTIONS as CORRUPTION_NAMES

__all__ = ["CONSTANTS", "CORRUPTIONS", "RANDOM_CORRUPTIONS", "RELEASES", "corrupt", "load_official",
           "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
           "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
           "jpeg_compression", "speckle_noise", "gaussian_blur", "saturate", "spatter"]

# ----------------------------------------------------------------------------------------------
# The constants: severity 1 -> 5, copied from hendrycks/robustness ImageNet-C/create_c/make_cifar_c.py.
CONSTANTS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),                     # std
    "shot_noise": (500, 250, 100, 75, 50),                                # Poisson rate
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),                      # salt & pepper amount
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, alias blur
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, delta, iters
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),          # radius, sigma; angle U(-45, 45)
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),                          # zooms np.arange(1, x, 0.01)
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95),                               # loc, scale, zoom, threshold,
             (0.1, 0.2, 1, 0.5, 10, 4, 0.9),                               # blur radius, blur sigma,
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),                          # image weight
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),        # strength, wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                             # HSV value shift
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                               # factor around the mean
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),  # alpha, sigma, affine
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),                 # (x image size)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                             # box down-up factor
    "jpeg_compression": (80, 65, 58, 50, 40),                              # JPEG quality
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),                         # multiplicative std
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),                              # sigma
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),      # HSV saturation mult, add
    # loc, scale, blur sigma, threshold, intensity (water) / mud blur sigma, 0 = water 1 = mud: the
    # CIFAR constants of make_cifar_c.py (ImageNet-C's differ: (0.65, 0.3, 4, 0.69, 0.6, 0), ...).
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
}
assert tuple(CONSTANTS) == CORRUPTION_NAMES, "CONSTANTS must list names.CORRUPTIONS in order"
assert all(len(v) == 5 for v in CONSTANTS.values())

MIN_SIZE = 8                              # smallest image side the ops are defined for
LUMA = (0.299, 0.587, 0.114)              # ITU-R 601, as OpenCV's RGB2GRAY
_WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise (RGB), as the script
_MUD = (63 / 255, 42 / 255, 20 / 255)       # mud brown


# ----------------------------------------------------------------------------------------------
# validation
def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity = {severity!r} is invalid: expected an integer 1..5")
    return int(severity)


def _check_name(name) -> str:
    if name not in CONSTANTS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTION_NAMES)}")
    return name


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"images have dtype {x.dtype}: expected float in [0, 1] "
                         f"(convert uint8 with varmix.learn.data.to_float)")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images have shape {tuple(x.shape)}: expected [N, C, H, W] with C = 1 or 3")
    if min(x.shape[2:]) < MIN_SIZE:
        raise ValueError(f"images of size {tuple(x.shape[2:])} are too small: expected H, W >= {MIN_SIZE}")
    if x.numel():
        lo, hi = torch.aminmax(x)
        lo, hi = float(lo), float(hi)
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise ValueError(f"image values span [{lo:.4g}, {hi:.4g}]: expected [0, 1]")


def _check_gen(gen, name: str, needed: bool) -> None:
    if gen is None and not needed:
        return
    if not isinstance(gen, torch.Generator):
        raise ValueError(f"{name}: gen = {gen!r} is invalid: expected a torch.Generator on the CPU"
                         + ("" if needed else " (or None: this corruption is deterministic)"))
    if gen.device.type != "cpu":
        raise ValueError(f"{name}: gen lives on {gen.device}: expected a CPU torch.Generator "
                         f"(random numbers are drawn on the CPU and moved to the images' device)")


# ----------------------------------------------------------------------------------------------
# random draws: always on the CPU from gen, in float32, then moved (same numbers on CPU and GPU)
def _randn(gen, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device=like.device, dtype=like.dtype)


def _rand(gen, shape, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(shape, generator=gen).to(device=like.device, dtype=like.dtype)


def _uniform64(gen, shape, lo: float, hi: float) -> torch.Tensor:
    """Uniform(lo, hi) in float64 on the CPU (angles, plasma wibble, affine jitter)."""
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo


# ----------------------------------------------------------------------------------------------
# linear filters as matrices: a separable op on [N, C, H, W] is A_h @ x @ A_w^T (one GEMM per axis,
# boundary handling folded into the matrix), which beats small convolutions on the CPU.
def _pad_index(n: int, p: int, mode: str) -> np.ndarray:
    """Source index of positions -p .. n+p-1 under a border mode (any p, also p > n).
    nearest: a a | a b c | c c (skimage 'nearest', ImageMagick edge); reflect101: c b | a b c | b a
    (OpenCV's default, torch 'reflect'); symmetric: b a | a b c | c b (scipy/skimage 'reflect')."""
    i = np.arange(-p, n + p)
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if mode == "symmetric":
        i = i % (2 * n)
        return np.where(i >= n, 2 * n - 1 - i, i)
    if mode == "reflect101":
        if n == 1:
            return np.zeros_like(i)
        i = i % (2 * n - 2)
        return np.where(i >= n, 2 * n - 2 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def _filter_matrix(n: int, kernel: np.ndarray, mode: str) -> np.ndarray:
    """[n, n] matrix of the 1-D correlation with an odd-length kernel under a border mode."""
    r = len(kernel) // 2
    idx = _pad_index(n, r, mode)
    a = np.zeros((n, n))
    rows = np.arange(n)
    for k, w in enumerate(kernel):
        np.add.at(a, (rows, idx[rows + k]), w)
    return a


def _gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage's Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    if sigma <= 0:
        return np.ones(1)
    r = int(truncate * sigma + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * t * t / (sigma * sigma))
    return k / k.sum()


@functools.lru_cache(maxsize=512)
def _gauss_matrix(n: int, sigma: float, mode: str, truncate: float) -> np.ndarray:
    return _filter_matrix(n, _gauss_kernel(sigma, truncate), mode)


def _zoom_coords(n: int, z: float) -> np.ndarray:
    """make_cifar_c's clipped_zoom along one axis: crop ceil(n / z) centred, scipy.ndimage.zoom
    (order 1, grid_mode False: align corners) to round(crop * z), trim to n centred. Returns the source
    coordinate of each of the n output pixels."""
    ch = int(np.ceil(n / z))
    top = (n - ch) // 2
    out = int(round(ch * z))
    trim = (out - n) // 2
    j = np.arange(n) + trim
    scale = (ch - 1) / (out - 1) if out > 1 else 0.0
    return top + j * scale


def _interp_matrix(coords: np.ndarray, n_in: int) -> np.ndarray:
    """Linear interpolation at the given source coordinates (inside [0, n_in - 1])."""
    a = np.zeros((len(coords), n_in))
    c = np.clip(coords, 0, n_in - 1)
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    f = c - lo
    rows = np.arange(len(coords))
    np.add.at(a, (rows, lo), 1 - f)
    np.add.at(a, (rows, hi), f)
    return a


@functools.lru_cache(maxsize=512)
def _zoom_matrix(n: int, z: float) -> np.ndarray:
    return _interp_matrix(_zoom_coords(n, z), n)


def _pil_box_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Pillow's BOX resampling weights (Resample.c precompute_coeffs with box_filter)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    a = np.zeros((n_out, n_in))
    for xx in range(n_out):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in)
        for x in range(xmin, xmax):
            t = (x - center + 0.5) / filterscale
            a[xx, x] = 1.0 if -0.5 < t <= 0.5 else 0.0
        s = a[xx].sum()
        if s:
            a[xx] /= s
    return a


@functools.lru_cache(maxsize=512)
def _pixelate_matrix(n: int, factor: float) -> np.ndarray:
    m = int(n * factor)  # the script: resize to int(32 * c), BOX, then back to 32, BOX
    return _pil_box_matrix(m, n) @ _pil_box_matrix(n, m)


def _t(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(a, dtype=like.dtype, device=like.device)


def _sep(x: torch.Tensor, ah: np.ndarray, aw: np.ndarray) -> torch.Tensor:
    """Apply ah along H and aw along W (matrices as numpy): a new contiguous tensor. Along W one GEMM over
    all rows; along H the matrix multiplies every [H, W] plane in place of transposing the batch twice
    (same products, same sums; two fewer copies of the batch)."""
    return _t(ah, x) @ (x @ _t(aw, x).T)


def _gaussian(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian per channel (default mode 'nearest', truncate 4)."""
    h, w = x.shape[-2:]
    return _sep(x, _gauss_matrix(h, float(sigma), mode, truncate), _gauss_matrix(w, float(sigma), mode, truncate))


def _pad2d(x: torch.Tensor, p: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    iy = torch.as_tensor(_pad_index(h, p, mode), device=x.device)
    ix = torch.as_tensor(_pad_index(w, p, mode), device=x.device)
    x = x.index_select(-2, iy)
    # index_select on the last dim of a 4-D tensor is slow on the CPU; on a 2-D view it is not
    return x.reshape(-1, w).index_select(1, ix).reshape(*x.shape[:-1], len(ix))


def _conv2d(x: torch.Tensor, kernel: np.ndarray, mode: str) -> torch.Tensor:
    """Correlation of every channel with one odd square kernel (OpenCV filter2D)."""
    h, w = x.shape[-2:]
    xp = _pad2d(x, kernel.shape[0] // 2, mode)
    out = torch.zeros_like(x)
    for (i, j), k in np.ndenumerate(kernel):  # small kernels: shifted adds beat conv2d on the CPU
        if k:
            out.add_(xp[..., i: i + h, j: j + w], alpha=float(k))
    return out


def _luma(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] grey image (OpenCV RGB2GRAY weights; 1 channel: itself)."""
    if x.shape[1] == 1:
        return x
    wts = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * wts).sum(1, keepdim=True)


def _colour(rgb: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """[1, C, 1, 1] colour for the images' channel count (1 channel: its luma)."""
    if like.shape[1] == 1:
        rgb = (sum(l * v for l, v in zip(LUMA, rgb)),)
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


@functools.lru_cache(maxsize=64)
def _motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick MotionBlurImage: width GetOptimalKernelWidth1D = 2*ceil(radius)+1, one-sided Gaussian."""
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-i * i / (2 * sigma * sigma))
    return k / k.sum()


def _motion_blur_op(x: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """ImageMagick's motion blur, one angle (degrees, float64 CPU tensor [N]) per image: pixel (x, y)
    becomes sum_i k_i * img(x + round(i cos a), y + round(i sin a)) with ceil(v - 0.5) rounding and edge
    virtual pixels."""
    k = _motion_kernel(float(radius), float(sigma))
    n, c, h, w = x.shape
    pad = len(k) - 1  # |offset| <= i <= width - 1
    wp = w + 2 * pad
    xp = _pad2d(x, pad, "nearest").reshape(n, c, (h + 2 * pad) * wp)
    base = ((torch.arange(h, device=x.device) + pad)[:, None] * wp
            + (torch.arange(w, device=x.device) + pad)[None, :]).reshape(1, -1)
    rad = torch.deg2rad(angles)
    out = x * float(k[0])
    for i in range(1, len(k)):
        ox = torch.ceil(i * torch.cos(rad) - 0.5).long()
        oy = torch.ceil(i * torch.sin(rad) - 0.5).long()
        idx = base + (oy * wp + ox).to(x.device)[:, None]                 # [n, h * w] flat source index
        out += float(k[i]) * xp.gather(2, idx[:, None, :].expand(n, c, h * w)).view(n, c, h, w)
    return out


def _clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    return _sep(x, _zoom_matrix(h, float(z)), _zoom_matrix(w, float(z)))


def _plasma(n: int, mapsize: int, wibbledecay: float, gen) -> torch.Tensor:
    """make_cifar_c's plasma_fractal (diamond-square), n maps at once: float64 CPU [n, mapsize, mapsize]
    in [0, 1]. np.roll on axis 0/1 of one map is torch.roll on dim 1/2 here."""
    m = torch.zeros(n, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(a):
        return a / 4 + wibble * _uniform64(gen, a.shape, -wibble, wibble)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wibbled_mean(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled_mean(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled_mean(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= wibbledecay
    m -= m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True).clamp_min(1e-12)


def _mapsize(h: int, w: int) -> int:
    return 1 << (max(h, w) - 1).bit_length()


# ----------------------------------------------------------------------------------------------
# every corruption starts with _begin (validate, float working copy, constants) and ends with _end
RANDOM_CORRUPTIONS = frozenset({
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur",
    "snow", "frost", "fog", "elastic_transform", "spatter"})


def _begin(x, name: str, severity, gen):
    severity = _check_severity(severity)
    _check_images(x)
    _check_gen(gen, name, name in RANDOM_CORRUPTIONS)
    w = x if x.dtype == torch.float64 else x.float()
    return w, CONSTANTS[name][severity - 1], x.dtype


def _end(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return out.clamp(0, 1).to(dtype)


def _end_fresh(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """_end for a tensor the corruption made itself (never the caller's images): clamped in place."""
    return out.clamp_(0, 1).to(dtype)


# ----------------------------------------------------------------------------------------------
# noise
def gaussian_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """x + N(0, c^2)."""
    x, c, dtype = _begin(x, "gaussian_noise", severity, gen)
    return _end_fresh(_randn(gen, x.shape, x).mul_(c).add_(x), dtype)  # x + noise * c, without temporaries


def shot_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Poisson(x * c) / c (drawn on the CPU: torch.poisson takes the CPU generator)."""
    x, c, dtype = _begin(x, "shot_noise", severity, gen)
    return _end(torch.poisson(x.detach().cpu() * c, generator=gen).to(x.device) / c, dtype)


def impulse_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """skimage random_noise 's&p': each value (per channel) flips with probability c, to 1 or 0 equally."""
    x, c, dtype = _begin(x, "impulse_noise", severity, gen)
    flipped = _rand(gen, x.shape, x) < c
    salt = _rand(gen, x.shape, x) < 0.5
    return _end(torch.where(flipped, salt.to(x.dtype), x), dtype)


def speckle_noise(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """x + x * N(0, c^2)."""
    x, c, dtype = _begin(x, "speckle_noise", severity, gen)
    return _end_fresh(_randn(gen, x.shape, x).mul_(x).mul_(c).add_(x), dtype)  # x + x * noise * c


# ----------------------------------------------------------------------------------------------
# blur
@functools.lru_cache(maxsize=32)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c's disk: normalised aliased disk on a 17x17 grid (radius <= 8) blurred by a 3x3
    OpenCV Gaussian of sigma alias_blur (5x5 for larger radii); cropped to its non-zero support."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 9), 3
    else:
        grid, ksize = np.arange(-int(radius), int(radius) + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    d /= d.sum()
    t = np.arange(ksize) - (ksize - 1) / 2
    g = np.exp(-t * t / (2 * alias_blur * alias_blur))
    g /= g.sum()
    m = _filter_matrix(len(grid), g, "reflect101")
    k = m @ d @ m.T
    nz = np.nonzero(np.abs(k).sum(0) > 1e-12)[0]
    r = max(len(grid) // 2 - nz.min(), nz.max() - len(grid) // 2)
    mid = len(grid) // 2
    return k[mid - r: mid + r + 1, mid - r: mid + r + 1]


def defocus_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Per-channel filter2D with the anti-aliased disk kernel (radius, alias blur), border REFLECT_101."""
    x, c, dtype = _begin(x, "defocus_blur", severity, gen)
    return _end(_conv2d(x, _disk(float(c[0]), float(c[1])), "reflect101"), dtype)


def glass_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian blur (sigma), quantise to uint8 (the script's np.uint8), local pixel shuffling
    (iterations x), Gaussian blur again. The shuffle: each interior pixel (rows/cols delta+1 .. size-delta,
    the script's range) takes the value of the pixel at its own offset from randint(-delta, delta), one
    gather per iteration. That is what the script's swap ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on
    numpy views does (a copy, not a swap), and with delta = 1 the sources are not yet visited in its
    bottom-right-first scan. Within 1 level of the script (see the module docstring)."""
    x, c, dtype = _begin(x, "glass_blur", severity, gen)
    sigma, delta, iterations = c
    n, ch, h, w = x.shape
    x = torch.floor(_gaussian(x, sigma).clamp(0, 1) * 255) / 255
    rows = torch.arange(delta + 1, h - delta + 1)
    cols = torch.arange(delta + 1, w - delta + 1)
    for _ in range(iterations):
        off = torch.randint(-delta, delta, (n, 2, len(rows), len(cols)), generator=gen)
        idx = torch.arange(h * w).view(1, h, w).repeat(n, 1, 1)
        src = (rows[:, None] + off[:, 0]) * w + (cols[None, :] + off[:, 1])
        idx[:, delta + 1: h - delta + 1, delta + 1: w - delta + 1] = src
        idx = idx.view(n, 1, h * w).to(x.device).expand(n, ch, h * w)
        x = x.reshape(n, ch, h * w).gather(2, idx).view(n, ch, h, w)
    return _end(_gaussian(x, sigma), dtype)


def motion_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """ImageMagick motion blur (radius, sigma) at an angle U(-45, 45) degrees per image (see
    _motion_blur_op), in float: within 1 level of the script, whose ImageMagick result is 8-bit."""
    x, c, dtype = _begin(x, "motion_blur", severity, gen)
    angles = _uniform64(gen, (x.shape[0],), -45, 45)
    return _end(_motion_blur_op(x, c[0], c[1], angles), dtype)


def zoom_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Mean of x and its centre zooms by np.arange(1, c, 0.01) (clipped_zoom: crop, bilinear zoom, trim)."""
    x, c, dtype = _begin(x, "zoom_blur", severity, gen)
    out = x.clone()
    zooms = np.arange(1, c, 0.01)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return _end(out / (len(zooms) + 1), dtype)


def gaussian_blur(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """skimage gaussian per channel: sigma c, mode 'nearest', truncate 4."""
    x, c, dtype = _begin(x, "gaussian_blur", severity, gen)
    return _end_fresh(_gaussian(x, c), dtype)


# ----------------------------------------------------------------------------------------------
# weather
def snow(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Snow layer N(loc, scale) per image, clipped_zoom, threshold, uint8, motion blur (radius, sigma,
    angle U(-135, -45)) quantised as ImageMagick Q16 returns it in 8 bits (round to 16 bits, then
    floor(q / 257)), blended with the image lifted towards 1.5 * grey + 0.5, plus the layer and its
    180-degree rotation. Matches make_cifar_c's snow to float32 rounding when fed the same draws."""
    x, c, dtype = _begin(x, "snow", severity, gen)
    loc, scale, zoom, threshold, radius, sigma, keep = c
    n, _, h, w = x.shape
    # the layer in float64 on the CPU, as the script (its uint8 steps are then cut at the same values)
    layer = torch.randn((n, 1, h, w), generator=gen).double() * scale + loc
    layer = _clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255) / 255  # the script's uint8 PNG for Wand
    angles = _uniform64(gen, (n,), -135, -45)
    blurred = _motion_blur_op(layer.to(device=x.device, dtype=torch.float32), radius, sigma, angles)
    # ImageMagick (Q16) rounds to 16 bits, then its 8-bit PNG keeps floor(q / 257) (float32 is exact
    # enough here: its error, < 0.01 of a 16-bit step, only matters at a rounding tie)
    layer = (torch.div(torch.round(blurred * 65535), 257, rounding_mode="floor") / 255).to(x.dtype)
    x = keep * x + (1 - keep) * torch.maximum(x, _luma(x) * 1.5 + 0.5)
    return _end(x + layer + layer.flip(-1, -2), dtype)


# The five photographs make_cifar_c.py picks among (np.random.randint(5); frost6.jpg is never used for
# CIFAR), as shipped in the imagecorruptions wheel, with their md5s.
FROST_PHOTOS = {
    "frost1.png": "6ead634ace1f366d77e87078b465863c",
    "frost2.png": "98f0d2b1d74a048d3bc9c7ecfd886939",
    "frost3.png": "b3ed8eb147824261888e730f916c0d8b",
    "frost4.jpg": "d70b9d6aa0b1fe7bd8133b113787e078",
    "frost5.jpg": "50984ae2c871b7df2c28f1d71ca460a0",
}
FROST_SCALE = 0.2  # make_cifar_c: cv2.resize(frost, (0, 0), fx=0.2, fy=0.2)


def _frost_path(name: str) -> Path:
    """Path of one frost photograph inside the installed imagecorruptions distribution, md5-checked.
    Located through its metadata only: importing imagecorruptions' code fails on NumPy 2."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = ("frost needs the frost photographs of the imagecorruptions wheel (data only): "
            "pip install --no-deps imagecorruptions==1.1.2")
    try:
        path = Path(distribution("imagecorruptions").locate_file(f"imagecorruptions/frost/{name}"))
    except PackageNotFoundError:
        raise FileNotFoundError(f"frost photograph {name} not found: imagecorruptions is not installed; "
                                f"{hint}") from None
    if not path.is_file():
        raise FileNotFoundError(f"frost photograph {path} not found; {hint}")
    actual = file_md5(path)
    if actual != FROST_PHOTOS[name]:
        raise ValueError(f"frost photograph {path}: md5 {actual} does not match the expected "
                         f"{FROST_PHOTOS[name]}; reinstall it: {hint.split(': ')[1]} --force-reinstall")
    return path


@functools.lru_cache(maxsize=8)
def _frost_photos(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The five photographs as make_cifar_c prepares them (cv2.imread, BGR; resized by 0.2 with
    cv2.resize's default bilinear; to RGB), for h x w crops: uint8 [5, 3, H_max, W_max] (zero-padded to
    the largest) and int64 [5, 2] with each photo's (height, width). A photo whose 0.2-scaled size
    cannot hold an h x w crop at two offsets (randint(0, size - h) needs size > h) is resized by the
    smallest larger factor that can (images over 62 rows or 104 columns; frost2/3 are 63 x 112 at 0.2 and
    become 65 x 116 for 64 x 64 images). Cached per (h, w) for the process."""
    import cv2

    photos = []
    for name in FROST_PHOTOS:
        path = _frost_path(name)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"frost photograph {path} could not be decoded by OpenCV")
        ph, pw = bgr.shape[:2]
        if round(ph * FROST_SCALE) > h and round(pw * FROST_SCALE) > w:
            small = cv2.resize(bgr, (0, 0), fx=FROST_SCALE, fy=FROST_SCALE)
        else:
            f = max((h + 1) / ph, (w + 1) / pw)
            small = cv2.resize(bgr, (max(round(pw * f), w + 1), max(round(ph * f), h + 1)))
        photos.append(torch.from_numpy(np.ascontiguousarray(small[..., ::-1])).permute(2, 0, 1))
    sizes = torch.tensor([p.shape[1:] for p in photos])
    stack = torch.zeros(len(photos), 3, *sizes.amax(0).tolist(), dtype=torch.uint8)
    for i, p in enumerate(photos):
        stack[i, :, : p.shape[1], : p.shape[2]] = p
    return stack, sizes


def frost(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """clip(image_weight * x + frost_weight * crop): per image one of make_cifar_c's five frost
    photographs (index uniform in 0..4), resized by 0.2, cropped at a uniform offset (row in
    0 .. height - H - 1, column in 0 .. width - W - 1, as the script's randint), as RGB / 255; 1 channel:
    the crop's luma (ITU-R 601). Draws from gen: the indices [N], then the offsets as floor(U[0, 1) *
    range) [N, 2] in float64. Matches make_cifar_c's frost (before its uint8 cast) to float32 rounding
    when fed the same photo index and offsets (tests/test_corruptions.py, pinned values)."""
    x, c, dtype = _begin(x, "frost", severity, gen)
    n, _, h, w = x.shape
    stack, sizes = _frost_photos(h, w)
    idx = torch.randint(0, len(sizes), (n,), generator=gen)
    ranges = sizes[idx] - sizes.new_tensor([h, w])               # randint(0, size - H): 0 .. range - 1
    offset = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * ranges).long()
    rows = offset[:, :1] + torch.arange(h)                       # [n, h]
    cols = offset[:, 1:] + torch.arange(w)                       # [n, w]
    crop = stack[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [n, 3, h, w]
    crop = crop.to(device=x.device).to(x.dtype) / 255
    return _end(c[0] * x + c[1] * (crop if x.shape[1] == 3 else _luma(crop)), dtype)


def fog(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """x + strength * plasma fractal (wibble decay; map of the next power of two >= the image side,
    cropped), rescaled by max / (max + strength) with max the image's maximum."""
    x, c, dtype = _begin(x, "fog", severity, gen)
    strength, decay = c
    n, _, h, w = x.shape
    fractal = _plasma(n, _mapsize(h, w), decay, gen)[:, None, :h, :w].to(device=x.device, dtype=x.dtype)
    max_val = x.amax((1, 2, 3), keepdim=True)
    return _end((x + strength * fractal) * max_val / (max_val + strength), dtype)


_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)


def _water_shading(liquid8: np.ndarray) -> np.ndarray:
    """make_cifar_c's water shading of one uint8 liquid layer [H, W], by the OpenCV calls the script
    makes: Canny(50, 150), L2 distance transform (5x5 mask) to the edges, truncated at 20, 3x3 blur cast
    to uint8, equalizeHist, emboss filter2D to CV_8U, 3x3 blur. Returns float32 [H, W]. Per image: the
    OpenCV functions take one 2-D image."""
    import cv2

    dist = cv2.distanceTransform(255 - cv2.Canny(liquid8, 50, 150), cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
    dist = cv2.filter2D(dist, cv2.CV_8U, _EMBOSS)
    return cv2.blur(dist, (3, 3)).astype(np.float32)


def spatter(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Liquid layer N(loc, scale) per image (float64 on the CPU, as the script), skimage Gaussian blur
    (sigma), zero below threshold. Water (severities 1-3): the layer as uint8 by the script's
    ``(layer * 255).astype(np.uint8)``, which wraps values above 1 modulo 256; blobs shaded by
    _water_shading (OpenCV's own functions), m = layer8 * shading / its maximum * intensity, added in pale
    turquoise. Mud (4-5): blob mask blurred (sigma), kept where >= 0.8, blended towards brown. Matches
    make_cifar_c's spatter (before its uint8 cast) to float32 rounding when fed the same normal draws
    (tests/test_corruptions.py, pinned values). An image without liquid is left unchanged (the script
    divides 0 by 0)."""
    x, c, dtype = _begin(x, "spatter", severity, gen)
    loc, scale, sigma, threshold, intensity, mud = c
    n, _, h, w = x.shape
    draws = torch.randn((n, 1, h, w), generator=gen).double()
    liquid = _gaussian(draws * scale + loc, sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mud:
        m = _gaussian((liquid > threshold).double(), intensity)
        m = torch.where(m < 0.8, torch.zeros_like(m), m).to(device=x.device, dtype=x.dtype)
        return _end(x * (1 - m) + _colour(_MUD, x) * m, dtype)
    # the script's astype(np.uint8): truncation, and values of 256 and more wrap (x86 conversion)
    liquid8 = (liquid * 255).long().remainder(256).to(torch.uint8).numpy()
    m = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        m[i, 0] = liquid8[i, 0] * _water_shading(liquid8[i, 0])
    peak = m.max((2, 3), keepdims=True, initial=0)
    m = np.divide(m, peak, out=np.zeros_like(m), where=peak > 0) * np.float32(intensity)
    m = torch.from_numpy(m).to(device=x.device, dtype=x.dtype)
    return _end(x + m * _colour(_WATER, x), dtype)


# ----------------------------------------------------------------------------------------------
# digital
def brightness(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """HSV value + c (clipped), back to RGB: in closed form RGB * v'/v (black pixels -> grey v');
    1 channel: x + c."""
    x, c, dtype = _begin(x, "brightness", severity, gen)
    if x.shape[1] == 1:
        return _end_fresh(x + c, dtype)
    v = x.amax(1, keepdim=True)
    v2 = (v + c).clamp(0, 1)
    out = x * (v2 / v.clamp_min(1e-12))  # black pixels (v = 0, every channel 0) give exact zeros here ...
    return _end_fresh(out.add_(torch.where(v > 0, 0.0, v2)), dtype)  # ... and v2 after this (+0 elsewhere)


def contrast(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """(x - mean) * c + mean, mean per image and channel over the pixels (make_cifar_c: axis=(0, 1))."""
    x, c, dtype = _begin(x, "contrast", severity, gen)
    mean = x.mean((2, 3), keepdim=True)
    return _end_fresh((x - mean).mul_(c).add_(mean), dtype)


def elastic_transform(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random affine (corner jitter U(-affine, affine), cv2.warpAffine bilinear, REFLECT_101) then
    elastic displacement (U(-1, 1) fields, Gaussian sigma with scipy 'reflect' and truncate 3, times
    alpha) sampled bilinearly (map_coordinates order 1, mode 'reflect'). Constants x image size
    (min(H, W); the script's IMSIZE = 32)."""
    x, c, dtype = _begin(x, "elastic_transform", severity, gen)
    n, ch, h, w = x.shape
    size = min(h, w)
    alpha, sigma, affine = (size * v for v in c)
    cx, cy, sq = float(w // 2), float(h // 2), float(size // 3)
    pts1 = torch.tensor([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], dtype=torch.float64)
    pts2 = pts1 + _uniform64(gen, (n, 3, 2), -affine, affine)
    a = torch.cat([pts1, torch.ones(3, 1, dtype=torch.float64)], 1)       # rows [x, y, 1]
    m = torch.linalg.solve(a, pts2).transpose(1, 2)                          # [n, 2, 3]: dst = M [x, y, 1]
    m3 = torch.cat([m, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(n, 1, 3)], 1)
    inv = torch.linalg.inv(m3)[:, :2]                                        # dst -> src
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], 0).reshape(3, -1)
    src = (inv @ pix).reshape(n, 2, h, w)
    grid = torch.stack([2 * src[:, 0] / (w - 1) - 1, 2 * src[:, 1] / (h - 1) - 1], -1)
    x = F.grid_sample(x, grid.to(device=x.device, dtype=x.dtype), mode="bilinear",
                      padding_mode="reflection", align_corners=True)          # reflection = REFLECT_101
    if alpha > 0:
        fields = _uniform64(gen, (n, 2, h, w), -1, 1).to(device=x.device, dtype=x.dtype)
        d = _gaussian(fields, sigma, mode="symmetric", truncate=3.0) * alpha  # [:, 0] = dx, [:, 1] = dy
        gx = xs.to(device=x.device, dtype=x.dtype) + d[:, 0]
        gy = ys.to(device=x.device, dtype=x.dtype) + d[:, 1]
        grid = torch.stack([(2 * gx + 1) / w - 1, (2 * gy + 1) / h - 1], -1)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                          align_corners=False)                                # reflection = scipy 'reflect'
    return _end(x, dtype)


def pixelate(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Pillow BOX resize to int(size * c), then BOX back to size (in float: no uint8 rounding)."""
    x, c, dtype = _begin(x, "pixelate", severity, gen)
    h, w = x.shape[-2:]
    return _end_fresh(_sep(x, _pixelate_matrix(h, float(c)), _pixelate_matrix(w, float(c))), dtype)


def jpeg_compression(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Real JPEG (libjpeg via torchvision.io, quality c, default 4:2:0 chroma subsampling as Pillow)
    of the image rounded to uint8, per image on the CPU; bit for bit the script's output."""
    x, c, dtype = _begin(x, "jpeg_compression", severity, gen)
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    u8 = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
    if len(u8) == 0:
        return _end(x, dtype)
    encoded = encode_jpeg(list(u8), quality=int(c))
    decoded = decode_jpeg(encoded, mode=ImageReadMode.UNCHANGED)
    return _end(torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255, dtype)


def saturate(x: torch.Tensor, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """HSV saturation * mult + add (clipped), back to RGB: in closed form each channel's distance to the
    max channel scales by s'/s; grey pixels (hue 0 in skimage) become (v, v(1-s'), v(1-s')). 1 channel:
    the luma of that grey result, x * (1 - 0.701 * add) (identity for severities 1-3)."""
    x, c, dtype = _begin(x, "saturate", severity, gen)
    mult, add = c
    if x.shape[1] == 1:
        return _end(x * (1 - (1 - LUMA[0]) * min(max(add, 0.0), 1.0)), dtype)
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    coloured = delta > 0
    s = torch.where(coloured, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s2 = (s * mult + add).clamp(0, 1)
    col = v - (s2 / s.clamp_min(1e-12)) * (v - x)
    grey = torch.cat([v, v * (1 - s2), v * (1 - s2)], 1)
    return _end(torch.where(coloured, col, grey), dtype)


# ----------------------------------------------------------------------------------------------
CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "saturate": saturate, "spatter": spatter,
}
assert tuple(CORRUPTIONS) == CORRUPTION_NAMES, "CORRUPTIONS must list names.CORRUPTIONS in order"
assert RANDOM_CORRUPTIONS <= set(CORRUPTIONS)


def corrupt(x: torch.Tensor, name: str, severity: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Corruption ``name`` (one of names.CORRUPTIONS) at ``severity`` 1..5 of float images [N, C, H, W]
    in [0, 1] (C = 1 or 3, H, W >= 8); ``gen`` a CPU torch.Generator (None only for the deterministic
    corruptions, those not in RANDOM_CORRUPTIONS). Returns a new tensor of the same shape and dtype."""
    return CORRUPTIONS[_check_name(name)](x, severity, gen)


# ----------------------------------------------------------------------------------------------
# the official releases
RELEASES = {  # dataset -> (release name, Zenodo record, archive)
    "cifar10": ("CIFAR-10-C", "https://zenodo.org/record/2535967", "CIFAR-10-C.tar"),
    "cifar100": ("CIFAR-100-C", "https://zenodo.org/record/3555552", "CIFAR-100-C.tar"),
    "tiny-imagenet": ("Tiny-ImageNet-C", "https://zenodo.org/record/2536630", "Tiny-ImageNet-C.tar"),
}



def example_rows(image: torch.Tensor, names: Sequence[str], severities: Sequence[int], seed: int = 0) -> list[torch.Tensor]:
    """One image (uint8 or float [C, H, W]) under each corruption in ``names`` (one row each) at each
    severity: [len(severities), C, H, W] per row, every draw from its own generator seeded ``seed``."""
    x = image[None].float() / 255.0 if image.dtype == torch.uint8 else image[None].float()
    return [torch.cat([corrupt(x, name, s, torch.Generator().manual_seed(seed)) for s in severities])
            for name in names]


def _md5_mapping(md5) -> dict[str, str] | None:
    """md5: None, a mapping {relative path: hex digest}, or an md5sums file ('<hex>  <path>' per line)."""
    if md5 is None:
        return None
    if isinstance(md5, Mapping):
        keys = (str(k).replace(os.sep, "/") for k in md5)
        return {k[2:] if k.startswith("./") else k: str(v).lower() for k, v in zip(keys, md5.values())}
    path = Path(md5)
    if not path.is_file():
        raise FileNotFoundError(f"md5 list not found: {path} (expected lines '<md5>  <file>')")
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 32:
            raise ValueError(f"{path}:{n}: expected '<32-hex md5>  <file>', got {line!r}")
        name = parts[1].strip().lstrip("*")
        out[name[2:] if name.startswith("./") else name] = parts[0].lower()
    return out


def _verify_md5(path: Path, rel: str, mapping: dict[str, str] | None, required: bool) -> None:
    if mapping is None:
        return
    expected = mapping.get(rel)
    if expected is None:
        if required:
            raise ValueError(f"md5 check requested but the md5 list has no entry for {rel!r} "
                             f"(entries: {', '.join(sorted(mapping)[:5])}{', ...' if len(mapping) > 5 else ''})")
        return
    actual = file_md5(path)
    if actual != expected:
        raise ValueError(f"{path}: md5 {actual} does not match the expected {expected}; the file is corrupt "
                         f"or a different version: download it again")


def _missing(path: Path, dataset: str) -> FileNotFoundError:
    release, url, archive = RELEASES[dataset]
    return FileNotFoundError(
        f"{release} file not found: {path}. Download {archive} from {url} and extract it so that "
        f"this path exists (root is the extracted {release}/ folder).")


def load_official(root: str | os.PathLike, name: str, severity: int, dataset: str = "cifar10",
                  md5: Mapping[str, str] | str | os.PathLike | None = None,
                  wnids: Sequence[str] | str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of corruption ``name`` at ``severity`` from an official release.

    CIFAR-10-C / CIFAR-100-C: ``<root>/<name>.npy`` holds N * 5 uint8 HWC images, severity 1 first then
    2..5; ``<root>/labels.npy`` holds the labels (N * 5, repeated per severity, or N). Tiny-ImageNet-C:
    JPEG folders ``<root>/<name>/<severity>/<wnid>/*.JPEG``; labels are positions in ``wnids`` (a list,
    or a wnids.txt path; default ``<root>/wnids.txt``) -- pass the dataset's own tiny-imagenet-200
    wnids.txt so labels match varmix.learn.data's. ``md5``: a mapping {path relative to root: md5} or an
    md5sums-style file; the corruption's .npy must be listed (labels.npy and JPEGs are checked when
    listed). Returns uint8 images [N, C, H, W] and int64 labels [N], in the release's order.
    """
    if dataset not in RELEASES:
        raise ValueError(f"dataset = {dataset!r} has no official corruption release: expected one of "
                         f"{', '.join(RELEASES)} (for others, generate corruptions with corrupt())")
    _check_name(name)
    severity = _check_severity(severity)
    root = Path(root)
    mapping = _md5_mapping(md5)
    if dataset == "tiny-imagenet":
        return _load_tiny_imagenet_c(root, name, severity, mapping, wnids)

    path, labels_path = root / f"{name}.npy", root / "labels.npy"
    for p in (path, labels_path):
        if not p.is_file():
            raise _missing(p, dataset)
    _verify_md5(path, f"{name}.npy", mapping, required=True)
    _verify_md5(labels_path, "labels.npy", mapping, required=False)
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} or {labels_path} is not a readable .npy file ({exc}): download it again") from exc
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] % 5:
        raise ValueError(f"{path}: shape {images.shape} dtype {images.dtype}, expected uint8 [5 * N, H, W, C] "
                         f"(N images per severity 1..5, C = 1 or 3)")
    n = images.shape[0] // 5
    if labels.ndim != 1 or len(labels) not in (n, 5 * n) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_path}: shape {labels.shape} dtype {labels.dtype}, expected integer "
                         f"labels of length {5 * n} (or {n}) to match {path}")
    block = slice((severity - 1) * n, severity * n)
    x = torch.from_numpy(np.array(images[block])).permute(0, 3, 1, 2).contiguous()  # copy off the mmap
    y = torch.from_numpy(np.asarray(labels[block] if len(labels) == 5 * n else labels, dtype=np.int64))
    return x, y


def _load_tiny_imagenet_c(root: Path, name: str, severity: int, mapping, wnids) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    if wnids is None or isinstance(wnids, (str, os.PathLike)):
        wnids_path = Path(wnids) if wnids is not None else root / "wnids.txt"
        if not wnids_path.is_file():
            raise FileNotFoundError(
                f"Tiny-ImageNet-C labels need the class order: {wnids_path} not found. Pass wnids= the list "
                f"(or the path) of tiny-imagenet-200/wnids.txt, the order varmix.learn.data labels classes in.")
        wnids = wnids_path.read_text().split()
    wnids = list(wnids)
    if not wnids or len(set(wnids)) != len(wnids):
        raise ValueError(f"wnids must be a non-empty list of distinct class ids, got {len(wnids)} "
                         f"({len(set(wnids))} distinct)")
    folder = root / name / str(severity)
    if not folder.is_dir():
        raise _missing(folder, "tiny-imagenet")
    unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in set(wnids))
    if unknown:
        raise ValueError(f"{folder}: class folder {unknown[0]!r} is not among the {len(wnids)} wnids given")
    images, labels, checked = [], [], 0
    for label, wnid in enumerate(wnids):
        files = sorted((folder / wnid).glob("*.JPEG")) if (folder / wnid).is_dir() else []
        for f in files:
            rel = f.relative_to(root).as_posix()
            if mapping is not None and rel in mapping:
                _verify_md5(f, rel, mapping, required=True)
                checked += 1
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise ValueError(f"{f} is not a readable JPEG ({exc}): extract the release again") from exc
            if a.shape != (64, 64, 3):
                raise ValueError(f"{f}: image of shape {a.shape}, expected 64x64 RGB (Tiny-ImageNet-C)")
            images.append(a)
            labels.append(label)
    if not images:
        raise ValueError(f"{folder}: no *.JPEG files in any of the {len(wnids)} class folders")
    if mapping is not None and checked == 0:
        raise ValueError(f"md5 check requested but the md5 list has no entry for any file under {folder}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)
