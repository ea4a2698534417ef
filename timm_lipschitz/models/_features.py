"""timm's ``forward_intermediates`` for this package's models, written once.

Each model lists its feature levels as a sequence of stages (stage i's output is level i, as in its
``feature_info``) and names the module that closes ``forward_features`` (a PreResNet's final BN + ReLU). That
closing module belongs to the last level only: with ``stop_early`` the returned tensor is the last stage that ran,
unchanged, as timm's own models do. Models inherit the method from :class:`StagedFeatures`.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models._features import feature_take_indices

from ..errors import UsageError

Stage = Callable[[torch.Tensor], torch.Tensor]


def forward_intermediates(
        stages: Sequence[Stage],
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
        final: Optional[Stage] = None,
) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
    """The outputs of the stages picked by ``indices`` (timm's semantics) and the last output computed."""
    if output_fmt != 'NCHW':
        raise UsageError(f"output_fmt={output_fmt!r} is not supported; only 'NCHW' is.")
    take_indices, max_index = feature_take_indices(len(stages), indices)
    last = len(stages) - 1
    intermediates = []
    for i, stage in enumerate(stages):
        if stop_early and i > max_index:
            break
        x = stage(x)
        if i == last and final is not None:
            x = final(x)
        if i in take_indices:
            intermediates.append(x)
    return intermediates if intermediates_only else (x, intermediates)


class StagedFeatures:
    """timm's ``forward_intermediates`` for a model that lists its feature levels (``feature_stages``) and the module
    that closes ``forward_features`` (``closing_stage``, None when nothing does)."""

    def feature_stages(self) -> Sequence[Stage]:
        raise NotImplementedError

    def closing_stage(self) -> Optional[Stage]:
        return None

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The feature levels picked by ``indices`` (timm's semantics), and the last output computed."""
        return forward_intermediates(self.feature_stages(), x, indices, stop_early, output_fmt, intermediates_only,
                                     final=self.closing_stage())

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """timm's contract: the stages after the last level ``indices`` asks for become ``Identity`` (and the closing
        stage with them, or with ``prune_norm``), and the head is removed with ``prune_head``; returns the levels
        kept. ``forward_intermediates`` then gives the same levels at a lower cost."""
        stages = list(self.feature_stages())
        take_indices, max_index = feature_take_indices(len(stages), indices)
        closing = self.closing_stage()
        dropped = stages[max_index + 1:] + ([closing] if closing is not None and
                                            (prune_norm or max_index < len(stages) - 1) else [])
        children = dict(self.named_children())
        for stage in dropped:
            name = next((n for n, m in children.items() if m is stage), None)
            if name is None:
                raise UsageError(f'{type(self).__name__} cannot prune a stage that is not one of its modules.')
            setattr(self, name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def reset_head(model, num_classes: int, global_pool: Optional[str], layer: Callable[..., torch.nn.Module]) -> None:
    """timm's ``reset_classifier`` for a model with a flat ``fc`` head after ``head_hidden_size`` features: a new
    ``layer(in, out, device=..., dtype=...)`` on the parameters' device and dtype (``Identity`` for 0 classes), in
    the model's mode; ``global_pool=None`` keeps the current pooling (checked by the model's ``_check_pool``)."""
    if global_pool is not None:
        model._check_pool(global_pool)
        model.global_pool = global_pool
    model.num_classes = num_classes
    dd = get_device_dtype(model)
    model.fc = layer(model.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
    model.fc.train(model.training)
