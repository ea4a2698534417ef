"""The evaluation protocol, in one place: sigma grids and presets, the lookup of a value on a grid, the summary
columns and their labels, the corruption severities, the certified-accuracy radii, and the mean ± std convention.
Recipes (``eval.sigmas``), the eval command line, the noise sweep, the corruptions, the certificates, the tables,
the model cards and the checkpoint metadata all read these; ``tests/test_structure.py`` checks that no other module
restates them. Torch-free, so the command line can show them in its help.

- Grids: the paper's CIFAR grid sigma_test = 0.00 ... 0.50 (step 0.01), the MNIST grid 0.00 ... 1.00, the paper's
  table columns 0 / 0.3 / 0.5.
- Presets name a grid together with how noisy images are stored: ``cifar10c_gaussian`` is CIFAR-10-C's Gaussian
  noise (severities 1-5: sigma 0.04 ... 0.10), clipped to [0,1] and rounded to uint8 levels as the benchmark's files
  are, so a recipe's ``eval.sigmas: cifar10c_gaussian`` and ``timm-lipschitz eval --sigmas cifar10c_gaussian``
  measure the same thing.
- Lookup: a sigma is on a grid when it is within :data:`TOLERANCE` of a grid value.
- Mean ± std: over seeds or noise draws, the sample standard deviation (n - 1 in the denominator); a single value
  has std 0 and is shown without ± std.
- Stored images: ``quantize`` keeps an image as CIFAR-10-C stored its files, clipped to [0, 1] and truncated to uint8
  levels as ``np.uint8`` does (:func:`to_uint8_levels`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

from .errors import UsageError

__all__ = ['PAPER_SIGMAS', 'MNIST_SIGMAS', 'TABLE_SIGMAS', 'CIFAR10C_GAUSSIAN', 'PRESETS', 'TOLERANCE',
           'LIPSCHITZ_TOLERANCE', 'PAPER_GRID', 'MNIST_GRID', 'SEVERITIES', 'CERT_RADII', 'EVAL_SPLIT', 'FULL_CORRUPTIONS', 'ATTACK_IMAGES',
           'ATTACK_STEPS', 'SMOOTHING', 'CERTIFY_PRESETS', 'NoiseProtocol', 'parse_sigmas',
           'resolve_protocol', 'index_on_grid', 'value_at', 'summary_key', 'summary_label', 'by_radius', 'SUMMARY_KEYS',
           'summarize', 'mean_std', 'format_cell', 'to_uint8_levels', 'wilson_interval']

PAPER_GRID = '0:0.5:0.01'                                             # the paper's CIFAR grid, 0.00 ... 0.50
MNIST_GRID = '0:1.0:0.01'                                             # its MNIST grid, 0.00 ... 1.00
TABLE_SIGMAS = (0.0, 0.3, 0.5)                                        # the paper's table columns
CIFAR10C_GAUSSIAN = (0.04, 0.06, 0.08, 0.09, 0.10)                    # CIFAR-10-C Gaussian noise, severities 1..5
SEVERITIES = (1, 2, 3, 4, 5)                                          # CIFAR-10-C's corruption severities
CERT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)                              # l2 radii of certified-accuracy tables
TOLERANCE = 1e-9
MAX_SIGMA = 10.0                                                      # the largest noise sigma a grid takes
MAX_GRID = 10_000                                                     # the most levels a start:stop:step grid gives
# a declared Lipschitz constant may be exceeded by this fraction (float rounding of orthogonal layers); certificates
# divide by declared * (1 + LIPSCHITZ_TOLERANCE), so nothing it lets pass inflates a radius
LIPSCHITZ_TOLERANCE = 1e-3
# The full protocol: what a run's or checkpoint's own record (its robustness.json, metadata and card) holds unless
# the user asks for a departure to be recorded (timm-lipschitz eval --record), which the card then states.
EVAL_SPLIT = 'test'                                                   # every image of the test split
FULL_CORRUPTIONS = 'benchmark'                                        # the 15 benchmark corruptions (as available)
ATTACK_IMAGES = 200                                                   # images attacked (a prefix of the order)
ATTACK_STEPS = 20                                                     # PGD iterations
SMOOTHING = {'sigma': 0.25, 'n0': 100, 'n': 1000, 'alpha': 0.001, 'num_images': 100}  # randomized smoothing
# Certification presets from the literature: Cohen et al. 2019's CERTIFY (their tables: n0 100, n 100,000, alpha 0.001)
CERTIFY_PRESETS = {'cohen': {'n0': 100, 'n': 100_000, 'alpha': 0.001}}


@dataclass(frozen=True)
class NoiseProtocol:
    """A sigma grid and how the noisy images are stored: ``clip`` to [0,1], ``quantize`` to uint8 levels."""
    sigmas: Tuple[float, ...]
    clip: bool = False
    quantize: bool = False
    name: str = ''


SigmaSpec = Union[str, Sequence[float], None]


def _grid_from_text(spec: str) -> List[float]:
    parts = spec.split(':')
    try:
        if len(parts) == 3:
            start, stop, step = (float(p) for p in parts)
            if not (step > 0 and all(math.isfinite(v) for v in (start, stop, step))):
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            if n > MAX_GRID:
                raise ValueError
            return [round(start + i * step, 10) for i in range(max(n, 0))]
        return [float(p) for p in spec.split(',') if p.strip()]
    except ValueError:
            raise UsageError(f"sigmas={spec!r} is not allowed; give a list, 'start:stop:step' with finite numbers, step > "
                         f"0 and at most {MAX_GRID} levels (stop included), comma-separated values or a preset "
                         f"({', '.join(PRESETS)}).") from None


PAPER_SIGMAS = tuple(_grid_from_text(PAPER_GRID))
MNIST_SIGMAS = tuple(_grid_from_text(MNIST_GRID))
PRESETS: Dict[str, NoiseProtocol] = {
    'paper': NoiseProtocol(PAPER_SIGMAS, name='paper'),
    'mnist': NoiseProtocol(MNIST_SIGMAS, name='mnist'),
    'cifar10c_gaussian': NoiseProtocol(CIFAR10C_GAUSSIAN, clip=True, quantize=True, name='cifar10c_gaussian'),
}


def parse_sigmas(spec: SigmaSpec, default: Sequence[float] = PAPER_SIGMAS) -> List[float]:
    """A list of sigmas from a list, ``'start:stop:step'`` (stop included), a comma list or a preset name."""
    return list(resolve_protocol(spec, default=default).sigmas)


def resolve_protocol(spec: SigmaSpec, clip: bool = False, default: Sequence[float] = PAPER_SIGMAS) -> NoiseProtocol:
    """The protocol a sigma spec names: a preset keeps its own clipping and rounding (``clip=True`` adds clipping
    to any grid); a grid is checked (non-empty, every sigma >= 0, no NaN)."""
    if spec is None:
        return NoiseProtocol(tuple(default), clip=clip)
    if isinstance(spec, str) and spec in PRESETS:
        p = PRESETS[spec]
        return NoiseProtocol(p.sigmas, clip=p.clip or clip, quantize=p.quantize, name=p.name)
    values = _grid_from_text(spec) if isinstance(spec, str) else [float(s) for s in spec]
    if not values:
        raise UsageError(f'sigmas={spec!r} gives an empty grid; give at least one sigma >= 0.')
    bad = [s for s in values if not 0 <= s <= MAX_SIGMA]
    if bad:
        raise UsageError(f'sigma values {bad} are not allowed; every sigma must be a number in [0, {MAX_SIGMA:g}] '
                         f'(pixels are in [0, 1]: beyond that the images are noise, and a huge sigma overflows).')
    return NoiseProtocol(tuple(values), clip=clip)


def to_uint8_levels(x):
    """[0, 1] values truncated to the 256 uint8 levels, as ``np.uint8(x * 255)`` stores them (a 1e-6 guard keeps
    float error from dropping an exact level by one)."""
    return (x.clamp(0, 1) * 255 + 1e-6).floor() / 255


def index_on_grid(grid: Sequence[float], sigma: float) -> Optional[int]:
    """The position of ``sigma`` on ``grid`` (within :data:`TOLERANCE`), or None."""
    return next((i for i, s in enumerate(grid) if abs(float(s) - float(sigma)) < TOLERANCE), None)


T = TypeVar('T')


def value_at(grid: Sequence[float], values: Sequence[T], sigma: float) -> Optional[T]:
    """The entry of ``values`` at ``sigma`` on ``grid``, or None when ``sigma`` is not on the grid."""
    i = index_on_grid(grid, sigma)
    return None if i is None else values[i]


def summary_key(sigma: float) -> str:
    """``acc@0``, ``acc@0.3``: the key of a table column in summaries, metadata and final.json."""
    return f'acc@{float(sigma):g}'


def by_radius(radii: Sequence[float], values: Sequence[Any]) -> Dict[str, Any]:
    """``{'0': ..., '0.25': ..., '1': ...}``: certified accuracies keyed by l2 radius, as the metadata and ``hub
    list`` read them."""
    return {f'{float(r):g}': v for r, v in zip(radii, values)}


def summary_label(key: str) -> str:
    """The column header of a summary key in cards and tables: ``clean``, ``sigma 0.3``, ``grid mean``."""
    if key == 'grid_mean':
        return 'grid mean'
    sigma = float(key.split('@', 1)[1])
    return 'clean' if sigma == 0 else f'sigma {sigma:g}'


SUMMARY_KEYS = tuple(summary_key(s) for s in TABLE_SIGMAS) + ('grid_mean',)


def summarize(grid: Sequence[float], accuracy: Sequence[float]) -> Dict[str, Optional[float]]:
    """The paper's table columns (None where not on the grid) and the mean accuracy over the whole grid."""
    out: Dict[str, Optional[float]] = {summary_key(s): value_at(grid, accuracy, s) for s in TABLE_SIGMAS}
    out['grid_mean'] = sum(accuracy) / len(accuracy)
    return out


def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample std with n - 1 in the denominator, n); the std of one value is 0."""
    n = len(values)
    if n == 0:
        raise UsageError('mean_std of no values.')
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, sd, n


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy in % measured on ``n`` images: the per-image
    uncertainty of a single model's score (it says nothing of seed-to-seed variation)."""
    p = accuracy / 100
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, 100 * (center - half)), min(100.0, 100 * (center + half))


def format_cell(cell: Optional[Tuple[float, float, int]], digits: int = 2) -> str:
    """``'88.02 ± 0.03'`` for several values, ``'88.02'`` for one, ``'n/a'`` for none."""
    if cell is None:
        return 'n/a'
    m, sd, n = cell
    return f'{m:.{digits}f} ± {sd:.{digits}f}' if n > 1 else f'{m:.{digits}f}'
