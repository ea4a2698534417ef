"""The one place where [0,1] pixels become model inputs.

Noise is added in pixel space (the seed paper's and Cohen et al.'s convention), so loaders never normalize and
saved weights never contain a normalization layer: objectives and evaluation both call :class:`Normalizer` right
before the model, with the mean/std of the model's ``pretrained_cfg`` (timm models) or given explicitly
(torchvision models, which carry no config).

Inputs are checked here, where every objective and evaluation passes: integer images (uint8 0-255) are refused
with a message saying how to convert them (noise in 0-255 units and a 0-255 mean would silently train something
else), and float64 pixels are cast to the model's float32. :func:`warn_if_not_pixels` is the range check that
objectives and the noise sweep run on the first clean batch they see (the normalizer sees noisy images too,
which rightly leave [0, 1]).
"""
from __future__ import annotations

import warnings
import weakref
from typing import Any, Dict, Optional, Sequence, Tuple

from ._lazy import lazy_module
from .errors import UsageError

torch = lazy_module('torch', __name__)
nn = lazy_module('torch.nn', __name__)

__all__ = ['unwrap_model', 'resolve_mean_std', 'normalize', 'Normalizer', 'per_channel', 'check_pixels',
           'PixelRangeWarning']


class PixelRangeWarning(UserWarning):
    """A float batch clearly outside [0, 1]: images are expected as [0,1] pixels, before normalization."""


def unwrap_model(model):
    """The user's model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, 'module', None) or getattr(model, '_orig_mod', None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def resolve_mean_std(model=None, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Mean/std given explicitly, else from the model's ``pretrained_cfg``; an error names what is missing."""
    if (mean is None) != (std is None):
        raise UsageError(f'give both mean and std or neither (got mean={mean!r}, std={std!r}).')
    if mean is None:
        cfg = getattr(unwrap_model(model), 'pretrained_cfg', None) if model is not None else None
        if not cfg or cfg.get('mean') is None or cfg.get('std') is None:
            name = type(unwrap_model(model)).__name__ if model is not None else None
            raise UsageError(
                f'model {name} has no pretrained_cfg mean/std; pass mean=... and std=... (e.g. torchvision '
                f'ImageNet models: mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).')
        mean, std = cfg['mean'], cfg['std']
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std):
        raise UsageError(f'mean {mean} and std {std} have different lengths.')
    if any(not s > 0 for s in std):
        raise UsageError(f'std {std} must be > 0 in every channel.')
    return mean, std


def per_channel(values: Tuple[float, ...], channels: int, what: str) -> Tuple[float, ...]:
    """``values`` (a mean or std) for ``channels`` channels: as is, broadcast from 1, or averaged down to 1."""
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        # A 3-channel config on 1-channel data (e.g. CIFAR cfg, grayscale input): use the channel average.
        return (sum(values) / len(values),)
    raise UsageError(f'{what} has {len(values)} channels but the images have {channels}.')


def _mean_std_tensors(mean: Sequence[float], std: Sequence[float], channels: int, dtype, device):
    m = torch.tensor(per_channel(tuple(mean), channels, 'mean'), dtype=dtype, device=device)
    s = torch.tensor(per_channel(tuple(std), channels, 'std'), dtype=dtype, device=device)
    return m.view(1, channels, 1, 1), s.view(1, channels, 1, 1)


def check_pixels(images, where: str = 'images'):
    """Float [0,1] pixels or a clear error: integer images are refused (convert with ``images.float() / 255``)."""
    if not torch.is_tensor(images):
        raise TypeError(f'{where} must be a torch.Tensor of [0,1] pixels, got {type(images).__name__}.')
    if not images.is_floating_point():
        raise UsageError(f'{where} are {images.dtype}; objectives and evaluation take float pixels in [0, 1] '
                         f'(convert uint8 images with images.float() / 255, before any normalization).')
    return images


PIXEL_SLACK = 1e-3  # float error of a resize or a colour conversion; an already-normalized image goes far below 0


def warn_if_not_pixels(images, where: str = 'images') -> None:
    """One warning when a float batch is clearly not [0,1] pixels (a host sync: called on a first batch only).

    Integer images are refused first, so a uint8 batch gets the error that says how to convert it, not a range
    warning followed by that error."""
    check_pixels(images, where)
    lo, hi = images.detach().aminmax()
    lo, hi = float(lo), float(hi)
    if lo < -PIXEL_SLACK or hi > 1 + PIXEL_SLACK:
        what = 'a negative value is never a pixel: these look already normalized' if lo < -PIXEL_SLACK else \
            'values above 1 look like 0-255 pixels'
        warnings.warn(f'{where} range over [{lo:.3g}, {hi:.3g}]; expected [0,1] pixels before normalization '
                      f'({what}, which makes the noise sigma and L_n mean something else).', PixelRangeWarning,
                      stacklevel=3)


def normalize(images, mean: Sequence[float], std: Sequence[float]):
    """(images - mean) / std per channel, for NCHW float images in [0,1] pixel space."""
    check_pixels(images)
    m, s = _mean_std_tensors(mean, std, images.shape[1], images.dtype, images.device)
    return (images - m) / s


class Normalizer:
    """Normalizes for one model; mean/std are resolved lazily from the model on first use and then kept.

    The mean/std tensors are kept per model, device, dtype and channel count: building them anew would copy
    them host-to-device at every training step, which shows on a GPU that small models leave launch-bound (under
    ``torch.compile`` they are constants of the graph instead). float64 pixels are cast to float32 for a float32
    model (the dtype of its first parameter).
    """

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        if (mean is None) != (std is None):
            raise UsageError(f'give both mean and std or neither (got mean={mean!r}, std={std!r}).')
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self._tensors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, model, images):
        check_pixels(images)
        if torch.compiler.is_compiling():  # under torch.compile: constants in the graph (no weakref cache)
            dtype = torch.float32 if images.dtype == torch.float64 else images.dtype
            m, s = _mean_std_tensors(*resolve_mean_std(model, self.mean, self.std), images.shape[1], dtype,
                                     images.device)
            return (images.to(dtype) - m) / s
        key = (images.shape[1], images.dtype, images.device)
        per_model = self._tensors.setdefault(model, {})
        if key not in per_model:
            param = next(iter(model.parameters()), None)
            dtype = torch.float32 if images.dtype == torch.float64 and param is not None and \
                param.dtype == torch.float32 else images.dtype
            per_model[key] = (*_mean_std_tensors(*resolve_mean_std(model, self.mean, self.std), key[0], dtype,
                                                 key[2]), dtype)
        m, s, dtype = per_model[key]
        if images.dtype != dtype:
            images = images.to(dtype)
        return (images - m) / s

    def __getstate__(self) -> Dict[str, Any]:  # the cache holds weak references: not copied or pickled
        return {'mean': self.mean, 'std': self.std}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state['mean'], state['std'])
