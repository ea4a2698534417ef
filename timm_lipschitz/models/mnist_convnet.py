"""The seed paper's MNIST network: one conv layer, one fully-connected hidden layer, an output layer.

The paper gives only that outline; the sizes here (32 5x5 filters, 2x2 max-pool, 128 hidden units) are the
classic TensorFlow MNIST tutorial's shape scaled down for CPU training. It has no BatchNorm, which makes it
the reference model for exact multi-process equivalence tests. The hidden layer's input size depends on the
image size, so the config marks ``fixed_input_size`` and the model takes ``img_size`` (28 native, 32 for
zero-padded MNIST-like data).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..errors import UsageError
from ._bounds import DeclaresLipschitz, conv_bn_bound, linear_norm
from ._features import StagedFeatures, reset_head
from ._pretrained import build, keep_untrained_default, pretrained_cfgs_for

__all__ = ['MnistConvNet', 'MNIST_MEAN', 'MNIST_STD']

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
DIGIT_LABELS = tuple(str(i) for i in range(10))


class MnistConvNet(StagedFeatures, DeclaresLipschitz, nn.Module):
    """conv(5x5) -> ReLU -> max-pool(2) -> flatten -> FC hidden -> ReLU -> [dropout] -> FC output.

    timm's conventions: ``forward_features`` returns the pooled conv map, so ``num_features`` is its channel count
    (``conv_chs``) and ``pool_size`` its spatial size; ``forward_head(pre_logits=True)`` returns the hidden
    activations, ``head_hidden_size`` wide. The hidden layer is the "pooling" of this net (``global_pool='flatten'``):
    ``global_pool=''`` returns the feature map. Feature levels (``features_only``, ``forward_intermediates``): the
    conv output, its ReLU, and the pooled map.
    """

    def __init__(
            self,
            num_classes: int = 10,
            in_chans: int = 1,
            img_size: Union[int, Tuple[int, int]] = 28,
            conv_chs: int = 32,
            hidden_dim: int = 128,
            drop_rate: float = 0.,
            global_pool: str = 'flatten',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h < 2 or w < 2:
            raise UsageError(f'img_size={img_size!r} is too small; height and width must be >= 2.')
        self._check_pool(global_pool)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.global_pool = global_pool
        self.conv1 = nn.Conv2d(in_chans, conv_chs, kernel_size=5, padding=2, **dd)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=conv_chs, reduction=1, module='conv1'),
                                                   dict(num_chs=conv_chs, reduction=1, module='act1'),
                                                   dict(num_chs=conv_chs, reduction=2, module='pool')]
        self.fc1 = nn.Linear(conv_chs * (h // 2) * (w // 2), hidden_dim, **dd)
        self.num_features = conv_chs
        self.head_hidden_size = hidden_dim
        self.fc = nn.Linear(hidden_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ('flatten', ''):
            raise UsageError(f"global_pool={global_pool!r} is not allowed for mnist_convnet; use 'flatten' or ''.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1', blocks=r'^fc1')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # Two layers: nothing worth recomputing. Kept so timm utilities may call it.
        pass

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier on the parameters' device and dtype; ``global_pool=None`` keeps the current one."""
        reset_head(self, num_classes, global_pool, nn.Linear)

    def feature_stages(self):
        """The three feature levels: conv, its ReLU, the pooled map (``forward_intermediates``)."""
        return self.conv1, self.act1, self.pool

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act1(self.conv1(x)))

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """conv, max-pool (1-Lipschitz), hidden and output layers (ReLU and dropout in eval mode: 1)."""
        v, _ = conv_bn_bound(self.conv1, None, hw)
        return [('conv1', v), ('pool', 1.0), ('fc1', linear_norm(self.fc1)), ('fc', linear_norm(self.fc))]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x  # no flatten/hidden/classifier: the unpooled feature map, as timm's global_pool='' does
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (1, 28, 28), 'pool_size': (14, 14), 'fixed_input_size': True,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': MNIST_MEAN, 'std': MNIST_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'label_names': DIGIT_LABELS, 'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = keep_untrained_default(generate_default_cfgs({
    'mnist_convnet': _cfg(),
    **pretrained_cfgs_for('mnist_convnet', _cfg),
}))


@register_model
def mnist_convnet(pretrained: bool = False, **kwargs: Any) -> MnistConvNet:
    """The paper's MNIST network (1 conv + 1 FC hidden + output), 1x28x28 inputs by default."""
    return build(
        MnistConvNet, 'mnist_convnet', pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2)),
        **kwargs,
    )
