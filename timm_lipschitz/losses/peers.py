"""Peer noise-robust training objectives, behind the same calling convention as the paper's loss.

- ``gaussian_augmentation`` (Cohen et al. 2019): cross-entropy on x + N(0, sigma^2) only.
- ``stability`` (Zheng et al. 2016): CE(f(x), y) + alpha * KL(softmax f(x) || softmax f(x_bar)).
- ``consistency`` (Jeong & Shin 2020): mean CE over m noisy copies + lambda * mean_i KL(p_bar || p_i)
  + eta * H(p_bar), with p_bar the mean softmax over the copies.

All draw noise in [0,1] pixel space before normalization, without clipping (Cohen's convention).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .._lazy import lazy_module
from .base import LossOutput, Objective, check_count, check_non_negative, check_positive, full_precision
from .registry import register_loss

torch = lazy_module('torch', __name__)
F = lazy_module('torch.nn.functional', __name__)

__all__ = ['GaussianAugmentation', 'Stability', 'Consistency']


class _NoisyObjective(Objective):
    def __init__(self, sigma: float, *, mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                 seed: Optional[int]):
        super().__init__(mean=mean, std=std, seed=seed)
        self.sigma = check_positive('sigma', sigma)

    def perturb(self, images):
        return images + self.noise_like(images, self.sigma)


@register_loss('gaussian_augmentation')
class GaussianAugmentation(_NoisyObjective):
    """Cross-entropy on noisy images only (the training of randomized smoothing's base classifier)."""

    display_name = 'gaussian'
    abbrev = {'sigma': 's'}
    tag_always = ('sigma',)

    def __init__(self, sigma: float = 0.25, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(sigma, mean=mean, std=std, seed=seed)

    def __call__(self, model, images, targets) -> LossOutput:
        noisy_logits = self.forward_model(model, self.perturb(images))
        loss = F.cross_entropy(full_precision(noisy_logits), targets)
        logits = self.clean_logits(model, images)
        return LossOutput(loss, logits, {'ce': loss.detach()})


@register_loss('stability')
class Stability(_NoisyObjective):
    """CE(f(x), y) + alpha * KL(softmax f(x) || softmax f(x_bar)); gradients through both branches."""

    abbrev = {'sigma': 's', 'alpha': 'a'}
    tag_always = ('sigma', 'alpha')

    def __init__(self, sigma: float = 0.25, alpha: float = 1.0, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(sigma, mean=mean, std=std, seed=seed)
        self.alpha = check_non_negative('alpha', alpha)

    def __call__(self, model, images, targets) -> LossOutput:
        b = images.shape[0]
        both = full_precision(self.forward_model(model, torch.cat([images, self.perturb(images)])))
        logits, noisy_logits = both[:b], both[b:]
        ce = F.cross_entropy(logits, targets)
        kl = F.kl_div(F.log_softmax(noisy_logits, 1), F.log_softmax(logits, 1), log_target=True,
                      reduction='batchmean')
        loss = ce + self.alpha * kl
        return LossOutput(loss, logits, {'ce': ce.detach(), 'kl': kl.detach()})


@register_loss('consistency')
class Consistency(_NoisyObjective):
    """Consistency regularization over ``num_noise`` noisy copies (Jeong & Shin 2020)."""

    abbrev = {'sigma': 's', 'num_noise': 'm', 'consistency_weight': 'w', 'entropy_weight': 'e'}
    tag_always = ('sigma', 'num_noise', 'consistency_weight')

    def __init__(self, sigma: float = 0.25, num_noise: int = 2, consistency_weight: float = 10.0,
                 entropy_weight: float = 0.5, *, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, seed: Optional[int] = None):
        super().__init__(sigma, mean=mean, std=std, seed=seed)
        self.num_noise = check_count('num_noise', num_noise)
        self.consistency_weight = check_non_negative('consistency_weight', consistency_weight)
        self.entropy_weight = check_non_negative('entropy_weight', entropy_weight)

    def __call__(self, model, images, targets) -> LossOutput:
        m, b = self.num_noise, images.shape[0]
        noisy = torch.cat([self.perturb(images) for _ in range(m)])
        logits_m = full_precision(self.forward_model(model, noisy)).view(m, b, -1)
        ce = F.cross_entropy(logits_m.flatten(0, 1), targets.repeat(m))
        log_p = F.log_softmax(logits_m, dim=2)                       # (m, b, classes)
        p_bar = log_p.exp().mean(0)                                  # (b, classes)
        log_p_bar = p_bar.clamp_min(1e-12).log()
        kl = (p_bar.unsqueeze(0) * (log_p_bar.unsqueeze(0) - log_p)).sum(2).mean()   # mean_i KL(p_bar || p_i)
        entropy = -(p_bar * log_p_bar).sum(1).mean()
        loss = ce + self.consistency_weight * kl + self.entropy_weight * entropy
        logits = self.clean_logits(model, images)
        return LossOutput(loss, logits, {'ce': ce.detach(), 'kl': kl.detach(), 'entropy': entropy.detach()})
