"""Evaluation subsets: one seeded, stratified order of a split, whose prefixes are the subsets.

"The first N images" of a class-sorted split (mnist_5k, every imagefolder) measure a few classes: on mnist_5k the
first 500 test images give the standard MNIST net 77.0% at sigma 0.3 against 65.6% on the whole split. So every
subset an evaluation takes (``--max-images``, ``--attack-images``, ``--certify-images``, the Lipschitz estimates'
images, a recipe's ``eval.max_images``) is a prefix of one order:

- each class is shuffled by the ``evaluation_order`` stream of :mod:`timm_lipschitz.seeding` (keyed by the
  evaluation seed), and its k-th image gets the key (k + u_c) / n_c, with n_c the class's size and u_c a random
  offset in [0, 1) per class; the order sorts the keys. Every prefix then holds each class in proportion to its
  size (within one image), smaller subsets nest in larger ones, and every model and evaluation kind with the same
  seed sees the same images;
- a whole split keeps its own order (its scores, and the noise keyed by image position, stay those of a full
  evaluation). Within a subset, noise is keyed by the position in the order, so a prefix's images keep their noise.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..seeding import stream_seed

__all__ = ['EvaluationSubset', 'evaluation_order', 'evaluation_subset', 'positions_in', 'subset_record', 'labels_of',
           'SUBSET_RULE']

SUBSET_RULE = 'stratified prefix of the seeded evaluation order (robustness/subsets.py)'


class EvaluationSubset(Subset):
    """A prefix of a split's evaluation order; taking a prefix of it keeps the order (subsets nest)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], seed: int):
        super().__init__(dataset, list(indices))
        self.seed = seed


def labels_of(data: Any) -> torch.Tensor:
    """The labels of a split without reading its images where it keeps them (``labels``, TensorDataset, a tuple)."""
    if isinstance(data, tuple):
        return torch.as_tensor(data[1])
    if isinstance(data, Subset):
        return labels_of(data.dataset)[torch.as_tensor(list(data.indices), dtype=torch.long)]
    if isinstance(data, TensorDataset):
        return data.tensors[1]
    if hasattr(data, 'labels'):
        return torch.as_tensor(data.labels)
    return torch.tensor([int(data[i][1]) for i in range(len(data))])


def evaluation_order(labels: Sequence[int], seed: int = 0) -> List[int]:
    """The split's positions in its evaluation order (module doc)."""
    labels = torch.as_tensor(labels).long()
    g = torch.Generator().manual_seed(stream_seed('evaluation_order', seed))
    keys = torch.empty(len(labels), dtype=torch.float64)
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        offset = torch.rand((), generator=g, dtype=torch.float64)
        keys[members] = (torch.arange(len(members), dtype=torch.float64) + offset) / len(members)
    return torch.argsort(keys, stable=True).tolist()


def evaluation_subset(data: Any, n: Optional[int], seed: int = 0) -> Any:
    """The first ``n`` images of ``data``'s evaluation order (all of ``data`` when ``n`` is None or not smaller)."""
    if isinstance(data, tuple):
        data = TensorDataset(*data)
    if n is None or n >= len(data):
        return data
    if isinstance(data, EvaluationSubset):
        return EvaluationSubset(data.dataset, data.indices[:n], data.seed)
    return EvaluationSubset(data, evaluation_order(labels_of(data), seed)[:n], seed)


def positions_in(data: Any, subset: Any) -> List[int]:
    """The positions in ``data`` of ``subset``'s images, in the subset's order (a prefix of an ordered ``data`` is
    its first positions)."""
    if subset is data or isinstance(data, EvaluationSubset):
        return list(range(len(subset)))
    return list(subset.indices)


def subset_record(data: Any, whole: Optional[int] = None) -> Dict[str, Any]:
    """What an output says of the images it measured: how many, of how many, and by which rule."""
    if isinstance(data, EvaluationSubset):
        return {'num_images': len(data), 'of': len(data.dataset), 'rule': SUBSET_RULE, 'seed': data.seed}
    return {'num_images': len(data), 'of': whole or len(data), 'rule': 'the whole split'}
