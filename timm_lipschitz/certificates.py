"""Deterministic certificates, in one place: what a model's declared Lipschitz constants certify, and the checks that
hold a model to its declaration. The margin objective, the evaluation, the model card, the checkpoint metadata and
``hub list`` all go through this module.

- :func:`declaration` - a model's declared constants w.r.t. [0,1] pixels: of its body (input to pre-logits) and of its
  logits, the input normalization's ``1 / min(std)`` folded in (the only place a std is folded into a constant).
  Models declare them on normalized inputs (:class:`timm_lipschitz.models._bounds.DeclaresLipschitz`).
- The radius rules (:func:`scales`, :func:`radii`). Image ``x`` of class ``y`` is certified at every l2 radius
  below ``max(whole, per_pair)``:

  - whole model: ``(f_y - max_j f_j) / (sqrt(2) L (1 + tol))`` (each logit difference is ``sqrt(2) L``-Lipschitz
    when the logits are ``L``-Lipschitz);
  - per pair, for a linear head ``f = W g(x) + b`` with ``g`` ``L_body``-Lipschitz:
    ``min_j (f_y - f_j) / (L_body ||w_y - w_j|| (1 + tol))`` (``f_y - f_j = (w_y - w_j) . g(x) + c``). For an
    orthogonal head ``||w_y - w_j|| = sqrt(2)`` and the two agree; for a head of unit rows only this one is tight
    (dividing its margin by ``sqrt(2)`` would be unsound: such a head is not 1-Lipschitz).

  Both are sound, so the larger is taken; each radius records which rule gave it. ``tol`` is what the soundness check
  lets a measured constant exceed the declared one by, so it never inflates a radius.
- :func:`theorem1_radius` - the seed paper's conditional radius rho / L_n (a premise, not a check).
- :func:`margin_shift` - the same rule as a training target (the ``lipschitz_margin`` objective): both go through
  :func:`scales`.
- :func:`certify` - the public API: per-image radii and certified flags of a batch, one forward pass per image.
  :func:`dataset_certificate` runs it over a dataset for ``eval.json``.
- :func:`check_declared`, :func:`check_certified_unbroken` - the soundness checks; a failure is a bug, never a result
  (:class:`SoundnessError`).

``DETERMINISTIC_KEY`` is the one name the certificate travels under, from ``eval.json`` to ``robustness.json``, the
checkpoint metadata, the model card and ``hub list``; :func:`read_summary` also reads the names used before 0.3
(``margin_certificate``, ``lipschitz_constant``, ``deterministic_certified``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._lazy import lazy_module
from .modes import eval_mode
from .normalization import Normalizer, per_channel, resolve_mean_std, unwrap_model
from .protocol import CERT_RADII, LIPSCHITZ_TOLERANCE, by_radius

torch = lazy_module('torch', __name__)
_bounds = lazy_module('timm_lipschitz.models._bounds', __name__)
_estimates = lazy_module('timm_lipschitz.robustness.lipschitz', __name__)

__all__ = ['Declaration', 'Certificate', 'declaration', 'declares', 'linear_head_weight', 'pair_distances',
           'radii', 'scales', 'margin_shift', 'theorem1_radius', 'certify', 'certified_at', 'certified_accuracy',
           'dataset_certificate', 'check_declared',
           'check_certified_unbroken', 'SoundnessError', 'read_summary', 'summary_record', 'DETERMINISTIC_KEY',
           'RULES', 'SOUNDNESS_IMAGES', 'eval_entry']

DETERMINISTIC_KEY = 'deterministic_certificate'
RULES = ('whole_model', 'per_pair')
SOUNDNESS_IMAGES = 32   # images of the power iterations and of the PGD search of check_declared
POWER_ITERATIONS = 20


class SoundnessError(RuntimeError):
    """A certificate's premise is false for this model: a bug, never a result (the evaluation stops)."""


# ---- the declaration ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Declaration:
    """A model's declared Lipschitz constants w.r.t. [0,1] pixels (its input normalization folded in)."""
    body: float                   # input -> pre-logits (what feeds the linear head)
    logits: float                 # input -> logits
    head: str                     # the head's rows: 'orthogonal', 'unit_rows' or 'free'
    by_design: bool               # design values checked against measured factors (else: the measured product)
    input_size: Tuple[int, ...]
    std: Tuple[float, ...]
    method: str

    def record(self) -> Dict[str, Any]:
        return {**asdict(self), 'input_size': list(self.input_size), 'std': list(self.std)}


def declares(model: Any) -> bool:
    """The one test of whether a model declares its Lipschitz constants."""
    return isinstance(unwrap_model(model), _bounds.DeclaresLipschitz)


def _bound_inputs(model: Any, input_size: Optional[Sequence[int]], mean, std) -> Tuple[Tuple[int, ...],
                                                                                       Tuple[float, ...]]:
    size = tuple(int(v) for v in (input_size or model.pretrained_cfg['input_size']))
    _, sd = resolve_mean_std(model, mean, std)
    return size, per_channel(sd, size[0], 'std')


def declaration(model: Any, input_size: Optional[Sequence[int]] = None, mean=None,
                std=None) -> Optional[Declaration]:
    """The model's declaration at ``input_size`` and ``std`` (its own by default), or None if it declares none."""
    m = unwrap_model(model)
    if not declares(m):
        return None
    size, sd = _bound_inputs(m, input_size, mean, std)
    body, logits = m.declared_lipschitz(size[1:])
    fold = 1.0 / min(sd)  # normalizing divides by std: the smallest std stretches distances most
    return Declaration(body * fold, logits * fold, m.head_rows(), bool(m.lipschitz_by_design), size, sd,
                       m.lipschitz_method)


def linear_head_weight(model: Any, grad: bool = False) -> Optional['torch.Tensor']:
    """The weight the model's linear head computes with (None without one): detached, or with its gradient for the
    margin objective's per-pair target."""
    m = unwrap_model(model)
    head = m.get_classifier() if hasattr(m, 'get_classifier') else None
    if not isinstance(head, torch.nn.Linear):
        return None
    if grad:
        return head.constrained_weight() if hasattr(head, 'constrained_weight') else head.weight
    return _bounds.effective_weight(head)


def pair_distances(weight: 'torch.Tensor', labels: 'torch.Tensor') -> 'torch.Tensor':
    """``||w_y - w_j||`` for each image's label ``y`` and every class ``j`` (shape ``(images, classes)``)."""
    diff = weight[labels].unsqueeze(1) - weight.unsqueeze(0)
    return diff.norm(dim=2)


# ---- the radius rules ---------------------------------------------------------------------------------------------
def scales(decl: Declaration, labels: 'torch.Tensor', num_classes: int, rule: str,
           weight: Optional['torch.Tensor'] = None) -> 'torch.Tensor':
    """How fast each logit difference ``f_y - f_j`` can change per unit of l2 distance in [0,1] pixels, under
    ``rule`` (shape ``(images, classes)``): ``sqrt(2) L`` everywhere (whole model), or ``L_body ||w_y - w_j||`` (per
    pair; ``weight`` is the linear head's). The one rule behind both the certified radius (:func:`radii`: the gap
    divided by it) and the margin objective's target (:func:`margin_shift`: epsilon times it)."""
    if rule == RULES[0]:
        return torch.full((len(labels), num_classes), math.sqrt(2) * decl.logits, dtype=torch.float64,
                          device=labels.device)
    return decl.body * pair_distances(weight, labels)


def _rule_radius(gap: 'torch.Tensor', scale: 'torch.Tensor', labels: 'torch.Tensor') -> 'torch.Tensor':
    """min over j != y of gap_j / scale_j (a zero scale: that difference cannot change, so it never binds)."""
    r = torch.where(scale > 0, gap / scale, torch.where(gap > 0, math.inf, -math.inf))
    return r.scatter(1, labels.view(-1, 1), math.inf).min(1).values


def radii(logits: 'torch.Tensor', labels: 'torch.Tensor', decl: Declaration,
          weight: Optional['torch.Tensor'] = None,
          tolerance: float = LIPSCHITZ_TOLERANCE) -> Tuple['torch.Tensor', 'torch.Tensor']:
    """Each image's certified l2 radius (-1: misclassified) and the rule that gave it (an index into
    :data:`RULES`, -1 when misclassified): the larger of the whole-model and, with a linear head's ``weight``, the
    per-pair radius (module doc). Computed in float64."""
    z = logits.detach().double()
    labels = labels.to(z.device)
    gap = z.gather(1, labels.view(-1, 1)) - z
    rules = [RULES[0]] + ([RULES[1]] if weight is not None else [])
    by_rule = torch.stack([_rule_radius(gap, scales(decl, labels, z.shape[1], rule, None if weight is None else
                                                    weight.detach().double().to(z.device)) * (1 + tolerance), labels)
                           for rule in rules], 1)
    radius, rule = by_rule.max(1)
    correct = z.argmax(1) == labels
    return torch.where(correct, radius, torch.full_like(radius, -1.0)), torch.where(correct, rule,
                                                                                  torch.full_like(rule, -1))


def margin_shift(model: Any, logits: 'torch.Tensor', targets: 'torch.Tensor', epsilon: float, lipschitz: Any,
                 mean=None, std=None) -> 'torch.Tensor':
    """What the margin objective adds to the logits before its cross-entropy: ``epsilon`` times :func:`scales` on
    every logit but the true one, so that a shifted true logit above all others is exactly a margin that
    :func:`radii` certifies at ``epsilon``. The rule is the per-pair one for a head of unit rows (with gradient
    through the head), else the whole-model one. ``lipschitz``: L (``L_body`` per pair) as a number, or ``'model'``,
    the model's declaration at the objective's ``mean``/``std``."""
    decl = declaration(model, mean=mean, std=std)
    per_pair = decl is not None and decl.head == 'unit_rows'
    if lipschitz != 'model':
        decl = Declaration(float(lipschitz), float(lipschitz), 'free', False, (), (), 'given')
    weight = linear_head_weight(model, grad=True) if per_pair else None
    scale = scales(decl, targets, logits.shape[1], RULES[1] if per_pair else RULES[0],
                   None if weight is None else weight.to(logits.dtype)).to(logits.dtype)
    return epsilon * scale * (1 - torch.nn.functional.one_hot(targets, logits.shape[1]).to(logits.dtype))


# ---- certifying ---------------------------------------------------------------------------------------------------
@dataclass
class Certificate:
    """Per-image deterministic certificates of a batch: ``radius`` (-1: misclassified), ``rule`` (index into
    :data:`RULES`), ``certified[i, k]``: image i is certified at ``eps[k]`` (correct and radius >= eps)."""
    radius: 'torch.Tensor'
    rule: 'torch.Tensor'
    certified: 'torch.Tensor'
    predicted: 'torch.Tensor'
    eps: Tuple[float, ...]
    declaration: Declaration


def certify(model: Any, images: 'torch.Tensor', labels: Optional['torch.Tensor'] = None,
            eps: Sequence[float] = CERT_RADII[1:], mean=None, std=None,
            tolerance: float = LIPSCHITZ_TOLERANCE) -> Certificate:
    """Certify a batch of [0,1] images with one forward pass each. Without ``labels`` each image is certified for
    the class the model predicts (a certificate of the prediction: nothing within the radius changes it). The model
    must declare its constants (the package's models do; a 1-Lipschitz net's certify, an ordinary net's hardly)."""
    m = unwrap_model(model)
    decl = declaration(m, input_size=tuple(images.shape[1:]), mean=mean, std=std)
    if decl is None:
        raise NotImplementedError(f'{type(m).__name__} declares no Lipschitz constant: nothing to certify with.')
    norm = Normalizer(mean, std)
    with eval_mode(m), torch.no_grad():
        logits = m(norm(m, images))
    predicted = logits.argmax(1)
    labels = predicted if labels is None else torch.as_tensor(labels, device=logits.device)
    radius, rule = radii(logits, labels, decl, linear_head_weight(m), tolerance)
    eps = tuple(float(e) for e in eps)
    certified = torch.stack([certified_at(radius, e) for e in eps], 1) if eps else \
        torch.zeros(len(radius), 0, dtype=torch.bool)
    return Certificate(radius.float().cpu(), rule.cpu(), certified.cpu(), predicted.cpu(), eps, decl)


def certified_at(radius: 'torch.Tensor', eps: float) -> 'torch.Tensor':
    """Which images are certified at l2 ``eps``: radius >= eps (a misclassified image has a negative radius, so at
    0 these are the correct ones)."""
    return radius >= eps if eps > 0 else radius >= 0


def certified_accuracy(radius: Any, radii_: Sequence[float]) -> List[float]:
    """Certified accuracy (%) at each radius from per-image radii (a tensor, or the list ``eval.json`` records):
    100 · count / images, exact."""
    r = torch.as_tensor(radius, dtype=None if torch.is_tensor(radius) else torch.float64)
    return [100.0 * int(certified_at(r, t).sum()) / len(r) for t in radii_]


def dataset_certificate(model: Any, data: Any, decl: Declaration, batch_size: int = 256,
                              radii_: Sequence[float] = CERT_RADII, mean=None, std=None,
                              tolerance: float = LIPSCHITZ_TOLERANCE) -> Dict[str, Any]:
    """:func:`certify` over a dataset of (image, label): certified accuracy at ``radii_``, the mean radius, and the
    per-image radius and rule in evaluation order (what ``eval.json`` records under :data:`DETERMINISTIC_KEY`)."""
    m = unwrap_model(model)
    norm = Normalizer(mean, std)
    weight = linear_head_weight(m)
    rs, rules = [], []
    with eval_mode(m), torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(data, batch_size=batch_size):
            r, rule = radii(m(norm(m, images)), torch.as_tensor(labels), decl, weight, tolerance)
            rs.append(r.float().cpu())
            rules.append(rule.cpu())
    r, rule = torch.cat(rs), torch.cat(rules)
    return {'lipschitz': decl.record(), 'tolerance': tolerance, 'radii': list(radii_), 'num_images': len(r),
            'clean': 100.0 * (r >= 0).float().mean().item(),
            'certified_accuracy': certified_accuracy(r, radii_),
            'mean_radius': r.clamp_min(0).mean().item(),
            'rules': {name: int((rule == i).sum()) for i, name in enumerate(RULES)},
            'radius': [round(v, 6) for v in r.tolist()],
            'rule': ''.join('-wp'[i + 1] for i in rule.tolist())}


def theorem1_radius(lipschitz_target: float, output: str = 'probs') -> Optional[float]:
    """The seed paper's Theorem 1: rho / L_n with rho = sqrt(2)/2 (half the distance between one-hot labels).
    Conditional: it holds only if f really is L_n-Lipschitz in that output space, which training with the hinge does
    not guarantee (the evaluation sets the measured lower bound beside it); for logits there is no fixed rho."""
    return (math.sqrt(2) / 2) / lipschitz_target if output == 'probs' else None


# ---- the record's one name ----------------------------------------------------------------------------------------
def summary_record(cert: Dict[str, Any]) -> Dict[str, Any]:
    """What the checkpoint metadata and ``hub list`` carry of a certificate (under :data:`DETERMINISTIC_KEY`)."""
    lip = cert.get('lipschitz')
    logits = lip['logits'] if isinstance(lip, dict) else cert.get('lipschitz_bound', lip)
    out = {'lipschitz': logits, 'certified': by_radius(cert['radii'], cert['certified_accuracy']),
           'num_images': cert['num_images']}
    if isinstance(lip, dict):
        out.update(lipschitz_body=lip['body'], head=lip['head'])
    if cert.get('rules'):
        out['rules'] = cert['rules']
    return out


def read_summary(summary: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The certificate summary of a checkpoint's metadata (:func:`summary_record`'s form), also from the names
    written before 0.3 (``lipschitz_constant``, ``deterministic_certified``, ``deterministic_certified_images``);
    None when there is none."""
    if isinstance(summary.get(DETERMINISTIC_KEY), dict):
        return summary[DETERMINISTIC_KEY]
    if 'deterministic_certified' in summary:
        return {'lipschitz': summary.get('lipschitz_constant'), 'certified': summary['deterministic_certified'],
                'num_images': summary.get('deterministic_certified_images')}
    return None


def eval_entry(entry: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """An ``eval.json`` entry's certificate, under its name today or before 0.3 (``margin_certificate``)."""
    return entry.get(DETERMINISTIC_KEY) or entry.get('margin_certificate')


# ---- soundness ----------------------------------------------------------------------------------------------------
def _head_constraint(weight: Optional['torch.Tensor'], head: str) -> Optional[float]:
    """How far the head's effective rows are from its declared constraint: max |W W^T - I| (orthogonal rows) or
    max |‖w_j‖ - 1| (unit rows); None for a free head."""
    if weight is None or head == 'free':
        return None
    w = weight.double()
    if head == 'orthogonal':
        return (w @ w.T - torch.eye(len(w), dtype=w.dtype)).abs().max().item()
    return (w.norm(dim=1) - 1).abs().max().item()


def _pre_logits(m: Any):
    return lambda v: m.forward_head(m.forward_features(v), pre_logits=True)


def check_declared(model: Any, data: Any, decl: Optional[Declaration] = None, mean=None, std=None,
                   images: int = SOUNDNESS_IMAGES, iterations: int = POWER_ITERATIONS,
                   tolerance: float = LIPSCHITZ_TOLERANCE, seed: int = 0,
                   pgd: Optional[float] = None) -> Dict[str, Any]:
    """Every measurement of the model's effective constants against its declaration; the record of what was
    checked, or :class:`SoundnessError` naming what exceeded it.

    - the largest Jacobian norm of the logits (power iteration) and the PGD lower bound against the logits'
      constant; the largest Jacobian norm of the pre-logits against the body's;
    - for a declaration by design: the product of the exact norms of the effective layers (the body's, and with the
      head the logits'), and the head's rows against their constraint (orthogonal or unit norm). For an ordinary
      net the declaration *is* that product: comparing it with itself could not fail, so it is not reported.

    ``pgd``: the PGD lower bound when the caller has just measured it on these weights."""
    m = unwrap_model(model)
    decl = decl or declaration(m, mean=mean, std=std)
    if decl is None:
        raise NotImplementedError(f'{type(m).__name__} declares no Lipschitz constant.')
    norm = Normalizer(mean, std)
    fold = 1.0 / min(decl.std)
    with eval_mode(m):
        x = next(iter(torch.utils.data.DataLoader(data, batch_size=images)))[0]
        measured = {'jacobian_norm_max': (_estimates.jacobian_norm(lambda v: m(norm(m, v)), x, iterations, seed)
                                          .max().item(), decl.logits),
                    'body_jacobian_norm_max': (_estimates.jacobian_norm(lambda v: _pre_logits(m)(norm(m, v)), x,
                                                                        iterations, seed).max().item(), decl.body),
                    'pgd_lower_bound_max': (pgd if pgd is not None else _estimates.pgd_lower_bound(
                        m, data, seed=seed, mean=mean, std=std, max_images=images)['max'], decl.logits)}
        if decl.by_design:
            factors = m.lipschitz_factors(tuple(decl.input_size[1:]))
            body = math.prod(v for _, v in factors[:-1]) * fold
            measured['effective_body_bound'] = (body, decl.body)
            measured['effective_layer_bound'] = (body * factors[-1][1], decl.logits)
    record: Dict[str, Any] = {'declared': decl.logits, 'declared_body': decl.body, 'head': decl.head,
                              'tolerance': tolerance, 'num_images': int(len(x)), 'power_iterations': iterations,
                              **{k: v for k, (v, _) in measured.items()}}
    over = [f'{k} is {v:.6g} (declared {limit:.6g})' for k, (v, limit) in measured.items()
            if v > limit * (1 + tolerance)]
    off = _head_constraint(linear_head_weight(m), decl.head) if decl.by_design else None
    if off is not None:
        record['head_constraint_error'] = off
        if off > tolerance:
            over.append(f'its {decl.head} head is off its constraint by {off:.3g}')
    if over:
        raise SoundnessError(
            f'{type(m).__name__} declares the Lipschitz constants body {decl.body:.6g} / logits {decl.logits:.6g}, '
            f'but ' + '; '.join(over) + f' (tolerance {tolerance:g}). Its weights do not satisfy the constraint it '
            f'declares (edited effective weights, a wrong declaration): nothing is certified.')
    return {**record, 'passed': True}


def check_certified_unbroken(radius: 'torch.Tensor', robust: Dict[str, Sequence[bool]],
                             what: str = 'PGD') -> Dict[str, Any]:
    """``radius[i]``: image i's certified l2 radius (< 0: not certified); ``robust[eps][i]``: whether image i kept
    its label under the attack at l2 ``eps``. An image certified at ``eps`` and broken there is a bug."""
    checked = {}
    for eps, flags in robust.items():
        flags = torch.as_tensor(list(flags), dtype=torch.bool)
        n = min(len(flags), len(radius))
        certified = torch.as_tensor(radius[:n]) >= float(eps)
        broken = certified & ~flags[:n]
        if broken.any():
            idx = broken.nonzero().flatten().tolist()
            raise SoundnessError(
                f'{len(idx)} image(s) certified at l2 radius {eps} were broken by {what} at the same radius '
                f'(evaluation order positions {idx[:10]}): the certificate is unsound for this model; nothing is '
                f'reported.')
        checked[str(eps)] = {'certified': int(certified.sum()), 'num_images': n}
    return {'attack': what, 'checked': checked, 'violations': 0}
