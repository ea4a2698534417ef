"""Randomized smoothing (Cohen et al. 2019), the certificate an evaluation sets beside the deterministic one of
:mod:`timm_lipschitz.certificates` (which also holds the seed paper's conditional Theorem 1 radius).

Randomized smoothing follows locuslab/smoothing ``core.py``: ``predict`` returns the top class of n noisy
samples unless a two-sided binomial test cannot separate it from the runner-up; ``certify`` picks the class with
n0 samples, estimates a one-sided Clopper-Pearson lower bound p_A of its probability with n fresh samples at level
alpha, and certifies l2 radius sigma * Phi^-1(p_A) when p_A > 1/2 (abstains otherwise).
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from scipy.stats import beta, binomtest, norm
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import UsageError
from ..modes import eval_mode
from ..normalization import Normalizer
from ..protocol import CERT_RADII, SMOOTHING
from ..seeding import stream_seed
from .subsets import evaluation_subset, positions_in, subset_record

__all__ = ['Smooth', 'lower_confidence_bound', 'certify_dataset', 'certified_at', 'at_radii', 'check_settings',
           'cohen_tsv', 'max_certified_radius', 'ABSTAIN', 'CERT_RADII']

ABSTAIN = -1


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion with n_a successes in n."""
    return 0.0 if n_a == 0 else float(beta.ppf(alpha, n_a, n - n_a + 1))


def max_certified_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` samples at level ``alpha``: even when all n vote for the top
    class, p_A's lower bound is alpha ** (1/n), so no radius exceeds sigma * Phi^-1(alpha ** (1/n)) (0.616 for
    sigma 0.25, n 1000, alpha 0.001). Certified accuracy beyond it is 0 by construction, not by measurement."""
    return sigma * float(norm.ppf(lower_confidence_bound(n, n, alpha)))


class Smooth:
    """The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c), noise in [0,1] pixel space."""

    def __init__(self, model: nn.Module, num_classes: int, sigma: float, mean=None, std=None, seed: int = 0):
        if not sigma > 0:
            raise UsageError(f'sigma={sigma!r} is not allowed; the smoothing sigma must be > 0.')
        self.model, self.num_classes, self.sigma = model, num_classes, sigma
        self.norm = Normalizer(mean, std)
        self.generator = torch.Generator().manual_seed(stream_seed('smoothing_noise', seed))

    @torch.no_grad()
    def _counts(self, x: torch.Tensor, num: int, batch_size: int) -> torch.Tensor:
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        remaining = num
        with eval_mode(self.model):
            while remaining > 0:
                b = min(batch_size, remaining)
                remaining -= b
                batch = x.unsqueeze(0).expand(b, *x.shape)
                noise = torch.randn(batch.shape, generator=self.generator) * self.sigma
                pred = self.model(self.norm(self.model, batch + noise.to(x.device))).argmax(1).cpu()
                counts += torch.bincount(pred, minlength=self.num_classes)
        return counts

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int = 256) -> int:
        counts = self._counts(x, n, batch_size)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int = 256) -> Tuple[int, float]:
        """(class, radius), or (ABSTAIN, 0.0) when the lower bound of p_A is not above 1/2."""
        c_a = int(self._counts(x, n0, batch_size).argmax())
        p_a = lower_confidence_bound(int(self._counts(x, n, batch_size)[c_a]), n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0
        return c_a, float(self.sigma * norm.ppf(p_a))


def check_settings(sigma: Any, n0: Any, n: Any, alpha: Any, num_images: Any,
                   names: Optional[Dict[str, str]] = None) -> None:
    """The one check of certification settings (``names``: how the caller calls them, e.g. ``--n``): n0, n and the
    image count are integers >= 1, alpha is in (0, 1), sigma > 0. Out of range they give NaN or no certificate."""
    names = {k: k for k in ('sigma', 'n0', 'n', 'alpha', 'num_images')} | (names or {})
    for key, value in (('n0', n0), ('n', n), ('num_images', num_images)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f'{names[key]}={value!r} is not allowed; give an integer >= 1.')
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise UsageError(f'{names["alpha"]}={alpha!r} is not allowed; the failure probability must be in (0, 1).')
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < float('inf'):
        raise UsageError(f'{names["sigma"]}={sigma!r} is not allowed; the smoothing sigma must be a number > 0.')


def certify_dataset(model: nn.Module, data: Dataset, num_classes: int, sigma: float = SMOOTHING['sigma'],
                    n0: int = SMOOTHING['n0'], n: int = SMOOTHING['n'], alpha: float = SMOOTHING['alpha'],
                    num_images: int = SMOOTHING['num_images'], radii: Sequence[float] = CERT_RADII,
                    mean=None, std=None, seed: int = 0, batch_size: int = 256, progress: bool = True) -> Dict[str, Any]:
    """Certified accuracy at ``radii`` and the average certified radius (0 for wrong or abstained images) over
    ``num_images`` images: a prefix of the split's evaluation order (:mod:`.subsets`), the images the other
    evaluation kinds take too."""
    check_settings(sigma, n0, n, alpha, num_images)
    if len(data) == 0:
        raise UsageError('the evaluation data is empty: nothing to certify.')
    smooth = Smooth(model, num_classes, sigma, mean, std, seed)
    subset = evaluation_subset(data, num_images, seed)
    rows = []
    for i in tqdm(positions_in(data, subset), desc=f'certify (sigma {sigma}, n {n})', leave=False,
                  disable=not progress):
        x, y = data[i]
        start = time.perf_counter()
        c, r = smooth.certify(x, n0, n, alpha, batch_size)
        rows.append({'index': i, 'label': int(y), 'predicted': c, 'radius': r, 'correct': c == int(y),
                     'time': time.perf_counter() - start})
    reach = max_certified_radius(sigma, n, alpha)
    acr = sum(r['radius'] for r in rows if r['correct']) / len(rows)
    return {'sigma': sigma, 'n0': n0, 'n': n, 'alpha': alpha, 'num_images': len(rows), 'radii': list(radii),
            'certified_accuracy': certified_at(rows, radii, reach), 'average_certified_radius': acr, 'rows': rows,
            'max_radius': reach, 'subset': subset_record(subset, len(data))}


def certified_at(rows: Sequence[Dict[str, Any]], radii: Sequence[float], reach: float) -> List[Optional[float]]:
    """Certified accuracy (%) at each radius from the per-image rows of :func:`certify_dataset`: one smoothing run
    answers every radius. Beyond smoothing's reach no image can be certified with its settings: None there, not a
    measured 0."""
    return [100.0 * sum(1 for r in rows if r['correct'] and r['radius'] >= t) / len(rows) if t <= reach else None
            for t in radii]


def at_radii(result: Dict[str, Any], radii: Sequence[float]) -> Dict[str, Any]:
    """A :func:`certify_dataset` result read at other ``radii`` (same images, same samples)."""
    return {**result, 'radii': list(radii), 'certified_accuracy': certified_at(result['rows'], radii,
                                                                               result['max_radius'])}


def cohen_tsv(result: Dict[str, Any]) -> str:
    """The per-image certificates in Cohen et al.'s ``certify.py`` format (``idx label predict radius correct
    time``; predict -1 for an abstention, time as h:mm:ss.ffffff), so their analysis scripts read it as is."""
    lines = ['idx\tlabel\tpredict\tradius\tcorrect\ttime']
    lines += [f"{r['index']}\t{r['label']}\t{r['predicted']}\t{r['radius']:.3}\t{int(r['correct'])}\t"
              f"{datetime.timedelta(seconds=r.get('time', 0.0))}" for r in result['rows']]
    return '\n'.join(lines) + '\n'
