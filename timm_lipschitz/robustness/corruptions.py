"""Common corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019), computed on the fly for any dataset.

The 15 benchmark corruptions and its 4 extra ones at five severities, with the constants of the authors'
``make_cifar_c.py`` (the CIFAR-10-C constants, for images up to 64 px; ImageNet-C's differ). Written here in numpy /
scipy / PIL / torch because no maintained library fits: ``imagecorruptions`` 1.1.2 does not import with today's
numpy and scikit-image, its fork ``imagecorruptions-imaug`` uses ImageNet-C's constants and numpy's global random
state, and kornia's operations are differentiable stand-ins, not the published ones (its JPEG is not a JPEG codec).
Every function follows the published definition; the tests check each against a reference computation (scipy's
filters, the noise families' moments, closed forms).

Determinism: the random parts of one (seed, image index, corruption, severity) come from a generator seeded by the
``corruption`` stream of :mod:`timm_lipschitz.seeding`, so a corrupted image is the same whatever the batch,
process or device. Gaussian noise is the evaluation protocol's ``cifar10c_gaussian`` preset, the very same code
path: a unit draw of the ``evaluation_noise`` stream scaled by the severity's sigma, clipped and stored as uint8.
Every output is clipped to [0, 1] and truncated to uint8 levels (``np.uint8(...)``, how CIFAR-10-C stored its
images; :func:`~timm_lipschitz.protocol.to_uint8_levels`).

Other sizes: CIFAR-10-C's constants hold for images up to 64 px, as published. Constants in pixels (blur radii and
sigmas, the glass-blur displacement, the motion-blur length) stay in pixels, so on 16 px images a blur spans twice
the fraction of the image it spans on 32 px ones; constants that make_cifar_c writes relative to the image (zoom
factors, pixelation, contrast, the elastic parameters as fractions of the side) scale with it; glass blur shuffles
every interior pixel and the fog fractal is drawn at the image's size (the next power of two, cropped). One-channel images: brightness and saturation act on the gray value through RGB (the image
replicated, converted, and turned back to gray with ITU-R 601 luma; saturation of a gray image has hue 0, so its
severities 4-5 shift the gray level as CIFAR-10-C's red tint does); snow's "grayscale" is the image itself; JPEG is a
grayscale JPEG; spatter's colours are taken to gray.

Missing: ``frost`` needs the benchmark's six frost photographs, which no maintained, installable library ships
(``imagecorruptions`` bundles them but is unmaintained and no longer imports); it is listed and reported as missing.
Approximated: ``spatter`` at severities 1-3 draws its water outlines with OpenCV's Canny edges and an L2 distance
transform (mask 5); here the edges are the liquid blobs' boundaries and the distance is scipy's exact Euclidean one.
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import (affine_transform, binary_erosion, distance_transform_edt, map_coordinates, uniform_filter,
                           zoom)

from ..errors import UsageError
from ..modes import eval_mode
from ..normalization import Normalizer, warn_if_not_pixels
from ..protocol import CIFAR10C_GAUSSIAN, SEVERITIES, to_uint8_levels
from ..seeding import stream_seed
from .noise import batch_unit_noise, indexed_batches, noisy_images

__all__ = ['CORRUPTIONS', 'BENCHMARK', 'EXTRA', 'FAMILIES', 'MISSING', 'SEVERITIES', 'CORRUPTION_IDS', 'check_severity', 'corrupt', 'corrupt_batch',
           'resolve_corruptions', 'corruption_sweep', 'corruption_names', 'gaussian_kernel1d', 'disk_kernel',
           'motion_kernel', 'clipped_zoom']

LUMA = np.array([0.299, 0.587, 0.114])

# ---- helpers ------------------------------------------------------------------------------------------------------


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel (radius ``int(truncate * sigma + 0.5)``), normalized."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _conv2d(x: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Correlate every (N, C) plane of ``x`` with a 2D kernel; ``mode`` 'edge' (scipy 'nearest') or 'reflect'
    (OpenCV's BORDER_REFLECT_101)."""
    kh, kw = kernel.shape
    t = torch.from_numpy(x.reshape(-1, 1, *x.shape[-2:]))
    pad = (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2)
    t = torch.nn.functional.pad(t, pad, mode='replicate' if mode == 'edge' else 'reflect')
    out = torch.nn.functional.conv2d(t, torch.from_numpy(kernel)[None, None].to(t.dtype))
    return out.numpy().reshape(x.shape)


def gaussian_blur_planes(x: np.ndarray, sigma: float, truncate: float = 4.0, mode: str = 'edge') -> np.ndarray:
    """skimage/scipy ``gaussian(..., sigma)`` on every plane (never across channels), separable."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate)
    return _conv2d(_conv2d(x, k[None, :], mode), k[:, None], mode)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c's ``disk``: an aliased disk on a 17x17 grid (radius <= 8), normalized, then OpenCV's 3x3
    Gaussian blur with sigma ``alias_blur`` (BORDER_REFLECT_101)."""
    r = np.arange(-8, 9) if radius <= 8 else np.arange(-np.ceil(radius), np.ceil(radius) + 1)
    xx, yy = np.meshgrid(r, r)
    d = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    d /= d.sum()
    ksize = 3 if radius <= 8 else 5
    g = np.exp(-0.5 * (np.arange(ksize) - ksize // 2) ** 2 / alias_blur ** 2)
    g /= g.sum()
    return _conv2d(d[None, None], np.outer(g, g), 'reflect')[0, 0]


def motion_kernel(radius: float, sigma: float, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    """ImageMagick's MotionBlurImage (what make_cifar_c calls through Wand): ``2 ceil(radius) + 1`` taps along the
    angle, one-sided Gaussian weights exp(-i^2 / 2 sigma^2) normalized; returns (weights, integer offsets (dy, dx))."""
    width = int(2 * np.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    w = np.exp(-(i ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    a = np.deg2rad(angle)
    px, py = width * np.sin(a), width * np.cos(a)
    hyp = np.hypot(px, py)
    dx = np.ceil(i * py / hyp - 0.5).astype(int)
    dy = np.ceil(i * px / hyp - 0.5).astype(int)
    return w, np.stack([dy, dx], 1)


def _motion_blur(plane: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """One (H, W) plane blurred along a line (pixels beyond the border repeat the edge, ImageMagick's default)."""
    w, offsets = motion_kernel(radius, sigma, angle)
    h, wd = plane.shape
    m = int(np.abs(offsets).max())
    padded = np.pad(plane, m, mode='edge')
    out = np.zeros_like(plane)
    for weight, (dy, dx) in zip(w, offsets):
        out += weight * padded[m + dy:m + dy + h, m + dx:m + dx + wd]
    return out


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    """make_cifar_c's ``clipped_zoom`` of an (H, W, C) array: crop the centre, zoom with scipy's order-1 spline, trim."""
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = zoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def _rgb2hsv(rgb: np.ndarray) -> np.ndarray:
    """scikit-image's rgb2hsv, channels last."""
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(delta > 0, delta, 1)
    h = np.where(r == v, (g - b) / safe, np.where(g == v, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(delta > 0, (h / 6) % 1, 0)
    return np.stack([h, s, v], -1)


def _hsv2rgb(hsv: np.ndarray) -> np.ndarray:
    """scikit-image's hsv2rgb, channels last."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    hi = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros_like(hsv)
    for k, c in enumerate(choices):
        out = np.where((hi == k)[..., None], c, out)
    return out


def _through_rgb(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply an RGB (H, W, 3) operation to a (C, H, W) image; one channel goes through RGB and back by luma."""
    rgb = np.repeat(x, 3, 0) if x.shape[0] == 1 else x
    out = fn(rgb.transpose(1, 2, 0)).transpose(2, 0, 1)
    return (out * LUMA[:, None, None]).sum(0, keepdims=True) if x.shape[0] == 1 else out


def _to_pil(x: np.ndarray):
    u8 = np.uint8(np.clip(x, 0, 1) * 255)
    return Image.fromarray(u8[0], mode='L') if x.shape[0] == 1 else Image.fromarray(u8.transpose(1, 2, 0), 'RGB')


def _from_pil(img, channels: int) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64) / 255
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def plasma_fractal(mapsize: int, wibbledecay: float, rng: np.random.Generator) -> np.ndarray:
    """make_cifar_c's diamond-square height map in [0, 1] (``mapsize`` a power of two)."""
    maparray = np.empty((mapsize, mapsize))
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


# ---- the corruptions: (C, H, W) float64 in [0, 1] -> same, given the severity's constants and a generator ----------


def shot_noise(x, c, rng):
    return np.clip(rng.poisson(x * c) / c, 0, 1)


def impulse_noise(x, c, rng):
    """scikit-image's 's&p' noise: each value flips with probability c, to 1 or 0 with equal chance."""
    flipped = rng.random(x.shape) < c
    salted = rng.random(x.shape) < 0.5
    return np.where(flipped, salted.astype(x.dtype), x)


def speckle_noise(x, c, rng):
    return np.clip(x + x * rng.normal(size=x.shape, scale=c), 0, 1)


def gaussian_blur(x, c, rng):
    return np.clip(gaussian_blur_planes(x[None], c)[0], 0, 1)


def glass_blur(x, c, rng):
    """Blur, shuffle pixels locally (CIFAR-10-C's tuple assignment of numpy views copies rather than swaps: each
    visited pixel takes its neighbour's value), blur again."""
    sigma, delta, iterations = c
    u = np.floor(np.clip(gaussian_blur_planes(x[None], sigma)[0], 0, 1) * 255)
    h, w = x.shape[-2:]
    for _ in range(iterations):
        for hh in range(h - delta, delta, -1):
            for ww in range(w - delta, delta, -1):
                dx, dy = rng.integers(-delta, delta, size=(2,))
                u[:, hh, ww] = u[:, hh + dy, ww + dx]
    return np.clip(gaussian_blur_planes(u[None] / 255, sigma)[0], 0, 1)


def defocus_blur(x, c, rng):
    return np.clip(_conv2d(x[None], disk_kernel(c[0], c[1]), 'reflect')[0], 0, 1)


def motion_blur(x, c, rng):
    angle = rng.uniform(-45, 45)
    u8 = np.uint8(np.clip(x, 0, 1) * 255) / 255  # make_cifar_c blurs the PNG of the uint8 image
    out = np.stack([_motion_blur(p, c[0], c[1], angle) for p in u8])
    return np.clip(out, 0, 1)


def zoom_blur(x, c, rng):
    img = x.transpose(1, 2, 0).astype(np.float32)
    out = np.zeros_like(img)
    for z in c:
        out += clipped_zoom(img, z)
    return np.clip(((img + out) / (len(c) + 1)).transpose(2, 0, 1), 0, 1)


def snow(x, c, rng):
    h, w = x.shape[-2:]
    layer = rng.normal(size=(h, w), loc=c[0], scale=c[1])
    layer = clipped_zoom(layer[..., None], c[2])[..., 0]
    layer[layer < c[3]] = 0
    layer = np.uint8(np.clip(layer, 0, 1) * 255) / 255  # make_cifar_c blurs the PNG of the snow layer
    layer = _motion_blur(layer, c[4], c[5], rng.uniform(-135, -45))
    layer = np.uint8(np.clip(layer, 0, 1) * 255) / 255
    gray = (x * LUMA[:, None, None]).sum(0, keepdims=True) if x.shape[0] == 3 else x
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1)


def fog(x, c, rng):
    h, w = x.shape[-2:]
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    max_val = x.max()
    x = x + c[0] * plasma_fractal(size, c[1], rng)[:h, :w]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1)


def brightness(x, c, rng):
    def fn(rgb):
        hsv = _rgb2hsv(rgb)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        return _hsv2rgb(hsv)
    return np.clip(_through_rgb(x, fn), 0, 1)


def saturate(x, c, rng):
    def fn(rgb):
        hsv = _rgb2hsv(rgb)
        hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
        return _hsv2rgb(hsv)
    return np.clip(_through_rgb(x, fn), 0, 1)


def contrast(x, c, rng):
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1)


def elastic_transform(x, c, rng):
    """A random affine warp (OpenCV's warpAffine, bilinear, reflect-101 border) then a smooth random displacement
    (scipy's map_coordinates, order 1, 'reflect'); the constants are fractions of the image size."""
    ch, h, w = x.shape
    size = min(h, w)
    alpha, sigma, affine = c[0] * size, c[1] * size, c[2] * size
    center = np.array([w, h], dtype=np.float32) // 2
    square = size // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    pts2 = pts1 + rng.uniform(-affine, affine, size=pts1.shape).astype(np.float32)
    # the affine map M with M @ [p, 1] = p' (x, y); the output samples the input at M^-1 (x, y)
    a = np.hstack([pts1, np.ones((3, 1), np.float32)]).astype(np.float64)
    m = np.linalg.solve(a, pts2.astype(np.float64)).T                     # 2 x 3, (x, y) coordinates
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    rc = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])     # in (row, col) coordinates
    offset = np.array([inv[1, 2], inv[0, 2]])
    img = np.stack([affine_transform(p, rc, offset, order=1, mode='mirror') for p in x])
    dx = gaussian_blur_planes(rng.uniform(-1, 1, size=(1, 1, h, w)), sigma, truncate=3, mode='reflect')[0, 0] * alpha
    dy = gaussian_blur_planes(rng.uniform(-1, 1, size=(1, 1, h, w)), sigma, truncate=3, mode='reflect')[0, 0] * alpha
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    coords = [yy + dy, xx + dx]
    out = np.stack([map_coordinates(p, coords, order=1, mode='reflect') for p in img])
    return np.clip(out, 0, 1)


def pixelate(x, c, rng):
    h, w = x.shape[-2:]
    img = _to_pil(x).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return _from_pil(img, x.shape[0])


def jpeg_compression(x, c, rng):
    buffer = io.BytesIO()
    _to_pil(x).save(buffer, 'JPEG', quality=c)
    with Image.open(buffer) as img:
        return _from_pil(img.convert('L' if x.shape[0] == 1 else 'RGB'), x.shape[0])


def spatter(x, c, rng):
    """Liquid (severities 1-3: water outlines, approximated, see the module doc) or mud (4-5) splashes."""
    h, w = x.shape[-2:]
    liquid = rng.normal(size=(h, w), loc=c[0], scale=c[1])
    liquid = gaussian_blur_planes(liquid[None, None], c[2])[0, 0]
    liquid[liquid < c[3]] = 0
    if c[5] == 0:
        blob = liquid > 0
        edges = blob & ~binary_erosion(blob, border_value=1)
        dist = distance_transform_edt(~edges) if edges.any() else np.full((h, w), 20.0)
        dist = np.uint8(uniform_filter(np.minimum(dist, 20), size=3, mode='mirror'))
        dist = _equalize_hist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float64)
        dist = np.clip(_conv2d(dist[None, None].astype(np.float64), ker, 'reflect')[0, 0], 0, 255).round()
        dist = uniform_filter(dist, size=3, mode='mirror')
        m = liquid * dist
        m = m / m.max() * c[4] if m.max() > 0 else m
        color = np.array([238, 238, 175]) / 255  # make_cifar_c's pale turquoise, its (B, G, R) read as RGB
        color = color if x.shape[0] == 3 else np.array([(color * LUMA).sum()])
        return np.clip(x + m[None] * color[:, None, None], 0, 1)
    m = gaussian_blur_planes(np.where(liquid > c[3], 1.0, 0.0)[None, None], c[4])[0, 0]
    m[m < 0.8] = 0
    color = np.array([63, 42, 20]) / 255  # mud brown
    color = color if x.shape[0] == 3 else np.array([(color * LUMA).sum()])
    return np.clip(x * (1 - m[None]) + color[:, None, None] * m[None], 0, 1)


def _equalize_hist(u8: np.ndarray) -> np.ndarray:
    """OpenCV's equalizeHist: the cumulative histogram, rescaled from the first non-zero bin, as a lookup table."""
    hist = np.bincount(u8.ravel(), minlength=256)
    cdf = hist.cumsum()
    first = cdf[np.nonzero(hist)[0][0]]
    if cdf[-1] == first:
        return u8
    lut = np.clip(np.round((cdf - first) * 255.0 / (cdf[-1] - first)), 0, 255).astype(np.uint8)
    return lut[u8]


# ---- the table: name -> (family, function, the five severities' constants) --------------------------------------
def _arange(stop: float) -> np.ndarray:
    return np.arange(1, stop, 0.01)


CORRUPTIONS: Dict[str, Tuple[str, Optional[Callable], Sequence[Any]]] = {
    'gaussian_noise': ('noise', None, CIFAR10C_GAUSSIAN),
    'shot_noise': ('noise', shot_noise, (500, 250, 100, 75, 50)),
    'impulse_noise': ('noise', impulse_noise, (.01, .02, .03, .05, .07)),
    'defocus_blur': ('blur', defocus_blur, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))),
    'glass_blur': ('blur', glass_blur, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))),
    'motion_blur': ('blur', motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))),
    'zoom_blur': ('blur', zoom_blur, (_arange(1.06), _arange(1.11), _arange(1.16), _arange(1.21), _arange(1.26))),
    'snow': ('weather', snow, ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                               (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                               (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))),
    'frost': ('weather', None, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))),
    'fog': ('weather', fog, ((.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))),
    'brightness': ('digital', brightness, (.05, .1, .15, .2, .3)),
    'contrast': ('digital', contrast, (.75, .5, .4, .3, 0.15)),
    'elastic_transform': ('digital', elastic_transform, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                                                         (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
    'pixelate': ('digital', pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    'jpeg_compression': ('digital', jpeg_compression, (80, 65, 58, 50, 40)),
    # the four extra corruptions of CIFAR-10-C
    'speckle_noise': ('noise', speckle_noise, (.06, .1, .12, .16, .2)),
    'gaussian_blur': ('blur', gaussian_blur, (.4, .6, 0.7, .8, 1)),
    'spatter': ('weather', spatter, ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                                     (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                                     (0.65, 0.1, 0.5, 0.68, 0.6, 1))),
    'saturate': ('digital', saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))),
}
BENCHMARK = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur',
             'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate',
             'jpeg_compression')                                   # the 15 of the CIFAR-10-C benchmark
EXTRA = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')  # its 4 extra (held-out) corruptions
FAMILIES = tuple(dict.fromkeys(f for f, _, _ in CORRUPTIONS.values()))
MISSING = {'frost': "needs CIFAR-10-C's frost photographs, which no maintained installable library ships"}
# Each corruption's key in the ``corruption`` random stream. Written out, not taken from positions in the table:
# a corruption added anywhere gets a new id, and no other corruption's draws change (tests/test_structure.py
# pins every corruption's output on a fixed image). Never renumber or reuse an id.
CORRUPTION_IDS = {'gaussian_noise': 0, 'shot_noise': 1, 'impulse_noise': 2, 'defocus_blur': 3, 'glass_blur': 4,
                  'motion_blur': 5, 'zoom_blur': 6, 'snow': 7, 'frost': 8, 'fog': 9, 'brightness': 10,
                  'contrast': 11, 'elastic_transform': 12, 'pixelate': 13, 'jpeg_compression': 14,
                  'speckle_noise': 15, 'gaussian_blur': 16, 'spatter': 17, 'saturate': 18}


def resolve_corruptions(spec: Any = 'all') -> List[str]:
    """The corruptions a spec names: ``'all'``, ``'benchmark'`` (the 15), ``'extra'`` (the 4), a family
    (``noise``, ``blur``, ``weather``, ``digital``), names, or a comma list / list mixing them. A group leaves out
    the missing corruptions (:data:`MISSING`, reported apart); a missing one named explicitly is an error."""
    groups = {'all': list(CORRUPTIONS), 'benchmark': list(BENCHMARK), 'extra': list(EXTRA),
              **{f: [n for n, (fam, _, _) in CORRUPTIONS.items() if fam == f] for f in FAMILIES}}
    items = [s.strip() for s in spec.split(',') if s.strip()] if isinstance(spec, str) else \
        ['all'] if spec is None else list(spec)
    bad = [n for n in items if n not in CORRUPTIONS and n not in groups]
    if bad or not items:
        raise UsageError(f'corruptions {bad or items!r} are not allowed; give all, benchmark, extra, a family '
                         f'({", ".join(FAMILIES)}) or names among: {", ".join(CORRUPTIONS)}.')
    for n in items:
        if n in MISSING:
            raise UsageError(f'{n} is not available: it {MISSING[n]}.')
    names = [m for n in items for m in (groups[n] if n in groups else [n]) if m not in MISSING]
    return list(dict.fromkeys(names))


def check_severity(severity: Any) -> int:
    """A severity of the table as an int: 1..5, or 0 for the clean image (a library call; the CLI takes 1..5)."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
        raise UsageError(f'severity={severity!r} is not allowed; give an integer from 0 (clean) to 5.')
    return int(severity)


def corrupt(image: torch.Tensor, name: str, severity: int, seed: int = 0, index: int = 0) -> torch.Tensor:
    """One (C, H, W) float image in [0, 1], corrupted (severity 0: unchanged), as uint8 levels in [0, 1]."""
    return corrupt_batch(image[None], name, severity, seed, [index])[0]


def corrupt_batch(images: torch.Tensor, name: str, severity: int, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """A batch (N, C, H, W) of [0, 1] images corrupted image by image; image i's randomness is the ``corruption``
    stream of (seed, indices[i], name, severity), so the result does not depend on the batch."""
    if name not in CORRUPTIONS:
        raise UsageError(f'unknown corruption {name!r}; allowed: {", ".join(CORRUPTIONS)}.')
    if name in MISSING:
        raise UsageError(f'{name} is not available: it {MISSING[name]}.')
    severity = check_severity(severity)
    if severity == 0:
        return images
    family, fn, constants = CORRUPTIONS[name]
    c = constants[severity - 1]
    if fn is None:  # gaussian_noise: the protocol's cifar10c_gaussian preset, the same code path
        z = batch_unit_noise(images.shape[1:], seed, list(indices), 0).to(images.device, images.dtype)
        return noisy_images(images, z, c, clip=True, quantize=True)
    x = images.detach().cpu().double().numpy()
    out = np.empty_like(x)
    for k, i in enumerate(indices):
        rng = np.random.Generator(np.random.PCG64(stream_seed('corruption', seed, int(i), CORRUPTION_IDS[name], severity)))
        out[k] = fn(x[k], c, rng)
    return to_uint8_levels(torch.from_numpy(np.clip(out, 0, 1)).to(images.device, images.dtype))


# ---- the sweep ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def corruption_sweep(model, data, corruptions: Any = 'all', severities: Sequence[int] = SEVERITIES, seed: int = 0,
                     batch_size: int = 256, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, progress: bool = False) -> Dict[str, Any]:
    """Accuracy of ``model`` on ``data`` under each corruption and severity, beside :func:`~.noise.noise_sweep`.

    Returns the ``eval.json`` layout: ``{<corruption>: {"1": acc, ..., "5": acc, "mean": acc}, ..., "mean": acc,
    "clean": acc, "by_family": {...}, "num_images": n, "severities": [...], "seed": s, "missing": {...},
    "images_per_s": ...}``; "mean" is the mean over the corruptions of their mean over severities (accuracies in %).
    """
    names = resolve_corruptions(corruptions)
    severities = [check_severity(s) for s in severities]
    normalizer = Normalizer(mean, std)
    device = next(model.parameters()).device
    hits = {(n, s): 0.0 for n in names for s in severities}
    clean, total = 0.0, 0
    batches = indexed_batches(data, batch_size, f'corruptions ({len(names)} x {len(severities)} severities)',
                              progress)
    t0 = time.time()
    with eval_mode(model):
        for images, labels, index in batches:
            if total == 0:
                warn_if_not_pixels(images, 'the evaluation images')
            labels = labels.to(device)
            idx = index.tolist()

            def correct(x: torch.Tensor) -> float:
                return (model(normalizer(model, x.to(device))).argmax(1) == labels).float().sum().item()
            clean += correct(images)
            for n in names:
                for s in severities:
                    hits[(n, s)] += correct(corrupt_batch(images, n, s, seed, idx))
            total += len(labels)
    if total == 0:
        raise UsageError('the evaluation data is empty.')
    elapsed = max(time.time() - t0, 1e-9)
    out: Dict[str, Any] = {}
    for n in names:
        accs = {str(s): 100.0 * hits[(n, s)] / total for s in severities}
        out[n] = {**accs, 'mean': sum(accs.values()) / len(accs)}
    families: Dict[str, List[float]] = {}
    for n in names:
        families.setdefault(CORRUPTIONS[n][0], []).append(out[n]['mean'])
    out.update(mean=sum(out[n]['mean'] for n in names) / len(names), clean=100.0 * clean / total,
               by_family={f: sum(v) / len(v) for f, v in families.items()}, num_images=total,
               severities=list(severities), seed=seed,
               missing={n: r for n, r in MISSING.items() if _names_group_with(corruptions, n)},
               images_per_s=round(total * (1 + len(names) * len(severities)) / elapsed, 1))
    return out


def _names_group_with(spec: Any, missing: str) -> bool:
    """Whether a corruption spec asked for a group that holds the missing corruption (so it is reported)."""
    items = [s.strip() for s in spec.split(',')] if isinstance(spec, str) else ['all'] if spec is None else spec
    return any(i in ('all', CORRUPTIONS[missing][0]) or (i == 'benchmark' and missing in BENCHMARK) for i in items)


def corruption_names(result: Dict[str, Any]) -> List[str]:
    """The corruption entries of a :func:`corruption_sweep` result, in the benchmark's order."""
    return [n for n in CORRUPTIONS if n in result]
