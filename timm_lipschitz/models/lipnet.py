"""1-Lipschitz networks as timm models, built on orthogonium's reparametrizers (a declared dependency; the README's
"1-Lipschitz models" says why orthogonium and not deel-torchlip). Each constrained layer keeps its free weight under
timm's name (``<layer>.weight``) and computes the constrained one in ``forward`` with orthogonium's module.

Every layer is 1-Lipschitz by construction, so the logits are ``1 / min(std)``-Lipschitz in [0,1] pixels and an
image whose logit margin exceeds ``sqrt(2) * L * eps`` is certified at l2 radius ``eps`` with one forward pass:

- convolutions are AOL-rescaled (Prach & Lampert 2022: ``W diag(d)``, ``d`` from ``|W^T W|``; a bound, not an
  estimate); a stride only subsamples the output;
- dense layers and the head are exactly orthogonal (orthogonium's QR orthogonalization: no power-iteration state);
- activations are MaxMin (pairwise sort: 1-Lipschitz and gradient-norm preserving);
- residual blocks are SLL blocks ``x - 2 W^T relu(W x + b)`` with an AOL-rescaled ``W`` (Araujo et al. 2023): the
  Jacobian ``I - 2 W^T D W`` with ``D`` in [0, 1] is symmetric with eigenvalues in [1 - 2 ||W||^2, 1];
- the global pool is the norm-preserving sum / sqrt(H W).

The declared constant is the design value (``lipschitz_constant()``); :meth:`LipschitzNet.lipschitz_factors`
measures the effective weights (exact per-layer norms, FFT + SVD), and the soundness check in
:mod:`timm_lipschitz.robustness.soundness` refuses a model whose measured product exceeds the declaration.

In eval mode the constrained weights (AOL rescaling, QR) are computed once: the forward runs a plain copy of the model
(:func:`to_plain`, the export) cached until a trainable parameter changes (optimizer step, ``load_state_dict``,
``.to(dtype)``: the key is each parameter's storage, version counter, dtype and device) or the structure does
(``reset_classifier``, a pruned stage). The cached copy is what eval, attacks and certificates see,
and what the soundness check measures. In eval mode no gradient reaches the parameters; train in train mode.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model

from ..errors import UsageError
from ..modes import for_inference
from ._bounds import DeclaresLipschitz, conv_operator_norm
from ._features import StagedFeatures, reset_head
from ._pretrained import build, keep_untrained_default, pretrained_cfgs_for

__all__ = ['LipConvNet', 'CifarLipResNet', 'SLLBlock', 'AOLConv2d', 'OrthoLinear', 'to_plain', 'LIPSCHITZ_NAMES',
           'MaxMin', 'aol_conv', 'ortho_linear', 'effective_weight']

LIPSCHITZ_NAMES = ('lip_convnet', 'cifar_lipresnet_xs', 'cifar_lipresnet_s')


def _orthogonium():
    try:
        import orthogonium  # noqa: F401
    except ImportError as e:  # a declared dependency: only a broken install gets here
        raise ImportError('the 1-Lipschitz models need orthogonium: pip install orthogonium') from e


class AOLConv2d(nn.Conv2d):
    """A 3x3 zero-padded convolution whose weight passes orthogonium's AOL reparametrizer at each forward (Prach &
    Lampert 2022: ||W|| <= 1 by construction; a stride only subsamples). The free weight and the reparametrizer's
    ``q`` are what ``state_dict`` holds, under timm's names (``<conv>.weight``)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, device=None, dtype=None):
        super().__init__(cin, cout, 3, stride=stride, padding=1, device=device, dtype=dtype)
        _orthogonium()
        from orthogonium.layers.conv.AOL.aol import MultiStepAOLReparametrizer
        from orthogonium.layers.conv.init import conv_orthogonal_
        with torch.no_grad():
            conv_orthogonal_(self.weight, stride=self.stride, groups=1)
        self.reparam = MultiStepAOLReparametrizer(min(cin, cout), groups=1, niter=1).to(self.weight)

    def constrained_weight(self) -> torch.Tensor:
        return self.reparam(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.constrained_weight(), self.bias)

    def plain(self) -> nn.Conv2d:
        """The export: a plain ``nn.Conv2d`` holding the constrained weight."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride, padding=1,
                         bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        return _fill(conv, self.constrained_weight(), self.bias)


class OrthoLinear(nn.Linear):
    """A dense layer whose weight is exactly orthogonal (orthogonium's QR orthogonalization of the free weight at each
    forward; norm 1, no power-iteration state)."""

    def __init__(self, cin: int, cout: int, bias: bool = True, device=None, dtype=None):
        super().__init__(cin, cout, bias=bias, device=device, dtype=dtype)
        _orthogonium()
        from orthogonium.reparametrizers import BatchedQROrthogonalization
        nn.init.orthogonal_(self.weight)
        self.orthogonalize = BatchedQROrthogonalization((cout, cin))

    def constrained_weight(self) -> torch.Tensor:
        w = self.weight  # QR in at least float32 (no half-precision QR on a CPU; and its rounding would cost the bound)
        return self.orthogonalize(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.constrained_weight(), self.bias)

    def plain(self) -> nn.Linear:
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        return _fill(layer, self.constrained_weight(), self.bias)


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


class MaxMin(nn.Module):
    """orthogonium's MaxMin (sorts channel pairs: 1-Lipschitz, gradient-norm preserving), with a faster path where
    no gradient is taken: max and min written into the two halves of one output, no concatenation (the cached eval
    forward is then no slower than ReLU's)."""

    def __init__(self, axis: int = 1):
        super().__init__()
        _orthogonium()
        from orthogonium.layers import MaxMin as PairSort
        self.axis = axis
        self.pairs = PairSort(axis)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and z.requires_grad:
            return self.pairs(z)
        half = z.shape[self.axis] // 2
        a, b = z.narrow(self.axis, 0, half), z.narrow(self.axis, half, half)
        out = torch.empty_like(z)
        torch.maximum(a, b, out=out.narrow(self.axis, 0, half))
        torch.minimum(a, b, out=out.narrow(self.axis, half, half))
        return out


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: its constrained weight, or the plain weight of an exported layer."""
    with torch.no_grad():
        w = layer.constrained_weight() if hasattr(layer, 'constrained_weight') else layer.weight
        return w.detach()


def to_plain(model: nn.Module) -> nn.Module:
    """The export: a copy of ``model`` (eval mode, no gradients) in which every constrained layer is the plain layer
    holding its current constrained weight (``nn.Conv2d``, ``nn.Linear``, an SLL block with a fixed kernel); same
    outputs, no orthogonium computation, ``torch.export``-able."""
    cache = model.__dict__.pop('_effective', None)
    try:
        plain = copy.deepcopy(model)
    finally:
        if cache is not None:
            model.__dict__['_effective'] = cache
    for_inference(plain)  # the export is for inference only: never trained, eval mode for good
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if hasattr(child, 'plain'):
                setattr(parent, name, child.plain())
    plain.requires_grad_(False)
    plain.__dict__['_is_plain'] = True
    return plain


class SLLBlock(nn.Module):
    """``x - 2 W^T relu(W x + b)``, ``W`` a 3x3 conv to ``inner`` channels rescaled by orthogonium's AOL
    reparametrizer (Araujo et al. 2023's SLL block): 1-Lipschitz whenever ||W|| <= 1."""

    def __init__(self, channels: int, inner: int, device=None, dtype=None):
        super().__init__()
        _orthogonium()
        from orthogonium.layers.conv.AOL.aol import AOLReparametrizer
        dd = {'device': device, 'dtype': dtype}
        self.kernel = nn.Parameter(torch.empty(inner, channels, 3, 3, **dd))
        nn.init.xavier_normal_(self.kernel)
        bound = (channels * 9) ** -0.5
        self.bias = nn.Parameter(torch.empty(1, inner, 1, 1, **dd).uniform_(-bound, bound))
        self.reparam = AOLReparametrizer(inner, groups=1).to(self.kernel)

    def constrained_weight(self) -> torch.Tensor:
        return self.kernel if self.reparam is None else self.reparam(self.kernel)

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

    def lipschitz_bound(self, hw: Tuple[int, int]) -> float:
        """max(1, 2 ||W||^2 - 1) with the exact norm of the effective ``W``: 1 when the constraint holds."""
        w = conv_operator_norm(effective_weight(self), hw)
        return max(1.0, 2 * w * w - 1)


class LipschitzNet(StagedFeatures, DeclaresLipschitz, nn.Module):
    """What the 1-Lipschitz models share: the cached eval forward, the constrained head, the declared constant."""

    lipschitz_method = ('1-Lipschitz by construction (orthogonium AOL convolutions, orthogonal dense layers, MaxMin, '
                        'SLL residual blocks); checked against the exact per-layer norms of the effective weights')
    head_hidden_size: int
    num_classes: int

    # ---- the eval cache ------------------------------------------------------------------------------------------
    def _weights_key(self) -> Tuple:
        """What the cached copy depends on: each trainable parameter's storage, version counter, dtype and device,
        and the structure (the modules, the pooling): ``reset_classifier`` or pruning a stage also drop the cache."""
        return (self.global_pool, tuple(id(m) for m in self.modules()),
                tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters() if p.requires_grad))

    def effective(self) -> nn.Module:
        """The plain copy the eval forward runs (built when missing or when a trainable parameter changed)."""
        key = self._weights_key()
        cached = self.__dict__.get('_effective')
        if cached is None or cached[0] != key:
            cached = (key, to_plain(self))
            self.__dict__['_effective'] = cached
        return cached[1]

    def _cached(self) -> bool:
        return not self.training and not self.__dict__.get('_is_plain', False)

    # ---- the declared constant ----------------------------------------------------------------------------------
    def lipschitz_constant(self, input_size: Optional[Sequence[int]] = None,
                           std: Optional[Sequence[float]] = None) -> float:
        """The design constant: 1 for the layers, times the normalization's 1 / min(std)."""
        sd = [float(s) for s in (std if std is not None else self.pretrained_cfg.get('std', (1.0,)))]
        return 1.0 / min(sd)

    # ---- timm's contract ----------------------------------------------------------------------------------------
    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new orthogonal head (a plain ``nn.Linear`` would make the declared constant false)."""
        reset_head(self, num_classes, global_pool, ortho_linear)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass  # small nets: nothing worth recomputing; kept so timm utilities may call it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._cached():
            return self.effective()(x)
        return self.forward_head(self.forward_features(x))


class LipConvNet(LipschitzNet):
    """A small 1-Lipschitz conv net for 28/32 px images: three 3x3 AOL convs (``widths``; the last two with stride 2),
    each followed by MaxMin, then an orthogonal hidden layer (``hidden_dim``), MaxMin and an orthogonal head.

    timm's conventions as in ``mnist_convnet``: ``forward_features`` returns the last conv map (``num_features``
    channels), the flatten + hidden layer is the "pooling" (``global_pool='flatten'``, ``''`` returns the map) and
    ``forward_head(pre_logits=True)`` returns the hidden activations. Feature levels: the three conv stages.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: Union[int, Tuple[int, int]] = 28,
                 widths: Sequence[int] = (32, 64, 64), hidden_dim: int = 256, drop_rate: float = 0.,
                 global_pool: str = 'flatten', device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if h < 4 or w < 4:
            raise UsageError(f'img_size={img_size!r} is too small; height and width must be >= 4.')
        if any(c % 2 for c in widths) or hidden_dim % 2:
            raise UsageError(f'widths={tuple(widths)} and hidden_dim={hidden_dim} must be even (MaxMin pairs '
                             f'channels).')
        self._check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, \
            global_pool
        c1, c2, c3 = widths
        self.stage1 = nn.Sequential(aol_conv(in_chans, c1, **dd), MaxMin())
        self.stage2 = nn.Sequential(aol_conv(c1, c2, stride=2, **dd), MaxMin())
        self.stage3 = nn.Sequential(aol_conv(c2, c3, stride=2, **dd), MaxMin())
        fh, fw = (h + 3) // 4, (w + 3) // 4
        self.feature_info: List[Dict[str, Any]] = [dict(num_chs=c1, reduction=1, module='stage1'),
                                                   dict(num_chs=c2, reduction=2, module='stage2'),
                                                   dict(num_chs=c3, reduction=4, module='stage3')]
        self.fc1 = ortho_linear(c3 * fh * fw, hidden_dim, **dd)
        self.act = MaxMin()
        self.num_features, self.head_hidden_size = c3, hidden_dim
        self.fc = ortho_linear(hidden_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _check_pool(global_pool: str) -> None:
        if global_pool not in ('flatten', ''):
            raise UsageError(f"global_pool={global_pool!r} is not allowed for lip_convnet; use 'flatten' or ''.")

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stage1', blocks=r'^stage[23]|^fc1')

    def feature_stages(self):
        return self.stage1, self.stage2, self.stage3

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._cached():
            return self.effective().forward_features(x)
        return self.stage3(self.stage2(self.stage1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self._cached():
            return self.effective().forward_head(x, pre_logits)
        if self.global_pool == '':
            return x
        x = self.act(self.fc1(torch.flatten(x, 1)))
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Exact norms of the effective weights (the cached copy in eval mode): convs, hidden layer, head."""
        m = self.effective() if self._cached() else self
        factors = []
        for i, stage in enumerate((m.stage1, m.stage2, m.stage3), 1):
            conv = stage[0]
            factors.append((f'conv{i}', conv_operator_norm(effective_weight(conv), hw)))
            hw = tuple((hw[k] - 1) // conv.stride[k] + 1 for k in range(2))
        return factors + [('fc1', _linear(m.fc1)), ('fc', _linear(m.fc))]


def _linear(layer: nn.Module) -> float:
    """The exact spectral norm of a dense layer's effective weight (1 for a removed head)."""
    if isinstance(layer, nn.Identity):
        return 1.0
    return torch.linalg.matrix_norm(effective_weight(layer).double(), ord=2).item()


class CifarLipResNet(LipschitzNet):
    """A CIFAR-style 1-Lipschitz residual net: a 3x3 AOL stem, three stages of ``blocks`` SLL blocks at ``widths``
    channels (a stride-2 AOL conv between stages, each conv followed by MaxMin), the norm-preserving global pool
    (sum / sqrt(H W)) and an orthogonal head. Feature levels: the three stages."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: Sequence[int] = (16, 32, 64),
                 blocks: int = 1, inner_factor: int = 2, drop_rate: float = 0., global_pool: str = 'avg',
                 device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if any(c % 2 for c in widths):
            raise UsageError(f'widths={tuple(widths)} must be even (MaxMin pairs channels).')
        self._check_pool(global_pool)
        self.num_classes, self.in_chans, self.drop_rate, self.global_pool = num_classes, in_chans, drop_rate, \
            global_pool
        self.stem = nn.Sequential(aol_conv(in_chans, widths[0], **dd), MaxMin())
        stages = []
        for i, c in enumerate(widths):
            down = [aol_conv(widths[i - 1], c, stride=2, **dd), MaxMin()] if i else []
            stages.append(nn.Sequential(*down, *[SLLBlock(c, inner_factor * c, **dd) for _ in range(blocks)]))
        self.stages = nn.Sequential(*stages)
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f'stages.{i}') for i, c in enumerate(widths)]
        self.num_features = self.head_hidden_size = widths[-1]
        self.fc = ortho_linear(widths[-1], num_classes, **dd) if num_classes > 0 else nn.Identity()

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
        if self._cached():
            return self.effective().forward_features(x)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self._cached():
            return self.effective().forward_head(x, pre_logits)
        if self.global_pool == '':
            return x
        x = x.sum((2, 3)) / (x.shape[2] * x.shape[3]) ** 0.5
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def lipschitz_factors(self, hw: Tuple[int, int]) -> List[Tuple[str, float]]:
        """Exact norms of the effective weights: stem, each downsampling conv, each SLL block, pool (1), head."""
        m = self.effective() if self._cached() else self
        factors = [('stem', conv_operator_norm(effective_weight(m.stem[0]), hw))]
        for i, stage in enumerate(m.stages):
            for j, layer in enumerate(stage):
                if isinstance(layer, SLLBlock):
                    factors.append((f'stage{i}.block{j}', layer.lipschitz_bound(hw)))
                elif hasattr(layer, 'stride'):
                    factors.append((f'stage{i}.down', conv_operator_norm(effective_weight(layer), hw)))
                    hw = tuple((hw[k] - 1) // layer.stride[k] + 1 for k in range(2))
        return factors + [('pool', 1.0), ('fc', _linear(m.fc))]


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (1, 28, 28), 'pool_size': (7, 7), 'fixed_input_size': True,
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': (0.5,), 'std': (1.0,),
        'first_conv': 'stage1.0', 'classifier': 'fc', 'label_names': tuple(str(i) for i in range(10)),
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2208.03160',
        **kwargs,
    }


def _cifar_cfg(**kwargs: Any) -> Dict[str, Any]:
    from .cifar_resnet import CIFAR10_LABELS
    return _cfg(**{'input_size': (3, 32, 32), 'pool_size': (8, 8), 'fixed_input_size': False,
                   'mean': (0.5, 0.5, 0.5), 'std': (1.0, 1.0, 1.0), 'first_conv': 'stem.0',
                   'label_names': CIFAR10_LABELS, 'paper_ids': 'arXiv:2303.03169', **kwargs})


default_cfgs = keep_untrained_default(generate_default_cfgs({
    'lip_convnet': _cfg(),
    **pretrained_cfgs_for('lip_convnet', _cfg),
    'cifar_lipresnet_xs': _cifar_cfg(),
    'cifar_lipresnet_s': _cifar_cfg(),
    **pretrained_cfgs_for('cifar_lipresnet', _cifar_cfg),
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
