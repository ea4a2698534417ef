"""CIFAR ResNet and PreResNet (He et al. 2016) as timm models.

The CIFAR family differs from ImageNet ResNets: a single 3x3 stem conv, three stages of 16/32/64 channels with
n basic blocks each (depth = 6n + 2), no stem pooling, and option-A shortcuts (parameter-free: stride-2
subsampling plus zero-padded channels). Option A is what the seed paper (and He et al.) used; ``shortcut='B'``
gives the 1x1 conv + BN projection that chenyaofo/pytorch-cifar-models uses.

Layout follows timm's ``resnet.py``: blocks, the model class with the full timm contract, ``_cfg`` /
``generate_default_cfgs``, and ``@register_model`` functions at the bottom.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, create_classifier, get_device_dtype
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from ..errors import UsageError
from ._bounds import BlockBound, DeclaresLipschitz, bn_scale, conv_bn_bound, linear_norm
from ._features import StagedFeatures
from ._pretrained import build, keep_untrained_default, pretrained_cfgs_for

__all__ = ['CifarResNet', 'BasicBlock', 'PreActBasicBlock', 'ShortcutA', 'CIFAR10_MEAN', 'CIFAR10_STD',
           'CIFAR10_LABELS', 'SHORTCUT_OPTIONS']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
SHORTCUT_OPTIONS = ('A', 'B')
STAGE_CHANNELS = (16, 32, 64)
DEEP = 110  # depths from here on start with zero-initialized residual branches (see CifarResNet's zero_init_last)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the new channels (no parameters).

    The padding is split evenly in front of and behind the existing channels, which is the layout of
    akamaster/pytorch_resnet_cifar10 (``planes // 4`` on each side), so its checkpoints convert exactly.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad_front = (out_chs - in_chs) // 2
        self.pad_back = out_chs - in_chs - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


def _make_shortcut(in_chs: int, out_chs: int, stride: int, shortcut: str, dd: Dict[str, Any]) -> Optional[nn.Module]:
    """Identity (None) when shapes match, otherwise the requested option-A or option-B projection."""
    if stride == 1 and in_chs == out_chs:
        return None
    if shortcut == 'A':
        return ShortcutA(in_chs, out_chs, stride)
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False, **dd),
        nn.BatchNorm2d(out_chs, **dd),
    )


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1, dd: Optional[Dict[str, Any]] = None) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False, **(dd or {}))


class BasicBlock(nn.Module):
    """Post-activation basic block: conv-BN-ReLU-conv-BN, add shortcut, ReLU (He et al. 2016a)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = 'A', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = _conv3x3(in_chs, out_chs, stride, dd)
        self.bn1 = nn.BatchNorm2d(out_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs, 1, dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.downsample = _make_shortcut(in_chs, out_chs, stride, shortcut, dd)
        self.act2 = nn.ReLU(inplace=True)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)

    def block_bound(self, hw: Tuple[int, int]) -> BlockBound:
        """shortcut + conv-BN * conv-BN (ReLU is 1-Lipschitz), and the output size."""
        a, hw1 = conv_bn_bound(self.conv1, self.bn1, hw)
        b, hw2 = conv_bn_bound(self.conv2, self.bn2, hw1)
        return BlockBound(_shortcut_bound(self.downsample, hw) + a * b, hw2)


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv-BN-ReLU-conv, add shortcut (He et al. 2016b, identity mappings).

    The shortcut takes the raw input ``x`` (not the pre-activated one), so option A stays parameter-free and the
    parameter count equals the post-activation ResNet's of the same depth.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = 'A', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.bn1 = nn.BatchNorm2d(in_chs, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_chs, out_chs, stride, dd)
        self.bn2 = nn.BatchNorm2d(out_chs, **dd)
        self.act2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs, 1, dd)
        self.downsample = _make_shortcut(in_chs, out_chs, stride, shortcut, dd)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.conv1(self.act1(self.bn1(x)))
        x = self.conv2(self.act2(self.bn2(x)))
        return x + shortcut

    def block_bound(self, hw: Tuple[int, int]) -> BlockBound:
        """shortcut + BN * conv * BN * conv (BN before a conv is bounded by its largest scale)."""
        a, hw1 = conv_bn_bound(self.conv1, None, hw)
        b, hw2 = conv_bn_bound(self.conv2, None, hw1)
        a, b = a * bn_scale(self.bn1).abs().max().item(), b * bn_scale(self.bn2).abs().max().item()
        return BlockBound(_shortcut_bound(self.downsample, hw) + a * b, hw2)


def _shortcut_bound(downsample: Optional[nn.Module], hw: Tuple[int, int]) -> float:
    """Identity, or option A's subsample + zero channels: norm <= 1; option B: its conv-BN."""
    if downsample is None or isinstance(downsample, ShortcutA):
        return 1.0
    return conv_bn_bound(downsample[0], downsample[1], hw)[0]


def blocks_per_stage(depth: int) -> int:
    """Blocks per stage for a CIFAR ResNet of ``depth`` layers; depth must be 6n + 2 with n >= 1."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise UsageError(
            f'depth={depth!r} is not allowed for a CIFAR ResNet: depth must be 6n+2 with n >= 1 '
            f'(e.g. 20, 32, 44, 56, 110, 1202).')
    return (depth - 2) // 6


class CifarResNet(StagedFeatures, DeclaresLipschitz, nn.Module):
    """CIFAR ResNet / PreResNet with 3 stages (16, 32, 64 channels) and global average pooling.

    Args:
        depth: 6n + 2 layers (20, 32, 44, 56, 110, 1202, ...).
        preact: pre-activation blocks (PreResNet) instead of post-activation (ResNet).
        shortcut: 'A' (parameter-free, the paper's) or 'B' (1x1 conv + BN projection).
        num_classes: classifier outputs; 0 removes the classifier.
        in_chans: input channels (1 for grayscale data, 3 for RGB).
        drop_rate: dropout before the classifier.
        global_pool: timm pooling type ('avg', 'max', 'avgmax', ... or '' for none).
        width: stage channels, (16, 32, 64) in the paper.
        zero_init_last: zero the last BN / conv of each residual branch, so every block starts as its shortcut.
            Default (None): on for depths of 110 and more, off below. He et al. and the paper initialize without it,
            and the paper trains depths 20 and 32, which keep their initialization; at depth 110 the residual sums
            of an untrained network in eval mode reach logits of 1e8 and at 1202 overflow to NaN, so those start
            from their shortcuts (timm's ResNet default).
        device, dtype: where and in which dtype the parameters are created (timm's factory passes them).
    """

    def __init__(
            self,
            depth: int = 20,
            preact: bool = False,
            shortcut: str = 'A',
            num_classes: int = 10,
            in_chans: int = 3,
            drop_rate: float = 0.,
            global_pool: str = 'avg',
            width: Tuple[int, int, int] = STAGE_CHANNELS,
            zero_init_last: Optional[bool] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        shortcut = str(shortcut).upper()
        if shortcut not in SHORTCUT_OPTIONS:
            raise UsageError(f'shortcut={shortcut!r} is not allowed; choose one of {SHORTCUT_OPTIONS}.')
        n = blocks_per_stage(depth)
        self.depth = depth
        self.preact = preact
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        block: Type[nn.Module] = PreActBasicBlock if preact else BasicBlock

        self.conv1 = _conv3x3(in_chans, width[0], 1, dd)
        if preact:
            # The stem is a bare conv: the first pre-activation block normalizes its input.
            self.bn1 = nn.Identity()
            self.act1 = nn.Identity()
            self.feature_info: List[Dict[str, Any]] = [dict(num_chs=width[0], reduction=1, module='conv1')]
        else:
            self.bn1 = nn.BatchNorm2d(width[0], **dd)
            self.act1 = nn.ReLU(inplace=True)
            self.feature_info = [dict(num_chs=width[0], reduction=1, module='act1')]

        in_chs = width[0]
        for i, out_chs in enumerate(width):
            stride = 1 if i == 0 else 2
            blocks = [block(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1, shortcut, **dd)
                      for j in range(n)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** i, module=f'layer{i + 1}'))
            in_chs = out_chs

        # PreResNets end with BN + ReLU before pooling, ResNets already end activated.
        self.norm = BatchNormAct2d(in_chs, **dd) if preact else nn.Identity()
        if preact:
            self.feature_info[-1]['module'] = 'norm'
        self.num_features = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=depth >= DEEP if zero_init_last is None else zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier on the parameters' device and dtype; ``global_pool=None`` keeps the current pooling."""
        dd = get_device_dtype(self)
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def feature_stages(self):
        """The four feature levels: the stem's output, then each stage (``forward_intermediates``)."""
        return self._stem, self.layer1, self.layer2, self.layer3

    def closing_stage(self):
        """A PreResNet's final BN + ReLU (Identity for a ResNet): part of the last level, as ``feature_info`` says."""
        return self.norm

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq([self.layer1, self.layer2, self.layer3], x, flatten=True)
        else:
            x = self.layer1(x)
            x = self.layer2(x)
            x = self.layer3(x)
        return self.norm(x)

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Stem, each residual block, the pre-activation net's last BN, the average pool and the classifier."""
        v, hw = conv_bn_bound(self.conv1, None if self.preact else self.bn1, hw)
        factors = [('stem', v)]
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                v, hw = block.block_bound(hw)
                factors.append((f'block{len(factors) + 1}', v))  # numbered after the normalization factor
        if self.preact:
            factors.append(('norm', bn_scale(self.norm).abs().max().item()))
        pool = self.global_pool.pool_type if hasattr(self.global_pool, 'pool_type') else 'avg'
        if pool not in ('avg', 'max'):
            raise NotImplementedError(f'no Lipschitz bound for global pool {pool!r}.')
        factors.append(('pool', (1.0 / (hw[0] * hw[1])) ** 0.5 if pool == 'avg' else 1.0))
        factors.append(('fc', linear_norm(self.fc)))
        return factors

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build(
        CifarResNet, variant, pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'label_names': CIFAR10_LABELS,
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:1512.03385',
        **kwargs,
    }


RESNET_DEPTHS = (20, 32, 44, 56, 110, 1202)
PRERESNET_DEPTHS = (20, 32, 44, 56, 110)

default_cfgs = keep_untrained_default(generate_default_cfgs({
    **{f'cifar_resnet{d}': _cfg() for d in RESNET_DEPTHS},
    **{f'cifar_preresnet{d}': _cfg(paper_ids='arXiv:1603.05027') for d in PRERESNET_DEPTHS},
    # Weights trained by this package's recipes (see timm_lipschitz/models/_pretrained.py).
    **pretrained_cfgs_for('cifar_', _cfg),
}))


def _resnet(depth: int, pretrained: bool, preact: bool, **kwargs: Any) -> CifarResNet:
    name = f"cifar_{'pre' if preact else ''}resnet{depth}"
    return _create_cifar_resnet(name, pretrained, **dict(dict(depth=depth, preact=preact), **kwargs))


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M params with 10 classes)."""
    return _resnet(20, pretrained, False, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M params)."""
    return _resnet(32, pretrained, False, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (0.66M params)."""
    return _resnet(44, pretrained, False, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M params)."""
    return _resnet(56, pretrained, False, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (1.7M params)."""
    return _resnet(110, pretrained, False, **kwargs)


@register_model
def cifar_resnet1202(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-1202 for CIFAR (19.4M params)."""
    return _resnet(1202, pretrained, False, **kwargs)


@register_model
def cifar_preresnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreResNet-20 for CIFAR (0.27M params)."""
    return _resnet(20, pretrained, True, **kwargs)


@register_model
def cifar_preresnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreResNet-32 for CIFAR / STL-10 (0.46M params)."""
    return _resnet(32, pretrained, True, **kwargs)


@register_model
def cifar_preresnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreResNet-44 for CIFAR (0.66M params)."""
    return _resnet(44, pretrained, True, **kwargs)


@register_model
def cifar_preresnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreResNet-56 for CIFAR (0.85M params)."""
    return _resnet(56, pretrained, True, **kwargs)


@register_model
def cifar_preresnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """PreResNet-110 for CIFAR (1.7M params)."""
    return _resnet(110, pretrained, True, **kwargs)
