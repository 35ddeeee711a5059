"""varmix.evaluate.corruptions: every corruption x severity on 1- and 3-channel batches, degradation growing with
severity on real Fashion-MNIST images, statistics of the noises, reproducibility from the generator,
agreement with the libraries make_cifar_c.py calls (scipy, Pillow, skimage's HSV via matplotlib), and the
official-release loader on fixtures written here in the releases' exact layouts."""

import hashlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from varmix.core import names
from varmix.evaluate import corruptions as C
from varmix.learn import data

SEVERITIES = (1, 2, 3, 4, 5)
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def fashion():
    """16 real Fashion-MNIST test images [16, 1, 28, 28] (Debian's files)."""
    return data.to_float(data.load_raw("fashion-mnist").test_x[:16])


@pytest.fixture(scope="module")
def fashion_rgb(fashion):
    """The same images tinted (tan object on a blue background) and resized to 3x32x32."""
    tint = torch.tensor([1.0, 0.75, 0.45]).view(1, 3, 1, 1)
    background = torch.tensor([0.09, 0.18, 0.36]).view(1, 3, 1, 1)
    x = fashion * tint + (1 - fashion) * background
    return F.interpolate(x, size=32, mode="bilinear", align_corners=False).clamp(0, 1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def psnr(a, b):
    mse = ((a - b) ** 2).mean((1, 2, 3)).clamp_min(1e-12)
    return (10 * torch.log10(1 / mse)).mean().item()


# ----------------------------------------------------------------------------------------------
def test_names_and_constants_follow_config_and_make_cifar_c():
    assert tuple(C.CORRUPTIONS) == names.CORRUPTIONS == tuple(C.CONSTANTS)
    assert all(len(v) == 5 for v in C.CONSTANTS.values())
    # spot checks against make_cifar_c.py's table (reference.md)
    assert C.CONSTANTS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert C.CONSTANTS["shot_noise"][4] == 50 and C.CONSTANTS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert C.CONSTANTS["snow"][2] == (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9)
    assert C.CONSTANTS["elastic_transform"][1] == (0.05, 0.2, 0.07)
    assert C.CONSTANTS["spatter"][0] == (0.62, 0.1, 0.7, 0.7, 0.5, 0)
    assert C.RANDOM_CORRUPTIONS == {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                                    "glass_blur", "motion_blur", "snow", "frost", "fog",
                                    "elastic_transform", "spatter"}


@pytest.mark.parametrize("name", names.CORRUPTIONS)
def test_every_severity_keeps_shape_dtype_and_range(name):
    for shape in ((4, 1, 28, 28), (4, 3, 32, 32)):
        x = torch.rand(shape, generator=gen(1))
        for s in SEVERITIES:
            y = C.corrupt(x, name, s, gen(s))
            assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1, (name, shape, s)
    # other float dtypes and non-square sizes
    x = torch.rand(2, 3, 40, 36, generator=gen(2), dtype=torch.float64)
    y = C.CORRUPTIONS[name](x, 5, gen())
    assert y.dtype == torch.float64 and y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert C.CORRUPTIONS[name](x.to(torch.bfloat16), 2, gen()).dtype == torch.bfloat16
    assert C.CORRUPTIONS[name](x[:0], 2, gen()).shape == (0, 3, 40, 36)  # empty batch


# PSNR against the clean image must fall from severity 1 to 5, except where make_cifar_c's constants
# themselves are not monotone in pixel error (same seed at every severity, averaged over 16 images):
ALLOWED_PAIRS = {
    # (6, 2) -> (8, 2): the larger radius only adds taps beyond 3 sigma (exp(-i^2 / 8) ~ 0): same kernel
    "motion_blur": {(3, 4)},
    # (0.9, 0.4) -> (0.85, 0.4): only the image weight falls, and the image darkened by 0.05 x lies
    # closer to the clean one where the frost layer brightens it (PSNR 13.2 -> 13.4 dB grey, 13.3 -> 13.9 RGB)
    "frost": {(3, 4)},
    # (0.1, 0) -> (1.5, 0): from near-grey to mildly over-saturated
    "saturate": {(2, 3)},
    # severity 3 is the strongest water spatter, 4 the first (lighter) mud spatter
    "spatter": {(3, 4)},
}


@pytest.mark.parametrize("channels", (1, 3))
@pytest.mark.parametrize("name", names.CORRUPTIONS)
def test_degradation_grows_with_severity(name, channels, fashion, fashion_rgb):
    x = fashion if channels == 1 else fashion_rgb
    p = [psnr(C.corrupt(x, name, s, gen(0)), x) for s in SEVERITIES]
    if name == "saturate" and channels == 1:
        # grey images have no saturation: severities 1-3 (add = 0) leave them unchanged
        assert p[0] == p[1] == p[2] > 100 and p[2] > p[3] > p[4]
        return
    assert max(p) < 50, (name, p)  # every severity changes the images
    if name == "glass_blur":
        # more blur at the same iteration count smooths the shuffle (PSNR rises 1 -> 2 -> 3 and 4 -> 5);
        # the second shuffle iteration (severities 4, 5) is what degrades
        assert max(p[3:]) < min(p[:3]) - 1, p
        return
    if name == "elastic_transform":
        # the affine jitter shrinks (0.08 -> 0.03 x size) while the elastic field stays sub-pixel, so
        # pixel error falls with severity in make_cifar_c too (see test_elastic_transform_matches_scipy_port)
        assert p[0] < p[4], p
        return
    for s in range(1, 5):
        if (s, s + 1) in ALLOWED_PAIRS.get(name, ()):
            continue
        assert p[s - 1] > p[s], f"{name} {channels}ch: PSNR {p[s - 1]:.2f} at {s} <= {p[s]:.2f} at {s + 1}"
    if name == "motion_blur":
        assert abs(p[2] - p[3]) < 0.1


# ----------------------------------------------------------------------------------------------
# statistics
@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_noise_std(severity):
    x = torch.full((8, 3, 32, 32), 0.5)
    noise = C.gaussian_noise(x, severity, gen(severity)) - 0.5
    c = C.CONSTANTS["gaussian_noise"][severity - 1]
    assert abs(noise.mean().item()) < 0.01 * 0.5
    assert noise.std().item() == pytest.approx(c, rel=0.03)
    speckle = C.speckle_noise(x, severity, gen(severity)) - 0.5
    assert speckle.std().item() == pytest.approx(0.5 * C.CONSTANTS["speckle_noise"][severity - 1], rel=0.03)


def test_shot_and_impulse_noise_statistics():
    x = torch.full((32, 3, 32, 32), 0.3)  # 98k values: the impulse fraction within ~5% (> 3 sigma)
    for s in (1, 5):
        rate = C.CONSTANTS["shot_noise"][s - 1]
        y = C.shot_noise(x, s, gen(s))
        assert y.mean().item() == pytest.approx(0.3, abs=0.005)
        assert y.var().item() == pytest.approx(0.3 / rate, rel=0.06)           # Poisson: var = mean
        assert torch.allclose(y * rate, (y * rate).round(), atol=1e-3)           # counts / rate
        amount = C.CONSTANTS["impulse_noise"][s - 1]
        z = C.impulse_noise(x, s, gen(s))
        flipped = z != 0.3
        assert flipped.float().mean().item() == pytest.approx(amount, rel=0.1)
        assert set(z[flipped].unique().tolist()) == {0.0, 1.0}
        assert (z[flipped] == 1).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_contrast_keeps_the_per_image_mean():
    x = torch.rand(6, 3, 32, 32, generator=gen(3)) * 0.5 + 0.25   # no clamping at any severity
    x[:, 1] *= 0.5                                                # channels with different means
    for s in SEVERITIES:
        y = C.contrast(x, s)
        torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)))
        torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)))  # make_cifar_c: per channel too
        c = C.CONSTANTS["contrast"][s - 1]
        torch.testing.assert_close(y.std((2, 3)), c * x.std((2, 3)))


def test_brightness_and_fog_on_grey():
    x = torch.rand(4, 1, 28, 28, generator=gen(4)) * 0.5
    torch.testing.assert_close(C.brightness(x, 5), x + 0.3)
    for s in (1, 5):
        y = C.fog(x, s, gen(0))
        # fog adds a plasma fractal and rescales by max / (max + strength): the maximum never grows,
        # dark pixels are lifted and bright ones dimmed, so contrast falls
        assert (y.amax((1, 2, 3)) <= x.amax((1, 2, 3)) + 1e-6).all()
        assert ((y - x).amax((1, 2, 3)) > 0.02).all() and ((y - x).amin((1, 2, 3)) < -0.02).all()
        assert (y.std((1, 2, 3)) < x.std((1, 2, 3))).all()


# ----------------------------------------------------------------------------------------------
# randomness
@pytest.mark.parametrize("name", names.CORRUPTIONS)
def test_same_seed_same_output_and_seeds_differ(name, fashion_rgb):
    x = fashion_rgb[:4]
    a = C.corrupt(x, name, 3, gen(7))
    torch.testing.assert_close(a, C.corrupt(x, name, 3, gen(7)), rtol=0, atol=0)
    b = C.corrupt(x, name, 3, gen(8))
    if name in C.RANDOM_CORRUPTIONS:
        assert not torch.equal(a, b)
        with pytest.raises(ValueError, match="torch.Generator"):
            C.corrupt(x, name, 3, None)
    else:
        assert torch.equal(a, b)
        assert torch.equal(a, C.corrupt(x, name, 3, None))


def test_generator_state_advances_so_batches_differ():
    g = gen(0)
    x = torch.full((2, 1, 16, 16), 0.5)
    assert not torch.equal(C.gaussian_noise(x, 1, g), C.gaussian_noise(x, 1, g))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", names.CORRUPTIONS)
def test_cpu_and_gpu_see_the_same_random_numbers(name, fashion_rgb):
    x = fashion_rgb[:4]
    cpu = C.corrupt(x, name, 4, gen(5))
    gpu = C.corrupt(x.cuda(), name, 4, gen(5))
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().mean().item() < 1e-3


# ----------------------------------------------------------------------------------------------
# agreement with the libraries make_cifar_c.py uses
def test_gaussian_blur_matches_skimage_gaussian(fashion_rgb):
    x = fashion_rgb[:3].double()
    for s in SEVERITIES:
        sigma = C.CONSTANTS["gaussian_blur"][s - 1]
        ref = ndimage.gaussian_filter(x.numpy(), (0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(C.gaussian_blur(x, s).numpy(), np.clip(ref, 0, 1), atol=1e-12)


def _clipped_zoom(img, z):  # make_cifar_c.py's clipped_zoom, HWC
    h = img.shape[0]
    ch = int(np.ceil(h / z))
    top = (h - ch) // 2
    img = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def test_zoom_blur_matches_scipy_zoom(fashion):
    x = fashion[:2].double()
    for s in (1, 5):
        zooms = np.arange(1, C.CONSTANTS["zoom_blur"][s - 1], 0.01)
        refs = []
        for im in x.permute(0, 2, 3, 1).numpy():
            refs.append((im + sum(_clipped_zoom(im, z) for z in zooms)) / (len(zooms) + 1))
        ref = np.clip(np.stack(refs), 0, 1).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(C.zoom_blur(x, s).numpy(), ref, atol=1e-12)


def test_pixelate_matches_pillow_box(fashion_rgb):
    u8 = (fashion_rgb[:3] * 255).round().byte()
    x = u8.float() / 255
    for s in SEVERITIES:
        c = C.CONSTANTS["pixelate"][s - 1]
        ref = [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((int(32 * c),) * 2, Image.BOX)
                          .resize((32, 32), Image.BOX)) for im in u8]
        ref = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).float()
        # Pillow rounds to uint8 after each of its passes; varmix stays float
        assert (C.pixelate(x, s) * 255 - ref).abs().max() <= 1.0 + 1e-4


def test_jpeg_matches_pillow(fashion, fashion_rgb):
    for x in (fashion[:3], (fashion_rgb[:3] * 255).round() / 255):
        for s in (1, 5):
            q = C.CONSTANTS["jpeg_compression"][s - 1]
            refs = []
            for im in (x * 255).round().byte().permute(0, 2, 3, 1).numpy():
                buf = io.BytesIO()
                Image.fromarray(im[..., 0] if im.shape[2] == 1 else im).save(buf, "JPEG", quality=q)
                r = np.asarray(Image.open(buf))
                refs.append(r[..., None] if r.ndim == 2 else r)
            ref = torch.from_numpy(np.stack(refs)).permute(0, 3, 1, 2).float() / 255
            y = C.jpeg_compression(x, s)
            assert not torch.equal(y, x)
            assert (y - ref).abs().max() <= 1 / 255 + 1e-6


def test_brightness_and_saturate_match_the_hsv_round_trip():
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv  # the same formulas as skimage.color

    x = torch.rand(3, 3, 16, 16, generator=gen(6), dtype=torch.float64)
    x[0, :, :4] = 0.5  # grey pixels: hue 0, so saturate tints them red
    x[0, :, 4:6] = 0.0
    hwc = x.permute(0, 2, 3, 1).numpy()
    for s in SEVERITIES:
        hsv = rgb_to_hsv(hwc)
        hsv[..., 2] = np.clip(hsv[..., 2] + C.CONSTANTS["brightness"][s - 1], 0, 1)
        np.testing.assert_allclose(C.brightness(x, s).permute(0, 2, 3, 1).numpy(),
                                   np.clip(hsv_to_rgb(hsv), 0, 1), atol=1e-12)
        mult, add = C.CONSTANTS["saturate"][s - 1]
        hsv = rgb_to_hsv(hwc)
        hsv[..., 1] = np.clip(hsv[..., 1] * mult + add, 0, 1)
        np.testing.assert_allclose(C.saturate(x, s).permute(0, 2, 3, 1).numpy(),
                                   np.clip(hsv_to_rgb(hsv), 0, 1), atol=1e-12)


def test_elastic_transform_matches_scipy_port(fashion_rgb):
    """make_cifar_c's elastic_transform with warpAffine as scipy's affine_transform (mode 'mirror' =
    OpenCV REFLECT_101), replaying the generator's draws in varmix's order (affine jitter, then fields)."""
    x = fashion_rgb[:2].double()
    n, size = len(x), 32
    for s in SEVERITIES:
        out = C.elastic_transform(x, s, gen(s)).numpy()
        alpha, sigma, affine = (size * v for v in C.CONSTANTS["elastic_transform"][s - 1])
        g = gen(s)
        jitter = (torch.rand((n, 3, 2), generator=g, dtype=torch.float64) * 2 * affine - affine).numpy()
        fields = (torch.rand((n, 2, size, size), generator=g, dtype=torch.float64) * 2 - 1).numpy()
        for i, image in enumerate(x.permute(0, 2, 3, 1).numpy()):
            centre, sq = np.float32((size, size)) // 2, size // 3
            pts1 = np.float64([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
            m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts1 + jitter[i]).T      # cv2.getAffineTransform
            inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
            swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])                     # (x, y) -> (row, col)
            rc = swap @ inv @ swap
            warped = np.stack([ndimage.affine_transform(image[..., k], rc[:2, :2], offset=rc[:2, 2], order=1,
                                                        mode="mirror") for k in range(3)], -1)
            if alpha > 0:
                dx = ndimage.gaussian_filter(fields[i, 0], sigma, mode="reflect", truncate=3) * alpha
                dy = ndimage.gaussian_filter(fields[i, 1], sigma, mode="reflect", truncate=3) * alpha
                xx, yy, zz = np.meshgrid(np.arange(size), np.arange(size), np.arange(3))
                idx = (yy + dy[..., None]).reshape(-1, 1), (xx + dx[..., None]).reshape(-1, 1), zz.reshape(-1, 1)
                warped = ndimage.map_coordinates(warped, idx, order=1, mode="reflect").reshape(image.shape)
            np.testing.assert_allclose(out[i], np.clip(warped, 0, 1).transpose(2, 0, 1), atol=1e-9)


# ----------------------------------------------------------------------------------------------
# pinned against make_cifar_c.py itself: tests/data/make_expected_corruptions.py ran the script's functions
# on two fixed images with varmix's own random draws fed in, and stored its outputs (levels, 1/256 fixed
# point); varmix must stay within what the script's own rounding needs (docs/DEPARTURES.md, section Corruptions)
_spec = importlib.util.spec_from_file_location("make_expected_corruptions", DATA / "make_expected_corruptions.py")
MAKE_EXPECTED = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MAKE_EXPECTED)
EXACT = 0.005  # levels: fixed-point storage (1/512) and float32 rounding
# the script's uint8 steps varmix keeps in float: Pillow's uint8 between BOX passes, ImageMagick's 8-bit
# motion blur output, and glass blur's uint8 cast of float64 values within 1e-5 of a level
WITHIN_ONE_LEVEL = {"pixelate", "motion_blur", "glass_blur"}


@pytest.fixture(scope="module")
def expected():
    with np.load(DATA / "corruptions_expected.npz") as f:
        return {k: f[k] for k in f.files}


def _levels(y: torch.Tensor) -> np.ndarray:
    return y[0].double().numpy() * 255


@pytest.mark.parametrize("name", names.CORRUPTIONS)
def test_matches_make_cifar_c_on_pinned_images(name, expected):
    k = names.CORRUPTIONS.index(name)
    want = expected[name].astype(np.float64) / MAKE_EXPECTED.FIXED_POINT      # [5, 2, 3, 32, 32]
    tol = 1 + EXACT if name in WITHIN_ONE_LEVEL else EXACT
    for s in SEVERITIES:
        for i, img in enumerate(expected["inputs"]):
            x = torch.from_numpy(img).float()[None] / 255
            got = _levels(C.corrupt(x, name, s, gen(MAKE_EXPECTED.seed_of(k, s, i))))
            diff = np.abs(got - want[s - 1, i])
            assert diff.max() <= tol, f"{name} severity {s} image {i}: {diff.max():.4f} levels off the script"
            if name in WITHIN_ONE_LEVEL:
                assert diff.mean() < 0.6, (name, s, i, diff.mean())


def test_spatter_wraps_like_the_scripts_uint8_cast(expected):
    """Severity 3 with a seed whose liquid layer exceeds 255 / 255: the script's astype(np.uint8) wraps
    it modulo 256, so the blob's brightest spot becomes dark in the water shading."""
    seed = int(expected["spatter_wrap_seed"])
    loc, scale, sigma = C.CONSTANTS["spatter"][2][:3]
    z = torch.randn((1, 1, 32, 32), generator=gen(seed)).double()
    assert C._gaussian(z * scale + loc, sigma).max() * 255 >= 256  # the seed does wrap
    x = torch.from_numpy(expected["inputs"][0]).float()[None] / 255
    want = expected["spatter_wrap"][0].astype(np.float64) / MAKE_EXPECTED.FIXED_POINT
    assert np.abs(_levels(C.spatter(x, 3, gen(seed))) - want).max() <= EXACT


def test_frost_blends_a_crop_of_the_photographs(fashion):
    """Per image: c0 x + c1 crop with the crop from one of the five 0.2-scaled photographs; grey images
    get the crop's luma; sizes whose crop does not fit a scaled photograph use a larger scale."""
    x = fashion[:6] * 0.3                                       # no clipping at any severity
    rgb = x.expand(-1, 3, -1, -1)
    c0, c1 = C.CONSTANTS["frost"][2]
    crop = (C.frost(rgb, 3, gen(4)) - c0 * rgb) / c1           # same draws for both calls
    grey = C.frost(x, 3, gen(4))
    luma = (crop * torch.tensor(C.LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(grey, c0 * x + c1 * luma, atol=1e-5, rtol=0)
    assert crop.std((2, 3)).min() > 0.01                        # textured crops, not a flat tint
    assert len({tuple(c.flatten()[:20].tolist()) for c in crop}) == 6  # a different crop per image
    stack, sizes = C._frost_photos(64, 64)
    assert stack.shape[0] == 5 and (sizes > 64).all()
    assert sizes.tolist()[0] == [120, 180]                      # frost1.png 900 x 600 at 0.2
    assert C.frost(torch.rand(2, 3, 64, 64, generator=gen(1)), 1, gen(2)).shape == (2, 3, 64, 64)


def test_frost_photographs_missing_or_damaged(monkeypatch):
    import importlib.metadata

    x = torch.rand(1, 3, 32, 32, generator=gen(0))
    C._frost_photos.cache_clear()
    try:
        def missing(name):
            raise importlib.metadata.PackageNotFoundError(name)
        monkeypatch.setattr(importlib.metadata, "distribution", missing)
        with pytest.raises(FileNotFoundError, match=r"frost1.png.*pip install --no-deps imagecorruptions"):
            C.frost(x, 1, gen())
        monkeypatch.undo()
        monkeypatch.setitem(C.FROST_PHOTOS, "frost3.png", "0" * 32)
        with pytest.raises(ValueError, match=r"frost3.png: md5 b3ed8eb1\w+ does not match the expected 0{32}"):
            C.frost(x, 1, gen())
    finally:
        C._frost_photos.cache_clear()


def test_motion_blur_spreads_a_point_along_a_one_sided_line():
    x = torch.zeros(6, 1, 33, 33)
    x[:, :, 16, 16] = 1.0
    for s in (1, 5):
        radius, _ = C.CONSTANTS["motion_blur"][s - 1]
        width = 2 * int(np.ceil(radius)) + 1
        y = C.motion_blur(x, s, gen(s))
        for img in y[:, 0]:
            assert img.sum().item() == pytest.approx(1.0, abs=1e-5)   # normalised kernel
            rows, cols = torch.nonzero(img > 1e-6, as_tuple=True)
            assert len(rows) <= width
            assert (cols <= 16).all()                          # angle in (-45, 45): the blur trails left
            assert ((rows - 16) ** 2 + (cols - 16) ** 2).max() <= (width - 1) ** 2 + 1
            assert img[16, 16] == img.max()                    # the one-sided Gaussian peaks at offset 0


def test_glass_blur_moves_pixels_locally():
    """Severity 1 (sigma 0.05: no blur): every interior pixel takes the uint8-quantised value of itself
    or an up/left neighbour (make_cifar_c's randint(-1, 1) offsets), whole pixels at once; the two
    first rows and columns (outside the script's loop range) stay."""
    x = torch.rand(3, 3, 20, 20, generator=gen(9))
    q = torch.floor(x * 255) / 255
    y = C.glass_blur(x, 1, gen(1))
    torch.testing.assert_close(y[:, :, :2], q[:, :, :2])
    torch.testing.assert_close(y[:, :, :, :2], q[:, :, :, :2])
    candidates = [q[:, :, 2 + dy: 20 + dy, 2 + dx: 20 + dx] for dy in (-1, 0) for dx in (-1, 0)]
    inner = y[:, :, 2:, 2:]
    match = torch.stack([(inner - c).abs().amax(1) < 1e-6 for c in candidates]).any(0)
    assert match.all()
    assert (inner - q[:, :, 2:, 2:]).abs().amax(1).gt(0).float().mean() > 0.5  # most pixels moved


# ----------------------------------------------------------------------------------------------
# errors
def test_bad_arguments_are_rejected_before_work():
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown corruption 'blur'.*gaussian_noise.*spatter"):
        C.corrupt(x, "blur", 1, gen())
    for bad in (0, 6, 2.0, True, "3"):
        with pytest.raises(ValueError, match="severity"):
            C.corrupt(x, "gaussian_noise", bad, gen())
    with pytest.raises(ValueError, match="uint8"):
        C.corrupt((x * 255).byte(), "contrast", 1, None)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        C.corrupt(x * 2, "contrast", 1, None)
    with pytest.raises(ValueError, match=r"expected \[0, 1\]"):
        C.corrupt(torch.full((1, 1, 16, 16), float("nan")), "contrast", 1, None)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        C.corrupt(torch.rand(2, 2, 32, 32), "contrast", 1, None)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        C.corrupt(torch.rand(3, 32, 32), "contrast", 1, None)
    with pytest.raises(ValueError, match="too small"):
        C.corrupt(torch.rand(1, 1, 4, 4), "contrast", 1, None)
    with pytest.raises(ValueError, match="torch.Generator"):
        C.corrupt(x, "fog", 1, 0)
    with pytest.raises(ValueError, match="torch.Tensor"):
        C.corrupt(x.numpy(), "fog", 1, gen())


# ----------------------------------------------------------------------------------------------
# official releases
def write_cifar_c(root, name="gaussian_noise", n=7, repeat_labels=True):
    """CIFAR-10-C's layout: <name>.npy with n images per severity 1..5 (HWC uint8), labels.npy."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.zeros((5 * n, 32, 32, 3), np.uint8)
    for k in range(5 * n):
        images[k] = k              # image i of severity s holds (s - 1) * n + i
    images[:, 0, 0] = [10, 20, 30]  # channel order check
    labels = np.array([3, 1, 4, 1, 5, 9, 2][:n] * (5 if repeat_labels else 1), np.uint8)
    np.save(root / f"{name}.npy", images)
    np.save(root / "labels.npy", labels)
    return labels[:n]


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_load_official_cifar_slices_severities(tmp_path):
    labels = write_cifar_c(tmp_path)
    for s in SEVERITIES:
        x, y = C.load_official(tmp_path, "gaussian_noise", s)
        assert x.shape == (7, 3, 32, 32) and x.dtype == torch.uint8
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
        assert x[:, 0, 5, 5].tolist() == [(s - 1) * 7 + i for i in range(7)]
        assert x[0, :, 0, 0].tolist() == [10, 20, 30]
    write_cifar_c(tmp_path / "short", repeat_labels=False)   # labels given once
    assert C.load_official(tmp_path / "short", "gaussian_noise", 4)[1].tolist() == labels.tolist()


def test_load_official_checks_md5(tmp_path):
    write_cifar_c(tmp_path)
    npy = tmp_path / "gaussian_noise.npy"
    good = {"gaussian_noise.npy": md5(npy), "labels.npy": md5(tmp_path / "labels.npy")}
    assert C.load_official(tmp_path, "gaussian_noise", 2, md5=good)[0].shape == (7, 3, 32, 32)
    sums = tmp_path / "md5sums.txt"
    sums.write_text("".join(f"{v}  ./{k}\n" for k, v in good.items()))
    assert C.load_official(tmp_path, "gaussian_noise", 2, md5=sums)[0].shape == (7, 3, 32, 32)
    wrong = dict(good, **{"gaussian_noise.npy": "0" * 32})
    with pytest.raises(ValueError, match=f"gaussian_noise.npy: md5 {good['gaussian_noise.npy']}.*expected {'0' * 32}"):
        C.load_official(tmp_path, "gaussian_noise", 2, md5=wrong)
    with pytest.raises(ValueError, match="labels.npy: md5"):
        C.load_official(tmp_path, "gaussian_noise", 2, md5=dict(good, **{"labels.npy": "f" * 32}))
    with pytest.raises(ValueError, match="no entry for 'gaussian_noise.npy'"):
        C.load_official(tmp_path, "gaussian_noise", 2, md5={"labels.npy": good["labels.npy"]})


def test_load_official_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"snow.npy.*zenodo.org/record/2535967"):
        C.load_official(tmp_path, "snow", 1)
    with pytest.raises(FileNotFoundError, match="3555552"):
        C.load_official(tmp_path, "snow", 1, dataset="cifar100")
    with pytest.raises(FileNotFoundError, match="2536630"):
        C.load_official(tmp_path, "snow", 1, dataset="tiny-imagenet", wnids=["n0"])
    with pytest.raises(ValueError, match="fashion-mnist.*corrupt\\(\\)"):
        C.load_official(tmp_path, "snow", 1, dataset="fashion-mnist")
    with pytest.raises(ValueError, match="unknown corruption"):
        C.load_official(tmp_path, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        C.load_official(tmp_path, "snow", 6)
    np.save(tmp_path / "fog.npy", np.zeros((12, 32, 32, 3), np.uint8))  # not 5 severities
    np.save(tmp_path / "labels.npy", np.zeros(12, np.uint8))
    with pytest.raises(ValueError, match=r"fog.npy: shape \(12, 32, 32, 3\)"):
        C.load_official(tmp_path, "fog", 1)
    np.save(tmp_path / "fog.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="labels.npy: shape"):
        C.load_official(tmp_path, "fog", 1)
    (tmp_path / "fog.npy").write_bytes(b"not a npy file")
    with pytest.raises(ValueError, match="not a readable .npy"):
        C.load_official(tmp_path, "fog", 1)


def test_load_official_tiny_imagenet_folders(tmp_path):
    """Tiny-ImageNet-C's layout: <name>/<severity>/<wnid>/*.JPEG, 64x64 (some grey)."""
    colours = {"n02": (200, 40, 40), "n01": (30, 60, 220)}
    for wnid, colour in colours.items():
        folder = tmp_path / "frost" / "3" / wnid
        folder.mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (64, 64), colour).save(folder / f"val_{k}.JPEG", quality=95)
    Image.new("L", (64, 64), 128).save(tmp_path / "frost" / "3" / "n01" / "val_9.JPEG")
    (tmp_path / "wnids.txt").write_text("n02\nn01\nn03\n")
    x, y = C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet")
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 1, 1, 1]                     # wnids.txt order, not folder order
    assert (x[0].float().mean((1, 2)) - torch.tensor([200.0, 40, 40])).abs().max() < 4
    assert (x[4].float() - 128).abs().max() < 3              # grey JPEG read as RGB
    _, y2 = C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet", wnids=["n01", "n02"])
    assert y2.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="'n02' is not among"):
        C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet", wnids=["n01"])
    rel = "frost/3/n02/val_0.JPEG"
    C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet", md5={rel: md5(tmp_path / rel)})
    with pytest.raises(ValueError, match="val_0.JPEG: md5"):
        C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet", md5={rel: "0" * 32})
    (tmp_path / "wnids.txt").unlink()
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        C.load_official(tmp_path, "frost", 3, dataset="tiny-imagenet")
