"""1-Lipschitz networks as timm models, built on orthogonium's reparametrizers (a declared dependency; the README's
"1-Lipschitz models" says why orthogonium and not deel-torchlip). Each constrained layer keeps its free weight under
timm's name (``<layer>.weight``) and computes the constrained one in ``forward`` with orthogonium's module.

Every layer before the head is 1-Lipschitz by construction:

- convolutions are AOL-rescaled (Prach & Lampert 2022: ``W diag(d)``, ``d`` from ``|W^T W|``; a bound, not an
  estimate); a stride only subsamples the output;
- dense layers are exactly orthogonal (orthogonium's QR orthogonalization: no power-iteration state);
- activations are MaxMin (pairwise sort: 1-Lipschitz and gradient-norm preserving);
- residual blocks are SLL blocks ``x - 2 W^T relu(W x + b)`` with an AOL-rescaled ``W`` (Araujo et al. 2023): the
  Jacobian ``I - 2 W^T D W`` with ``D`` in [0, 1] is symmetric with eigenvalues in [1 - 2 ||W||^2, 1];
- the global pool is the norm-preserving sum / sqrt(H W).

The head is orthogonal (the logits are 1-Lipschitz) or has rows of unit norm (``head='unit_rows'``, LiResNet's
last-layer normalization). The models declare these design values (:meth:`LipschitzNet.declared_lipschitz`) and
measure their effective weights (:meth:`lipschitz_factors`, exact per-layer norms); what a declaration certifies, and
the checks that hold a model to it, are :mod:`timm_lipschitz.certificates`.

The constrained weights are computed at every forward, in train and eval mode alike, so a gradient always reaches
the parameters. An evaluation computes them once: it runs :func:`to_plain`, the export to plain layers.
Reparametrizations run in float32 under autocast (bf16 / fp16 training), so the constraint is not rounded away.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from orthogonium.layers.conv.AOL.aol import AOLReparametrizer, MultiStepAOLReparametrizer
from orthogonium.layers.conv.init import conv_orthogonal_
from orthogonium.reparametrizers import BatchedQROrthogonalization
from timm.models import generate_default_cfgs, register_model

from ..errors import UsageError
from ..modes import for_inference
from ._bounds import BlockBound, DeclaresLipschitz, conv_operator_norm, effective_weight
from ._features import StagedFeatures, reset_head
from ._pretrained import build, keep_untrained_default, pretrained_cfgs_for
from .cifar_resnet import CIFAR10_LABELS

__all__ = ['LipConvNet', 'CifarLipResNet', 'LipMLP', 'LipschitzNet', 'FlatHeadNet', 'SLLBlock', 'AOLConv2d',
           'OrthoLinear', 'UnitRowLinear', 'to_plain', 'LIPSCHITZ_NAMES', 'HEADS', 'MaxMin', 'aol_conv', 'ortho_linear',
           'unit_row_linear', 'in_float32']

LIPSCHITZ_NAMES = ('lip_convnet', 'cifar_lipresnet_xs', 'cifar_lipresnet_s', 'lip_mlp')


def in_float32(reparametrize: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """``reparametrize(weight)`` computed in float32 with autocast off, returned in the weight's dtype: under bf16 /
    fp16 autocast the AOL rescaling, the QR and the row norms would otherwise run in half precision (and a CPU has
    no half-precision QR)."""
    kind = weight.device.type
    if kind in ('cpu', 'cuda') and torch.is_autocast_enabled(kind):
        with torch.autocast(kind, enabled=False):
            return reparametrize(weight.float()).to(weight.dtype)
    return reparametrize(weight.float()).to(weight.dtype)


class AOLConv2d(nn.Conv2d):
    """A 3x3 zero-padded convolution whose weight passes orthogonium's AOL reparametrizer at each forward (Prach &
    Lampert 2022: ||W|| <= 1 by construction; a stride only subsamples). The free weight and the reparametrizer's
    ``q`` are what ``state_dict`` holds, under timm's names (``<conv>.weight``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, device=None, dtype=None):
        super().__init__(cin, cout, 3, stride=stride, padding=1, device=device, dtype=dtype)
        with torch.no_grad():
            conv_orthogonal_(self.weight, stride=self.stride, groups=1)
        self.reparam = MultiStepAOLReparametrizer(min(cin, cout), groups=1, niter=1).to(self.weight)

    def constrained_weight(self) -> torch.Tensor:
        return in_float32(self.reparam, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.constrained_weight(), self.bias)

    def plain(self) -> nn.Conv2d:
        """The export: a plain ``nn.Conv2d`` holding the constrained weight."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1,
                         bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        return _fill(conv, self.constrained_weight(), self.bias)


class _ConstrainedLinear(nn.Linear):
    """A dense layer computing with ``constrained_weight()`` of its free weight; exported as a plain ``nn.Linear``."""

    def constrained_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.constrained_weight(), self.bias)

    def plain(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        return _fill(layer, self.constrained_weight(), self.bias)


class OrthoLinear(_ConstrainedLinear):
    """A dense layer whose weight is exactly orthogonal (orthogonium's QR orthogonalization of the free weight at each
    forward; norm 1, no power-iteration state)."""

    def __init__(self, cin: int, cout: int, bias: bool = True, device=None, dtype=None):
        super().__init__(cin, cout, bias=bias, device=device, dtype=dtype)
        nn.init.orthogonal_(self.weight)
        self.orthogonalize = BatchedQROrthogonalization((cout, cin))

    def constrained_weight(self) -> torch.Tensor:
        return in_float32(self.orthogonalize, self.weight)


def _unit_rows(w: torch.Tensor) -> torch.Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class UnitRowLinear(_ConstrainedLinear):
    """A classifier whose rows have unit l2 norm (LiResNet's last-layer normalization). Its norm is at most
    sqrt(rows), so only the per-pair certificate ``(f_y - f_j) / (L_body ||w_y - w_j||)`` is tight for it."""

    def constrained_weight(self) -> torch.Tensor:
        return in_float32(_unit_rows, self.weight)


def _fill(layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return for_inference(layer).requires_grad_(False)


def aol_conv(cin: int, cout: int, stride: int = 1, **dd) -> AOLConv2d:
    return AOLConv2d(cin, cout, stride=stride, **dd)


def ortho_linear(cin: int, cout: int, bias: bool = True, **dd) -> OrthoLinear:
    return OrthoLinear(cin, cout, bias=bias, **dd)


def unit_row_linear(cin: int, cout: int, bias: bool = True, **dd) -> UnitRowLinear:
    return UnitRowLinear(cin, cout, bias=bias, **dd)


class _PairSort(torch.autograd.Function):
    """MaxMin with one saved comparison: the forward writes max and min into the two halves of one output (no
    concatenation), the backward routes each half's gradient through the saved mask. orthogonium's MaxMin
    (``torch.maximum`` / ``minimum`` + ``cat``) computes the comparison three more times in its backward; this is the
    same map with the same gradient (ties, a null set, send it whole to one side) at a third of the cost."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, axis: int) -> torch.Tensor:  # type: ignore[override]
        a, b = _halves(z, axis)
        mask = a >= b
        out = torch.empty_like(z)
        torch.maximum(a, b, out=out.narrow(axis, 0, a.shape[axis]))
        torch.minimum(a, b, out=out.narrow(axis, a.shape[axis], a.shape[axis]))
        ctx.save_for_backward(mask)
        ctx.axis = axis
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (mask,), axis = ctx.saved_tensors, ctx.axis
        g_max, g_min = _halves(grad, axis)
        if torch.is_grad_enabled():  # a double backward (a Jacobian-vector product): differentiable ops only
            return torch.cat([torch.where(mask, g_max, g_min), torch.where(mask, g_min, g_max)], axis), None
        out = torch.empty_like(grad)
        torch.where(mask, g_max, g_min, out=out.narrow(axis, 0, g_max.shape[axis]))
        torch.where(mask, g_min, g_max, out=out.narrow(axis, g_max.shape[axis], g_max.shape[axis]))
        return out, None


def _halves(z: torch.Tensor, axis: int) -> Tuple[torch.Tensor, torch.Tensor]:
    half = z.shape[axis] // 2
    return z.narrow(axis, 0, half), z.narrow(axis, half, half)


class MaxMin(nn.Module):
    """MaxMin (Anil et al. 2019; orthogonium's ``MaxMin`` layout: the channel halves ``a``, ``b`` become
    ``max(a, b)``, ``min(a, b)``): 1-Lipschitz and gradient-norm preserving. Written as one autograd function
    (:class:`_PairSort`); without a gradient, max and min go straight into the two halves of one output."""

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and z.requires_grad:
            return _PairSort.apply(z, self.axis)
        a, b = _halves(z, self.axis)
        out = torch.empty_like(z)
        torch.maximum(a, b, out=out.narrow(self.axis, 0, a.shape[self.axis]))
        torch.minimum(a, b, out=out.narrow(self.axis, a.shape[self.axis], a.shape[self.axis]))
        return out


def to_plain(model: nn.Module) -> nn.Module:
    """The export: a copy of ``model`` (eval mode, no gradients) in which every constrained layer is the plain layer
    holding its current constrained weight (``nn.Conv2d``, ``nn.Linear``, an SLL block with a fixed kernel); the same
    outputs, no orthogonium computation, ``torch.export``-able. The evaluation runs this copy
    (:func:`timm_lipschitz.modes.for_evaluation`): the constrained weights are computed once, not at every forward."""
    plain = copy.deepcopy(model)
    for_inference(plain)  # the export is for inference only: never trained, eval mode for good
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, 'plain'):
                setattr(parent, name, child.plain())
    return plain.requires_grad_(False)


class SLLBlock(nn.Module):
    """``x - 2 W^T relu(W x + b)``, ``W`` a 3x3 conv to ``inner`` channels rescaled by orthogonium's AOL
    reparametrizer (Araujo et al. 2023's SLL block): 1-Lipschitz whenever ||W|| <= 1."""

    def __init__(self, channels: int, inner: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.kernel = nn.Parameter(torch.empty(inner, channels, 3, 3, **dd))
        nn.init.xavier_normal_(self.kernel)
        bound = (channels * 9) ** -0.5
        self.bias = nn.Parameter(torch.empty(1, inner, 1, 1, **dd).uniform_(-bound, bound))
        self.reparam = AOLReparametrizer(inner, groups=1).to(self.kernel)

    def constrained_weight(self) -> torch.Tensor:
        return self.kernel if self.reparam is None else in_float32(self.reparam, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.constrained_weight()  # computed once, used twice
        return x - 2 * F.conv_transpose2d(F.relu(F.conv2d(x, w, padding=1) + self.bias), w, padding=1)

    def plain(self) -> 'SLLBlock':
        """The export: the same block with its constrained kernel fixed (no reparametrizer)."""
        block = copy.deepcopy(self)
        with torch.no_grad():
            block.kernel = nn.Parameter(self.constrained_weight().detach().clone(), requires_grad=False)
        block.reparam = None
        return for_inference(block)

    def block_bound(self, hw: Tuple[int, int]) -> BlockBound:
        """max(1, 2 ||W||^2 - 1) with the exact norm of the effective ``W`` (1 when the constraint holds); the block
        keeps the size."""
        w = conv_operator_norm(effective_weight(self), hw)
        return BlockBound(max(1.0, 2 * w * w - 1), hw)


HEADS = ('orthogonal', 'unit_rows')


def _head(kind: str, cin: int, cout: int, **dd) -> nn.Module:
    """The classifier of a 1-Lipschitz net: an orthogonal layer (1-Lipschitz: the whole-model certificate applies)
    or unit-norm rows (LiResNet's last-layer normalization: the logits are only sqrt(classes) L_body-Lipschitz, and
    the per-pair certificate ``(f_y - f_j) / (L_body ||w_y - w_j||)`` is the one that holds)."""
    return (ortho_linear if kind == 'orthogonal' else unit_row_linear)(cin, cout, **dd)


def _check_head(head: str) -> str:
    if head not in HEADS:
        raise UsageError(f'head={head!r} is not allowed; use one of {list(HEADS)}.')
    return head


class LipschitzNet(DeclaresLipschitz, nn.Module):
    """What the 1-Lipschitz models share: the constrained head and the design declaration (body 1; logits 1 for an
    orthogonal head, sqrt(classes) for unit rows), checked against the measured factors."""

    layers = 'orthogonal dense layers, MaxMin'  # each model names its own constrained layers

    @property
    def lipschitz_method(self) -> str:
        return (f'1-Lipschitz by construction ({self.layers}); checked against the exact per-layer norms '
                'of the effective weights')
    lipschitz_by_design = True
    head_hidden_size: int
    num_classes: int
    head: str

    def declared_lipschitz(self, hw: Tuple[int, int]) -> Tuple[float, float]:
        """(body, logits) by design, w.r.t. the normalized input: every layer before the head is 1-Lipschitz; an
        orthogonal head keeps 1, a head of unit rows has norm at most sqrt(classes) (its Frobenius norm)."""
        classes = self.num_classes if self.num_classes > 0 else 1
        return 1.0, 1.0 if self.head == 'orthogonal' else float(classes) ** 0.5

    def head_rows(self) -> str:
        return self.head

    def to_plain(self) -> nn.Module:
        return to_plain(self)

    # ---- timm's contract ----------------------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new head of the model's own kind (a plain ``nn.Linear`` would make the declaration false)."""
        reset_head(self, num_classes, global_pool, lambda cin, cout, **dd: _head(self.head, cin, cout, **dd))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass  # small nets: nothing worth recomputing; kept so timm utilities may call it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _hidden(hidden_dim: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    dims = (hidden_dim,) if isinstance(hidden_dim, int) else tuple(hidden_dim)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2 for d in dims):
        raise UsageError(f'hidden_dim={hidden_dim!r} is not allowed; give an even integer >= 2 or a list of them '
                         f'(MaxMin pairs units).')
    return dims


class FlatHeadNet(StagedFeatures, LipschitzNet):
    """What ``lip_convnet`` and ``lip_mlp`` share: their "pooling" flattens the feature map and runs orthogonal hidden
    layers (``fc1``, ``fc2``, ...; each followed by MaxMin) before the head; ``global_pool=''`` returns the map."""

    kind = 'this net'

    def _init_flat_head(self, features: int, hidden: Tuple[int, ...], head: str, num_classes: int, **dd) -> None:
        self.num_hidden = len(hidden)
        for i, (a, b) in enumerate(zip((features,) + hidden, hidden), 1):
            setattr(self, f'fc{i}', ortho_linear(a, b, **dd))
        self.act = MaxMin()
        self.head_hidden_size = hidden[-1]
        self.fc = _head(head, hidden[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

    @classmethod
    def _check_pool(cls, global_pool: str) -> None:
        if global_pool not in ('flatten', ''):
            raise UsageError(f"global_pool={global_pool!r} is not allowed for {cls.kind}; use 'flatten' or ''.")

    def hidden_layers(self) -> Tuple[nn.Module, ...]:
        return tuple(getattr(self, f'fc{i}') for i in range(1, self.num_hidden + 1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        x = torch.flatten(x, 1)
        for layer in self.hidden_layers():
            x = self.act(layer(x))
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def head_factors(self) -> List[Tuple[str, float]]:
        """Exact norms of the hidden layers' and the head's effective weights."""
        return [(f'fc{i}', _linear(layer)) for i, layer in enumerate(self.hidden_layers(), 1)] + \
            [('fc', _linear(self.fc))]


def _conv_plan(widths: Sequence[int], strides: Sequence[int]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    widths, strides = tuple(widths), tuple(strides)
    if not widths or any(isinstance(c, bool) or not isinstance(c, int) or c < 2 or c % 2 for c in widths):
        raise UsageError(f'widths={widths!r} is not allowed; give even integers >= 2 (MaxMin pairs channels).')
    if len(strides) != len(widths) or any(s not in (1, 2) for s in strides):
        raise UsageError(f'strides={strides!r} is not allowed; give one stride (1 or 2) per width {widths}.')
    return widths, strides


class LipConvNet(FlatHeadNet):
    """A small 1-Lipschitz conv net for 28/32 px images: 3x3 AOL convs (``widths``, ``strides``; default 32-64-64,
    the last two with stride 2), each followed by MaxMin, then orthogonal hidden layers (``hidden_dim``: one width or
    a list, each followed by MaxMin) and the head (``head``: orthogonal, or unit rows). ``widths=(32, 32, 64, 64),
    strides=(1, 2, 1, 2), hidden_dim=(512, 512)`` is the 4C3F layout of GloRo and BCOP.

    timm's conventions as in ``mnist_convnet``: ``forward_features`` returns the last conv map (``num_features``
    channels), the flatten + hidden layers are the "pooling" (``global_pool='flatten'``, ``''`` returns the map) and
    ``forward_head(pre_logits=True)`` returns the last hidden activations. Feature levels: the conv stages.
    """

    layers = 'AOL convolutions, orthogonal dense layers, MaxMin'

    kind = 'lip_convnet'

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: Union[int, Tuple[int, int]] = 28,
                 widths: Sequence[int] = (32, 64, 64), strides: Sequence[int] = (1, 2, 2),
                 hidden_dim: Union[int, Sequence[int]] = 256, head: str = 'orthogonal', drop_rate: float = 0.,
                 global_pool: str = 'flatten', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h < 4 or w < 4:
            raise UsageError(f'img_size={img_size!r} is too small; height and width must be >= 4.')
        widths, strides = _conv_plan(widths, strides)
        hidden = _hidden(hidden_dim)
        self._check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, \
            global_pool
        self.head = _check_head(head)
        self.feature_info: List[Dict[str, Any]] = []
        cin, reduction = in_chans, 1
        for i, (c, s) in enumerate(zip(widths, strides), 1):
            setattr(self, f'stage{i}', nn.Sequential(aol_conv(cin, c, stride=s, **dd), MaxMin()))
            h, w, reduction, cin = (h - 1) // s + 1, (w - 1) // s + 1, reduction * s, c
            self.feature_info.append(dict(num_chs=c, reduction=reduction, module=f'stage{i}'))
        self.num_stages, self.num_features = len(widths), cin
        self._init_flat_head(cin * h * w, hidden, head, num_classes, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stage1\.', blocks=r'^stage(?!1\.)\d+|^fc\d')

    def feature_stages(self):
        return tuple(getattr(self, f'stage{i}') for i in range(1, self.num_stages + 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.feature_stages():
            x = stage(x)
        return x

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Exact norms of the effective weights: each conv, each hidden layer, the head last."""
        factors = []
        for i, stage in enumerate(self.feature_stages(), 1):
            conv = stage[0]
            factors.append((f'conv{i}', conv_operator_norm(effective_weight(conv), hw)))
            hw = tuple((hw[k] - 1) // conv.stride[k] + 1 for k in range(2))
        return factors + self.head_factors()


def _linear(layer: nn.Module) -> float:
    """The exact spectral norm of a dense layer's effective weight (1 for a removed head)."""
    if isinstance(layer, nn.Identity):
        return 1.0
    return torch.linalg.matrix_norm(effective_weight(layer).double(), ord=2).item()


class CifarLipResNet(StagedFeatures, LipschitzNet):
    """A CIFAR-style 1-Lipschitz residual net: a 3x3 AOL stem, three stages of ``blocks`` SLL blocks at ``widths``
    channels (a stride-2 AOL conv between stages, each conv followed by MaxMin), the norm-preserving global pool
    (sum / sqrt(H W)) and the head (``head``: orthogonal, or unit rows). Feature levels: the three stages."""

    layers = 'AOL convolutions, SLL residual blocks, MaxMin'

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, inner_factor: int = 2, head: str = 'orthogonal', drop_rate: float = 0.,
                 global_pool: str = 'avg', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        widths, _ = _conv_plan(widths, (1,) * len(tuple(widths)))
        self._check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, \
            global_pool
        self.head = _check_head(head)
        self.stem = nn.Sequential(aol_conv(in_chans, widths[0], **dd), MaxMin())
        stages = []
        for i, c in enumerate(widths):
            down = [aol_conv(widths[i - 1], c, stride=2, **dd), MaxMin()] if i else []
            stages.append(nn.Sequential(*down, *[SLLBlock(c, inner_factor * c, **dd) for _ in range(blocks)]))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f'stages.{i}') for i, c in enumerate(widths)]
        self.num_features = self.head_hidden_size = widths[-1]
        self.fc = _head(head, widths[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ('avg', ''):
            raise UsageError(f"global_pool={global_pool!r} is not allowed for cifar_lipresnet; use 'avg' (the "
                             f"norm-preserving sum / sqrt(H W)) or ''.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    def feature_stages(self):
        return (lambda x: self.stages[0](self.stem(x)), *self.stages[1:])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        x = x.sum((2, 3)) / (x.shape[2] * x.shape[3]) ** 0.5
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Exact norms of the effective weights: stem, each downsampling conv, each SLL block, pool (1), head."""
        factors = [('stem', conv_operator_norm(effective_weight(self.stem[0]), hw))]
        for i, stage in enumerate(self.stages):
            for j, layer in enumerate(stage):
                if isinstance(layer, SLLBlock):
                    factors.append((f'stage{i}.block{j}', layer.block_bound(hw).bound))
                elif hasattr(layer, 'stride'):
                    factors.append((f'stage{i}.down', conv_operator_norm(effective_weight(layer), hw)))
                    hw = tuple((hw[k] - 1) // layer.stride[k] + 1 for k in range(2))
        return factors + [('pool', 1.0), ('fc', _linear(self.fc))]


class LipMLP(FlatHeadNet):
    """A 1-Lipschitz MLP on the flattened pixels: orthogonal dense layers (``hidden_dim``, each followed by MaxMin) and
    the head. A first layer at least as wide as the input has orthonormal columns, an isometry: it keeps every l2
    distance between images, which the certificate is about (strided convolutions and narrow bottlenecks lose
    them).

    timm's conventions as in ``lip_convnet``, with no convolution: ``forward_features`` returns the image map itself
    (``num_features`` = its channels, one feature level), the flatten + hidden layers are the "pooling"
    (``global_pool='flatten'``; ``''`` returns the map) and ``forward_head(pre_logits=True)`` returns the last hidden
    activations."""

    kind = 'lip_mlp'

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: Union[int, Tuple[int, int]] = 28,
                 hidden_dim: Union[int, Sequence[int]] = (1024, 1024, 1024), head: str = 'orthogonal',
                 drop_rate: float = 0., global_pool: str = 'flatten', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        hidden = _hidden(hidden_dim)
        self._check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, \
            global_pool
        self.head = _check_head(head)
        self.stem = nn.Identity()
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=in_chans, reduction=1, module='stem')]
        self.num_features = in_chans
        self._init_flat_head(in_chans * h * w, hidden, head, num_classes, **dd)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^fc1\.', blocks=r'^fc(?!1\.)\d')

    def feature_stages(self):
        return (self.stem,)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Exact norms of the effective weights: each hidden layer, the head last."""
        return self.head_factors()


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (1, 28, 28), 'pool_size': (7, 7), 'fixed_input_size': True,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': (0.5,), 'std': (1.0,),
        'first_conv': 'stage1.0', 'classifier': 'fc', 'label_names': tuple(str(i) for i in range(10)),
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2208.03160',
        **kwargs,
    }


def _cifar_cfg(**kwargs: Any) -> Dict[str, Any]:
    return _cfg(**{'input_size': (3, 32, 32), 'pool_size': (8, 8), 'fixed_input_size': False,
                   'mean': (0.5, 0.5, 0.5), 'std': (1.0, 1.0, 1.0), 'first_conv': 'stem.0',
                   'label_names': CIFAR10_LABELS, 'paper_ids': 'arXiv:2303.03169', **kwargs})


default_cfgs = keep_untrained_default(generate_default_cfgs({
    'lip_convnet': _cfg(),
    **pretrained_cfgs_for('lip_convnet', _cfg),
    'cifar_lipresnet_xs': _cifar_cfg(),
    'cifar_lipresnet_s': _cifar_cfg(),
    **pretrained_cfgs_for('cifar_lipresnet', _cifar_cfg),
    'lip_mlp': _cfg(first_conv='fc1', pool_size=(28, 28)),
    **pretrained_cfgs_for('lip_mlp', lambda **kw: _cfg(**{'first_conv': 'fc1', 'pool_size': (28, 28), **kw})),
}))


@register_model
def lip_convnet(pretrained: bool = False, **kwargs: Any) -> LipConvNet:
    """A small 1-Lipschitz conv net (3 AOL convs 32-64-64, orthogonal 256-unit hidden layer and head), 1x28x28."""
    return build(LipConvNet, 'lip_convnet', pretrained, feature_cfg=dict(out_indices=(0, 1, 2)), **kwargs)


@register_model
def cifar_lipresnet_xs(pretrained: bool = False, **kwargs: Any) -> CifarLipResNet:
    """A 1-Lipschitz CIFAR residual net: 16-32-64 channels, one SLL block per stage."""
    return build(CifarLipResNet, 'cifar_lipresnet_xs', pretrained,
                 feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
                 **{'widths': (16, 32, 64), 'blocks': 1, **kwargs})


@register_model
def cifar_lipresnet_s(pretrained: bool = False, **kwargs: Any) -> CifarLipResNet:
    """A 1-Lipschitz CIFAR residual net: 32-64-128 channels, three SLL blocks per stage (the GPU recipe's net)."""
    return build(CifarLipResNet, 'cifar_lipresnet_s', pretrained,
                 feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
                 **{'widths': (32, 64, 128), 'blocks': 3, **kwargs})


@register_model
def lip_mlp(pretrained: bool = False, **kwargs: Any) -> LipMLP:
    """A 1-Lipschitz MLP (three orthogonal 1024-unit layers, MaxMin, an orthogonal head), 1x28x28: its first layer
    keeps every l2 distance between images."""
    return build(LipMLP, 'lip_mlp', pretrained, feature_cfg=dict(out_indices=(0,)), **kwargs)

