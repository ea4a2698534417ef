"""An objective's training noise: one seeded generator, created lazily on the images' device, sharded across
processes, and saved with the training state so a resumed run continues the same stream. Held by every
:class:`~timm_lipschitz.losses.base.Objective` (``objective.noise``); the objective's ``noise_like`` draws from it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .._lazy import lazy_module
from ..errors import UsageError

torch = lazy_module('torch', __name__)

__all__ = ['NoiseStream']


class NoiseStream:
    """sigma * N(0, 1) noise from a generator seeded by ``seed`` (drawn from torch's global RNG when None, so
    ``accelerate.utils.set_seed`` makes it reproducible)."""

    def __init__(self, seed: Optional[int] = None) -> None:
        self.seed = int(torch.randint(0, 2 ** 62, ()).item()) if seed is None else int(seed)
        self._generator = None
        self._pending_state = None
        self._pending_device: Optional[str] = None
        self.num_shards, self.shard_index = 1, 0

    def reseed(self, seed: int) -> None:
        """Restart the stream from ``seed`` (every process uses the same seed; see :meth:`set_shard`)."""
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
            raise UsageError(f'shard index {index} is not in [0, {num_shards}).')
        self.num_shards, self.shard_index = int(num_shards), int(index)

    def generator(self, device):
        """The stream's generator on ``device``'s type (created, and a saved state restored, on first use)."""
        device = torch.device(device)
        gen = self._generator
        if gen is None or gen.device.type != device.type:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None:
                if self._pending_device not in (None, device.type):
                    raise UsageError(
                        f'the saved noise generator state is for a {self._pending_device} generator but the images '
                        f'are on {device.type}; resume on the same device type or call reseed().')
                gen.set_state(self._pending_state)
                self._pending_state = None
            self._generator = gen
        return gen

    def noise_like(self, images, sigma: float):
        """sigma * N(0, 1) noise shaped like ``images``, drawn in float32, this process's slice of the global batch."""
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
