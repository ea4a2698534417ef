"""Robust accuracy under L2 and L-infinity attacks, done with a maintained attack library: the Adversarial Robustness
Toolbox (ART, ``pip install "timm-lipschitz[attacks]"``). ``torchattacks`` cannot be installed beside this package (it
pins ``requests<2.26``, which needs ``idna<3``, while ``huggingface_hub`` needs ``idna>=3``).

Attacks work in [0,1] pixel space, like the noise, on the model with its normalization (:class:`PixelModel`, the
package's one normalizer) and BatchNorm in eval mode; ART clips every adversarial image to [0, 1] and projects it on
the epsilon-ball. Methods:

- ``pgd`` (the cheap screen, default): ART's ProjectedGradientDescent, ``steps`` iterations of size
  ``2.5 eps / steps``, one random start (Madry et al.);
- ``autoattack`` (the standard of RobustBench, named as such in every report): ART's AutoAttack, which runs ART's
  APGD-CE, APGD-DLR, DeepFool and Square in turn on the images still standing and keeps the worst case per image
  (Croce & Hein's original uses APGD-CE, APGD-T, FAB-T and Square: the report names ART's members and budgets as
  read off the attack object, and counts the images each member broke first);
- ``square``: ART's Square Attack, gradient-free, also run beside a gradient attack with ``black_box=True`` to
  detect gradient masking.

Gradient masking, which a hinge-trained network may show, is checked on every run: robust accuracy must not rise
with epsilon, must fall to about 0 at a very large epsilon (:data:`SANITY_EPS`), and a black-box attack must not beat
the gradient attack; each violation is recorded under ``warnings``.

Random starts are drawn from numpy's global generator inside ART; it is seeded from the ``attack_start`` stream and
restored afterwards, so a run is reproducible and leaves the caller's random state alone.
"""
from __future__ import annotations

import contextlib
from fractions import Fraction
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..errors import UsageError
from ..modes import eval_mode
from ..normalization import Normalizer
from ..protocol import ATTACK_IMAGES, ATTACK_STEPS
from ..seeding import stream_seed
from .subsets import evaluation_subset, subset_record

__all__ = ['attack_sweep', 'check_request', 'require_art', 'PixelModel', 'NORMS', 'METHODS', 'default_eps', 'reported_eps', 'parse_eps',
           'AttackError', 'SANITY_EPS', 'eps_key']

NORMS = ('linf', 'l2')
METHODS = ('pgd', 'autoattack', 'square')
DEFAULT_EPS = {'rgb': {'linf': (1 / 255, 2 / 255, 4 / 255, 8 / 255), 'l2': (0.25, 0.5, 1.0)},
               'gray': {'linf': (0.1, 0.2, 0.3), 'l2': (0.5, 1.0, 2.0)}}
REPORTED_EPS = {'rgb': {'linf': 8 / 255, 'l2': 0.5}, 'gray': {'linf': 0.3, 'l2': 2.0}}
SANITY_EPS = {'linf': 0.5, 'l2': None}  # l2: half the image's diagonal, sqrt(d) / 2 (any image is then reachable)
MASKING_TOLERANCE = 2.0  # accuracy points by which a larger epsilon or a black-box attack may "win" before a flag


class AttackError(UsageError):
    """A bad attack request (norm, epsilon, method) or a missing attack library; the message says what to do."""


def require_art() -> None:
    """ART is an extra: without it, one line that says how to install it."""
    try:
        import art  # noqa: F401
    except ImportError:
        raise AttackError('adversarial attacks need the Adversarial Robustness Toolbox: pip install '
                          '"timm-lipschitz[attacks]" (or pip install adversarial-robustness-toolbox).') from None


class PixelModel(nn.Module):
    """A classifier of [0,1] pixels: the package's normalizer, then the model (what attacks and ART see)."""

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        self.model = model
        self.normalizer = Normalizer(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(self.model, x))


def _kind(image_shape: Sequence[int]) -> str:
    return 'gray' if image_shape[0] == 1 else 'rgb'


def default_eps(norm: str, image_shape: Sequence[int]) -> Tuple[float, ...]:
    """The default epsilon grid: 32 px RGB (RobustBench's CIFAR-10 scale) or MNIST-like one-channel images."""
    return DEFAULT_EPS[_kind(image_shape)][norm]


def reported_eps(norm: str, eps: Sequence[float], image_shape: Sequence[int]) -> float:
    """The epsilon a summary reports: RobustBench's 8/255 (L-inf) and 0.5 (L2) for RGB images, the common 0.3 and
    2.0 for MNIST-like ones; the largest of the grid when the grid lacks it."""
    want = REPORTED_EPS[_kind(image_shape)][norm]
    return want if any(abs(e - want) < 1e-9 for e in eps) else max(eps)


def eps_key(eps: float) -> str:
    """How an epsilon is written in results: 6 significant digits (8/255 -> '0.0313725')."""
    return f'{eps:.6g}'


def parse_eps(text: str, flag: str = '--eps') -> Dict[str, List[float]]:
    """``'linf=1/255,8/255'`` or ``'0.1,0.2'`` (every norm) -> ``{norm or '*': [eps, ...]}``; fractions allowed."""
    norm, _, values = text.rpartition('=')
    norm = norm.strip() or '*'
    if norm != '*' and norm not in NORMS:
        raise AttackError(f'{flag} {text!r}: norm {norm!r} is not allowed; choose {NORMS}.')
    try:
        eps = [float(Fraction(v.strip())) for v in values.split(',') if v.strip()]
    except (ValueError, ZeroDivisionError):
        raise AttackError(f'{flag} {text!r}: give numbers or fractions, e.g. linf=1/255,8/255 or 0.5,1.0.') from None
    if not eps or any(not e > 0 for e in eps):
        raise AttackError(f'{flag} {text!r}: every epsilon must be > 0.')
    return {norm: sorted(eps)}


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _estimator(model: PixelModel, shape: Sequence[int], num_classes: int, device: torch.device):
    from art.estimators.classification import PyTorchClassifier
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(shape),
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type='gpu' if device.type == 'cuda' else 'cpu')


def _attack(method: str, estimator, norm: str, eps: float, steps: int, batch_size: int, progress: bool = False,
            square_restarts: Optional[int] = None):
    from art.attacks.evasion import AutoAttack, ProjectedGradientDescent, SquareAttack
    art_norm = np.inf if norm == 'linf' else 2
    if method == 'pgd':
        return ProjectedGradientDescent(estimator, norm=art_norm, eps=eps, eps_step=2.5 * eps / steps,
                                        max_iter=steps, num_random_init=1, batch_size=batch_size, verbose=False)
    if method == 'square':
        return SquareAttack(estimator, norm=art_norm, eps=eps, max_iter=10 * steps, nb_restarts=1,
                            batch_size=batch_size, verbose=False)
    attack = AutoAttack(estimator, norm=art_norm, eps=eps, eps_step=2.5 * eps / steps, batch_size=batch_size)
    for member in attack.attacks:  # ART's AutoAttack takes no verbose flag; its members each have one
        if hasattr(member, 'verbose'):
            member.verbose = progress
        if square_restarts is not None and isinstance(member, SquareAttack):
            member.nb_restarts = square_restarts  # Croce & Hein's standard version: 1 (ART's default: 5)
    return attack


def _member_name(member) -> str:
    """How a report names one member of ART's AutoAttack (APGD twice, told apart by its loss)."""
    name = type(member).__name__
    if name == 'AutoProjectedGradientDescent':
        return 'APGD-CE' if getattr(member, 'loss_type', '') == 'cross_entropy' else 'APGD-DLR'
    return {'SquareAttack': 'Square', 'ProjectedGradientDescent': 'PGD'}.get(name, name)


def _member_settings(member) -> str:
    """A member's budget as it will run (read off the attack object, so the report cannot drift from ART)."""
    name = _member_name(member)
    if name == 'Square':
        return f'Square {member.max_iter:,} queries × {member.nb_restarts} restart(s)'
    if name.startswith('APGD'):
        return f'{name} {member.max_iter} steps × {member.nb_random_init} start(s)'
    if name == 'DeepFool':
        return f'DeepFool {member.max_iter} steps'
    return name


def _broken_by(attack) -> Optional[Dict[str, int]]:
    """How many images each AutoAttack member broke first (ART's ``best_attacks``; other methods: None). Shows
    which members decide the result, e.g. whether the gradient-free Square breaks any image the gradient ones
    left."""
    best = getattr(attack, 'best_attacks', None)
    if best is None:
        return None
    names = [_member_name(m) for m in attack.attacks]
    counts = {n: 0 for n in names}
    for index in np.asarray(best).tolist():
        if 0 <= index < len(names):
            counts[names[index]] += 1
    return counts


def _robust(method: str, estimator, x: np.ndarray, y: np.ndarray, norm: str, eps: float, steps: int,
            batch_size: int, seed: int, progress: bool = False, square_restarts: Optional[int] = None
            ) -> Tuple[float, np.ndarray, np.ndarray, Any]:
    """Robust accuracy (%) of one attack: an image counts when its clean prediction is right and no adversarial image
    in the ball changes it; also returns the adversarial images (to check the ball and the box), the per-image
    outcome (True: kept its label) and the ART attack that ran (the report reads its members and their breaks)."""
    attack = _attack(method, estimator, norm, eps, steps, batch_size, progress, square_restarts)
    with _numpy_seed(seed):
        adv = attack.generate(x=x, y=y)
    clean_ok = estimator.predict(x, batch_size=batch_size).argmax(1) == y
    adv_ok = estimator.predict(adv, batch_size=batch_size).argmax(1) == y
    return 100.0 * float((clean_ok & adv_ok).mean()), adv, clean_ok & adv_ok, attack


def _gather(data, max_images: int, seed: int) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """``max_images`` images of a dataset (or tuple of tensors), a prefix of its evaluation order, as float32
    arrays, with the record of which images they are."""
    whole = len(data[0]) if isinstance(data, tuple) else len(data)
    subset = evaluation_subset(data, max_images, seed)
    items = [subset[i] for i in range(len(subset))]
    if not items:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64), subset_record(subset, whole)
    x, y = torch.stack([torch.as_tensor(a) for a, _ in items]), torch.tensor([int(b) for _, b in items])
    return x.float().numpy(), y.long().numpy(), subset_record(subset, whole)


def check_request(norms: Union[str, Sequence[str]], method: str, steps: Any, max_images: Any = 1,
                  names: Optional[Dict[str, str]] = None, square_restarts: Any = None) -> List[str]:
    """The one check of an attack request, before any model or data loads; returns the norms as a list.

    ``norms`` is a list or a comma list; ``names`` maps ``norms`` / ``method`` / ``steps`` / ``max_images`` /
    ``square_restarts`` to how the caller names them (the command line: ``--attack``, ``--attack-method``, ...), so
    the error names the user's key.
    """
    names = {'norms': 'norms', 'method': 'attack method', 'steps': 'steps', 'max_images': 'max_images',
             'square_restarts': 'square_restarts', **(names or {})}
    listed = [n.strip() for n in norms.split(',')] if isinstance(norms, str) else list(norms)
    listed = [n for n in listed if n]
    bad = [n for n in listed if n not in NORMS]
    if bad or not listed:
        raise AttackError(f'{names["norms"]} {norms!r}: norms {bad or listed!r} are not allowed; choose from '
                          f'{NORMS}.')
    if method not in METHODS:
        raise AttackError(f'{names["method"]} {method!r} is not allowed; choose one of {METHODS}.')
    counts = [('steps', steps), ('max_images', max_images)]
    if square_restarts is not None:  # left out: ART's default
        counts.append(('square_restarts', square_restarts))
    for key, value in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AttackError(f'{names[key]}={value!r} is not allowed; give an integer >= 1.')
    if square_restarts is not None and method != 'autoattack':
        raise AttackError(f'{names["square_restarts"]}={square_restarts!r} applies to the autoattack method only, '
                          f'not to {method!r}.')
    require_art()
    return listed


def attack_sweep(model: nn.Module, data, norms: Sequence[str] = NORMS,
                 eps: Optional[Dict[str, Sequence[float]]] = None, method: str = 'pgd', steps: int = ATTACK_STEPS,
                 max_images: int = ATTACK_IMAGES, seed: int = 0, batch_size: int = 128, mean=None, std=None,
                 black_box: bool = False, device: Optional[torch.device] = None,
                 progress: bool = True, square_restarts: Optional[int] = None) -> Dict[str, Any]:
    """Robust accuracy of ``model`` under ``method`` at each norm and epsilon, on ``max_images`` images (a prefix of the
    split's evaluation order, :mod:`.subsets`).

    ``eps``: ``{norm: [eps, ...]}`` (``'*'`` for every norm); the defaults depend on the images (module doc).
    Returns the ``eval.json`` layout: ``{"attack": method, "method": <what ran>, "l2": {"0.25": acc, ...},
    "linf": {...}, "clean": acc, "num_images": n, "steps": s, "sanity": {...}, "square": {...} (black_box),
    "warnings": [...], "reported": {"<method>_<norm>@<eps>": acc}, "per_image": {"l2": {"0.5": "0110..."}}}``
    (accuracies in %; ``per_image``: one character per attacked image in evaluation order, 1 = kept its label; the
    evaluation checks it against the deterministic certificate). AutoAttack adds ``"broken_by": {"l2": {"0.5":
    {"APGD-CE": n, ...}}}``, the images each member broke first.

    ``square_restarts`` (AutoAttack only): restarts of its Square member; ART's default is 5, Croce & Hein's standard
    version runs 1. On a CPU Square is most of the cost (5,000 queries per restart on every image that survives the
    gradient members), so 1 makes a 50-image check about 5x cheaper; the method string names the number used.
    """
    norms = check_request(norms, method, steps, max_images, square_restarts=square_restarts)
    x, y, images = _gather(data, max_images, seed)
    if len(x) == 0:
        raise AttackError('the evaluation data is empty.')
    device = device or next(model.parameters()).device
    with eval_mode(model):
        pixel_model = PixelModel(model, mean, std).to(device)
        num_classes = int(getattr(model, 'num_classes', 0) or int(y.max()) + 1)
        result = _sweep(_estimator(pixel_model, x.shape[1:], num_classes, device), x, y, norms, eps, method, steps,
                        seed, batch_size, black_box, progress, square_restarts)
    result['subset'] = images
    return result


def _sweep(estimator, x: np.ndarray, y: np.ndarray, norms: List[str], eps: Optional[Dict[str, Sequence[float]]],
           method: str, steps: int, seed: int, batch_size: int, black_box: bool, progress: bool,
           square_restarts: Optional[int] = None) -> Dict[str, Any]:
    """Every norm and epsilon of the request against one ART estimator (the model in eval mode)."""
    clean = 100.0 * float((estimator.predict(x, batch_size=batch_size).argmax(1) == y).mean())
    grids = {n: sorted((eps or {}).get(n) or (eps or {}).get('*') or default_eps(n, x.shape[1:])) for n in norms}
    out: Dict[str, Any] = {'attack': method, 'clean': clean, 'num_images': int(len(x)), 'steps': steps, 'seed': seed,
                           'warnings': [], 'sanity': {}, 'reported': {}, 'per_image': {}}
    d = int(np.prod(x.shape[1:]))
    for k, norm in enumerate(norms):
        out[norm] = {}
        for e in grids[norm]:
            acc, adv, kept, attack = _robust(method, estimator, x, y, norm, e, steps, batch_size,
                                             stream_seed('attack_start', seed, k), progress, square_restarts)
            _check_ball(adv, x, norm, e)
            out[norm][eps_key(e)] = acc
            broken_by = _broken_by(attack)
            if broken_by is not None:
                out.setdefault('broken_by', {}).setdefault(norm, {})[eps_key(e)] = broken_by
            out['per_image'].setdefault(norm, {})[eps_key(e)] = ''.join('1' if v else '0' for v in kept)
        large = SANITY_EPS[norm] or float(np.sqrt(d)) / 2
        out['sanity'][norm] = {eps_key(large): _robust(method, estimator, x, y, norm, large, steps, batch_size,
                                                       stream_seed('attack_start', seed, k), progress,
                                                       square_restarts)[0]}
        if black_box:
            out.setdefault('square', {})[norm] = {
                eps_key(e): _robust('square', estimator, x, y, norm, e, steps, batch_size,
                                    stream_seed('attack_start', seed, k))[0] for e in grids[norm]}
        rep = reported_eps(norm, grids[norm], x.shape[1:])
        out['reported'][f'{method}_{norm}@{eps_key(rep)}'] = out[norm][eps_key(rep)]
    out['method'] = _describe(method, steps, attack)  # the last attack run: every one had the same settings
    out['warnings'] = masking_warnings(out)
    return out


def _describe(method: str, steps: int, attack) -> str:
    """What ran, for every report; AutoAttack's members and budgets are read off ``attack``, the object ART runs."""
    import art
    if method == 'pgd':
        return f'PGD (ART {art.__version__} ProjectedGradientDescent, {steps} steps of 2.5 eps/{steps}, 1 random start)'
    if method == 'square':
        return f'Square Attack (ART {art.__version__}, {10 * steps} queries, gradient-free)'
    members = '; '.join(_member_settings(m) for m in attack.attacks)
    return f'AutoAttack (ART {art.__version__} implementation: {members}; worst case per image)'

def _check_ball(adv: np.ndarray, x: np.ndarray, norm: str, eps: float) -> None:
    """Every adversarial image lies in [0, 1] and in the epsilon-ball (a broken attack would inflate the results)."""
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
    if adv.min() < -1e-6 or adv.max() > 1 + 1e-6 or (size > eps * (1 + 1e-4) + 1e-6).any():
        raise AttackError(f'the {norm} attack at eps {eps:g} left [0, 1] or the ball (max |delta| {size.max():.4g}).')


def masking_warnings(result: Dict[str, Any]) -> List[str]:
    """The signs of gradient masking in a result: accuracy rising with epsilon, not reaching about 0 at a very large
    epsilon, and a black-box attack stronger than the gradient attack."""
    warnings: List[str] = []
    for norm in NORMS:
        if norm not in result:
            continue
        accs = list(result[norm].items())
        for (e0, a0), (e1, a1) in zip(accs, accs[1:]):
            if a1 > a0 + MASKING_TOLERANCE:
                warnings.append(f'{norm}: robust accuracy rises from {a0:.1f} at eps {e0} to {a1:.1f} at eps {e1}')
        for e, a in result['sanity'].get(norm, {}).items():
            if a > 10.0:
                warnings.append(f'{norm}: {a:.1f}% survive eps {e}, where any image is reachable')
        for e, a in result.get('square', {}).get(norm, {}).items():
            if a < result[norm][e] - MASKING_TOLERANCE:
                warnings.append(f'{norm}: the black-box Square attack ({a:.1f}%) beats {result["attack"]} '
                                f'({result[norm][e]:.1f}%) at eps {e}')
    return warnings
