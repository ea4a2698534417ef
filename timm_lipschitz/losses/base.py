"""What every objective shares: the calling convention, what an objective declares about itself, the noise
generator, normalization, and the argument checks whose errors name the argument.

An objective class is the one home of everything about that objective: its hyperparameters (the ``__init__``
signature, with defaults, checked in ``__init__``), the short names used in tags and grid point names
(``abbrev``), which hyperparameters a tag always shows (``tag_always``), its label in tables (``display_name``),
whether a run of it is standard training (:meth:`Objective.is_standard`), and whether it is the paper's method as
published (:meth:`Objective.is_paper_variant`). The trainer, tags and sweep tables ask the objective; none of
them names an objective.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

from .._lazy import lazy_module
from ..errors import UsageError
from ..modes import eval_mode
from ..naming import compact
from ..normalization import Normalizer, check_pixels, warn_if_not_pixels
from ..numbers import check_number, range_text
from ..ratio import full_precision
from .noise import NoiseStream

torch = lazy_module('torch', __name__)

__all__ = ['LossOutput', 'Objective', 'HyperparameterError', 'check_positive', 'check_non_negative',
           'check_choice', 'check_count', 'full_precision', 'NOT_HYPERPARAMETERS']

NOT_HYPERPARAMETERS = ('mean', 'std', 'seed')  # arguments every objective takes that are not part of its method


class LossOutput(NamedTuple):
    """``loss`` to backpropagate, ``logits`` of the clean images (for accuracy), ``parts`` scalars to log."""
    loss: Any
    logits: Any
    parts: Dict[str, Any]


class HyperparameterError(UsageError):
    """An objective's argument is out of range; ``name`` is the argument, so callers can name their own key
    (a recipe reports ``loss.sigma=-0.5``)."""

    def __init__(self, name: str, value: Any, rule: str):
        self.name, self.value, self.rule = name, value, rule
        super().__init__(f'{name}={value!r} is not allowed; {rule}.')

    def renamed(self, prefix: str) -> 'HyperparameterError':
        """The same error with the argument named ``<prefix><name>`` (e.g. ``loss.sigma``)."""
        return HyperparameterError(prefix + self.name, self.value, self.rule)


def _checked(name: str, value: Any, **rule: Any) -> Any:
    """The package's one number check (:func:`timm_lipschitz.numbers.check_number`), refused as a
    :class:`HyperparameterError` so a recipe can name its own key (``loss.<name>``)."""
    try:
        return check_number(name, value, error=ValueError, **rule)
    except ValueError:
        allowed = range_text(rule.get('low'), rule.get('high'), rule.get('low_open', False), False,
                             rule.get('integer', False))
        raise HyperparameterError(name, value, f'{name} must be {allowed}') from None


def check_positive(name: str, value: Any) -> float:
    return float(_checked(name, value, low=0, low_open=True))


def check_non_negative(name: str, value: Any) -> float:
    return float(_checked(name, value, low=0))


def check_count(name: str, value: Any) -> int:
    """A count (steps, copies): an integer >= 1, not a bool."""
    return _checked(name, value, low=1, integer=True)


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise HyperparameterError(name, value, f'choose one of {tuple(allowed)}')
    return value


class Objective:
    """Base of all objectives: ``objective(model, images, targets) -> LossOutput``.

    ``images`` are float pixels in [0,1]; the objective adds noise there, normalizes with the model's mean/std
    (or ``mean``/``std`` given here, for models without a timm ``pretrained_cfg``) and runs the model. Noise
    comes from the objective's :class:`~timm_lipschitz.losses.noise.NoiseStream` (``self.noise``, seeded by
    ``seed``); ``noise_like`` draws from it, and ``state_dict``/``load_state_dict`` carry its generator, so a resumed
    run continues the same noise stream.

    Subclasses store each hyperparameter under its argument name (``self.sigma``), so :meth:`hparams` is the
    signature read back.
    """

    loss_name = ''                     # the registered name (set by ``register_loss``)
    display_name = ''                  # label in tables and plots; the registered name when empty
    abbrev: Dict[str, str] = {}        # hyperparameter -> short name in tags and grid point names
    tag_always: Tuple[str, ...] = ()   # hyperparameters a tag always shows; others only when not at the default

    def __init__(self, *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        self.normalizer = Normalizer(mean, std)
        self.noise = NoiseStream(seed)
        self._range_checked = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every objective's ``__call__`` first checks its images (:meth:`check_images`)."""
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get('__call__')
        if call is not None and not getattr(call, '_checks_images', False):
            @functools.wraps(call)
            def checked(self, model, images, targets):
                return call(self, model, self.check_images(images), targets)
            checked._checks_images = True
            cls.__call__ = checked

    def check_images(self, images):
        """Float [0,1] pixels, or a clear error for integer images; the first batch is checked for its range
        (one warning if it is clearly not [0,1] pixels), later batches are not (a range check syncs the GPU)."""
        check_pixels(images, 'the images given to the objective')
        if not self._range_checked:
            self._range_checked = True
            warn_if_not_pixels(images, 'the images given to the objective')
        return images

    # -- what the objective is -----------------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """The hyperparameters and their defaults (``inspect.Parameter.empty`` if required), in signature order."""
        sig = inspect.signature(cls.__init__)
        return {p.name: p.default for p in sig.parameters.values()
                if p.name != 'self' and p.name not in NOT_HYPERPARAMETERS
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    @classmethod
    def resolve_hparams(cls, args: Dict[str, Any]) -> Dict[str, Any]:
        """``args`` (e.g. a recipe's ``loss`` section without ``name``) with the defaults filled in."""
        return {**cls.defaults(), **{k: v for k, v in args.items() if k not in ('name', *NOT_HYPERPARAMETERS)}}

    @classmethod
    def short_names(cls) -> Dict[str, str]:
        """Every hyperparameter's short name: ``abbrev``, else the name without underscores."""
        return {k: cls.abbrev.get(k, compact(k)) for k in cls.defaults()}

    @classmethod
    def label(cls) -> str:
        return cls.display_name or cls.loss_name

    @classmethod
    def is_standard(cls, hparams: Dict[str, Any]) -> bool:
        """True when a run of this objective is standard training (the 'standard' row of the paper's tables)."""
        return False

    @classmethod
    def is_paper_variant(cls, hparams: Dict[str, Any]) -> bool:
        """True when these hyperparameters are the paper's method as published (pooled into its table cells)."""
        return False

    def hparams(self) -> Dict[str, Any]:
        """The objective's own hyperparameters (for checkpoint metadata, tags and logs)."""
        return {k: getattr(self, k) for k in self.defaults()}

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.hparams().items())
        return f'{type(self).__name__}({args})'

    # -- noise (the objective's NoiseStream) --------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.noise.seed

    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed``."""
        self.noise.reseed(seed)

    def set_shard(self, num_shards: int, index: int) -> None:
        """Draw noise for the global batch and keep this process's slice (:meth:`NoiseStream.set_shard`)."""
        self.noise.set_shard(num_shards, index)

    def generator(self, device):
        return self.noise.generator(device)

    def noise_like(self, images, sigma: float):
        """sigma * N(0, 1) noise, drawn in float32 from the objective's generator (the plugin API)."""
        return self.noise.noise_like(images, sigma)

    def state_dict(self) -> Dict[str, Any]:
        return self.noise.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.noise.load_state_dict(state)

    # -- model calls -----------------------------------------------------------------------------------------
    def forward_model(self, model, images):
        """Normalize [0,1] pixels for ``model`` and run it."""
        return model(self.normalizer(model, images))

    def clean_logits(self, model, images):
        """Logits of the clean images for accuracy only, for objectives whose loss never sees them.

        Runs without autograd and with BatchNorm in eval mode, so the training signal and the BN running
        statistics stay exactly those of the method (noisy inputs only).
        """
        with eval_mode(model), torch.no_grad():
            return self.forward_model(model, images).detach()

    def __call__(self, model, images, targets) -> LossOutput:
        raise NotImplementedError
