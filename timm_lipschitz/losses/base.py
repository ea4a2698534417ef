"""What every objective shares: the calling convention, the noise generator, and normalization."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn as nn

from ..normalization import Normalizer

__all__ = ['LossOutput', 'Objective', 'check_positive', 'check_non_negative', 'full_precision']


class LossOutput(NamedTuple):
    """``loss`` to backpropagate, ``logits`` of the clean images (for accuracy), ``parts`` scalars to log."""
    loss: torch.Tensor
    logits: torch.Tensor
    parts: Dict[str, torch.Tensor]


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """At least float32: low-precision autocast outputs are upcast, float64 (gradcheck) is kept."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def check_positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f'{name}={value!r} is not allowed; {name} must be a number > 0.')
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f'{name}={value!r} is not allowed; {name} must be a number >= 0.')
    return float(value)


class Objective:
    """Base of all objectives: ``objective(model, images, targets) -> LossOutput``.

    ``images`` are float pixels in [0,1]; the objective adds noise there, normalizes with the model's mean/std
    (or ``mean``/``std`` given here, for models without a timm ``pretrained_cfg``) and runs the model. Noise
    comes from a generator the objective owns, created lazily on the images' device and seeded by ``seed``
    (drawn from torch's global RNG when not given, so ``accelerate.utils.set_seed`` makes it reproducible).
    ``state_dict``/``load_state_dict`` carry the generator, so a resumed run continues the same noise stream.
    """

    loss_name = ''

    def __init__(self, *, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 seed: Optional[int] = None):
        self.normalizer = Normalizer(mean, std)
        self.seed = int(torch.randint(0, 2 ** 62, ()).item()) if seed is None else int(seed)
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[torch.Tensor] = None
        self._pending_device: Optional[str] = None
        self.num_shards, self.shard_index = 1, 0

    # -- hyperparameters -------------------------------------------------------------------------------------
    def hparams(self) -> Dict[str, Any]:
        """The objective's own hyperparameters (for checkpoint metadata and logs)."""
        return {}

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in self.hparams().items())
        return f'{type(self).__name__}({args})'

    # -- noise -----------------------------------------------------------------------------------------------
    def reseed(self, seed: int) -> None:
        """Restart the noise stream from ``seed`` (every process uses the same seed; see :meth:`set_shard`)."""
        self.seed = int(seed)
        self._generator = None
        self._pending_state = None

    def set_shard(self, num_shards: int, index: int) -> None:
        """Draw noise for the global batch and keep this process's slice.

        Every process seeds the same stream, draws noise for all ``num_shards`` equal slices of the global batch
        and keeps slice ``index`` (the slice its data loader gives it), so an N-process run adds exactly the
        noise of a 1-process run with the same global batch, and one saved generator state serves all ranks.
        """
        if not 0 <= index < num_shards:
            raise ValueError(f'shard index {index} is not in [0, {num_shards}).')
        self.num_shards, self.shard_index = int(num_shards), int(index)

    def generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        gen = self._generator
        if gen is None or gen.device.type != device.type:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None:
                if self._pending_device not in (None, device.type):
                    raise ValueError(
                        f'the saved noise generator state is for a {self._pending_device} generator but the images '
                        f'are on {device.type}; resume on the same device type or call reseed().')
                gen.set_state(self._pending_state)
                self._pending_state = None
            self._generator = gen
        return gen

    def noise_like(self, images: torch.Tensor, sigma: float) -> torch.Tensor:
        """sigma * N(0, 1) noise, drawn in float32 from the objective's generator."""
        b = images.shape[0]
        shape = (b * self.num_shards, *images.shape[1:])
        z = torch.randn(shape, generator=self.generator(images.device), device=images.device, dtype=torch.float32)
        if self.num_shards > 1:
            z = z[self.shard_index * b:(self.shard_index + 1) * b]
        return (z * sigma).to(images.dtype)

    def state_dict(self) -> Dict[str, Any]:
        state = self._generator.get_state() if self._generator is not None else self._pending_state
        return {'seed': self.seed, 'generator': state,
                'device': self._generator.device.type if self._generator is not None else None}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seed = int(state['seed'])
        self._generator = None
        self._pending_state = state.get('generator')
        self._pending_device = state.get('device')

    # -- model calls -----------------------------------------------------------------------------------------
    def forward_model(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Normalize [0,1] pixels for ``model`` and run it."""
        return model(self.normalizer(model, images))

    @torch.no_grad()
    def clean_logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits of the clean images for accuracy only, for objectives whose loss never sees them.

        Runs without autograd and with BatchNorm in eval mode, so the training signal and the BN running
        statistics stay exactly those of the method (noisy inputs only).
        """
        was_training = model.training
        model.eval()
        try:
            return self.forward_model(model, images).detach()
        finally:
            model.train(was_training)

    def __call__(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        raise NotImplementedError
