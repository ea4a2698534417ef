"""The one seed-mixing rule: every random stream of a run is seeded from the run's ``seed`` and the stream's keys.

    stream_seed(stream, seed, k1, k2, ...) = (((seed * m1) + k1) * m2 + k2) ...

a polynomial fold of the keys with the stream's multipliers (fixed primes; 1 where a key only offsets the seed, as
the attacks' per-norm starts do). The streams, their keys and their multipliers are listed once, in
:data:`STREAMS`, and no module adds its own offset to a stream's seed; the multipliers are those of timm-lipschitz 0.1.0, so every stream
is bit-identical to what 0.1.0 drew. A generator seeded this way depends only on the keys named here: evaluation
noise is the same whatever the batch size, grid, device or number of processes; the data order and the fast path's
augmentation of an epoch are the same on resume.

One stream is not a generator of its own: model initialization draws from torch's global RNG, seeded once per run
with ``stream_seed('global', seed)`` (Accelerate's ``set_seed``) and saved in the training state. Not a run's streams at all: the
fixed 80/20 splits of the built-in datasets (``SPLIT_SEED`` in :mod:`timm_lipschitz.data.sources`), which are part
of the data and the same for every run and seed.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

from .errors import UsageError

__all__ = ['STREAMS', 'Stream', 'stream_seed']


class Stream(NamedTuple):
    keys: Tuple[str, ...]          # what the caller passes after the seed, in order
    multipliers: Tuple[int, ...]   # one per key (and per fixed key)
    fixed: Tuple[int, ...] = ()    # constant keys folded in before the caller's (a salt that separates streams)
    doc: str = ''


STREAMS: Dict[str, Stream] = {
    'global': Stream((), (), doc="torch's global RNG (model init, DataLoader-path augmentation)"),
    'objective_noise': Stream((), (7919,), (17,), doc="the training objective's noise generator"),
    'data_order': Stream(('epoch',), (100_003,), doc='the permutation of the training split in one epoch'),
    'augmentation': Stream(('epoch', 'process_index'), (1_000_003, 1_009),
                           doc="the fast path's batch augmentation in one epoch on one process"),
    'item_augmentation': Stream(('epoch', 'image_index'), (7_877, 1_000_033, 1_000_037), (43,),
                                doc="the DataLoader path's augmentation of one training image in one epoch"),
    'train_fraction': Stream((), (), doc='which training images a data.train_fraction < 1 keeps'),
    'evaluation_noise': Stream(('image_index', 'repeat'), (1_000_003, 1_009),
                               doc='the unit noise draw z of one test image and repeat (common random numbers)'),
    'corruption': Stream(('image_index', 'corruption', 'severity'), (1_000_003, 1_009, 101),
                         doc='the random parts of one corruption of one test image at one severity'),
    'synthetic_data': Stream(('split',), (1,), doc='the synthetic dataset: split 0 templates, 1 train, 2 test'),
    'smoothing_noise': Stream((), (), doc="randomized smoothing's Monte Carlo noise"),
    'evaluation_order': Stream((), (7_907,), (31,),
                               doc='the stratified order of a split whose prefixes are the evaluation subsets'),
    'attack_start': Stream(('norm_index',), (1,),
                           doc='random starts of the PGD lower bound (norm_index 0) and of the attacks on each '
                               'requested norm (its position in the request)'),
}


def stream_seed(stream: str, seed: int, *keys: int) -> int:
    """The seed of ``stream`` for the run seed ``seed`` and the stream's keys (see :data:`STREAMS`)."""
    if stream not in STREAMS:
        raise UsageError(f'unknown random stream {stream!r}; streams: {sorted(STREAMS)}.')
    spec = STREAMS[stream]
    if len(keys) != len(spec.keys):
        raise UsageError(f'stream {stream!r} takes keys {spec.keys}, got {len(keys)} value(s).')
    folded = spec.fixed + tuple(int(k) for k in keys)
    if len(spec.multipliers) != len(folded):  # zip would drop a key silently: every value of it one seed
        raise UsageError(f'stream {stream!r} declares {len(spec.multipliers)} multiplier(s) for {len(folded)} keys.')
    h = int(seed)
    for m, k in zip(spec.multipliers, folded):
        h = h * m + k
    return h
