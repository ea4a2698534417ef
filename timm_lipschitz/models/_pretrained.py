"""Pretrained tags: weights that were really trained by this package's recipes and ship inside it.

A tag is ``<arch>.<objective>_<setting>_<dataset>`` with numbers written without the dot, e.g.
``mnist_convnet.lipschitz_hinge_s075_b10_l0005_fmnist`` (sigma 0.75, beta 10, L_n 0.005, Fashion-MNIST); see
:func:`timm_lipschitz.hub.make_tag`. ``weights/index.json`` maps each shipped tag to its safetensors file (scores
in its metadata, written by ``timm_lipschitz.hub.save_pretrained``) and the cfg fields that differ from the
architecture's default (input size, mean/std, class names). Every tag's cfg also names the Hugging Face Hub repo it
is published under (``hf_hub_id``, :data:`HUB_ORG` ``/<tag>``, timm's own layout): a bundled file loads first
(timm prefers ``file``), and a tag of the index whose file this installation does not bundle loads from the Hub or
its cache. ``build`` wraps timm's ``build_model_with_cfg`` to turn a missing hub file (offline) into an error that
says how to place it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

from timm.models import build_model_with_cfg
from timm.models._builder import resolve_pretrained_cfg

from ..errors import UserError
from ..zoo import WEIGHTS_DIR, shipped  # noqa: F401  (the index is read without torch; WEIGHTS_DIR re-exported)


class WeightsUnavailable(UserError, RuntimeError):
    """A tag's weights are neither bundled nor in the Hugging Face cache, and the Hub cannot be reached."""


HUB_ORG = 'timm-lipschitz'


def hub_id(name: str) -> str:
    """The Hub repo of a tag (``timm-lipschitz/cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist``)."""
    return f'{HUB_ORG}/{name}'


def pretrained_cfgs_for(prefix: str, cfg_fn: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The default-cfg entries of the indexed tags whose model name starts with ``prefix``: the bundled file where
    it ships, the Hub repo always."""
    out = {}
    for name, entry in shipped().items():
        if not name.startswith(prefix):
            continue
        path = WEIGHTS_DIR / entry['file']
        cfg = dict(entry.get('cfg', {}))
        for key in ('input_size', 'mean', 'std', 'label_names', 'pool_size'):
            if isinstance(cfg.get(key), list):
                cfg[key] = tuple(cfg[key])
        out[name] = cfg_fn(hf_hub_id=hub_id(name), **({'file': str(path)} if path.is_file() else {}), **cfg)
    return out


def keep_untrained_default(default_cfgs: Dict[str, Any]) -> Dict[str, Any]:
    """Keep the untagged (untrained, CIFAR-10 shaped) cfg the default of every architecture.

    timm promotes the first tag with weights to the default; here that would silently turn
    ``create_model("cifar_resnet20")`` into a 1x16x16 digits model. Trained tags are used only when named.
    """
    for dc in default_cfgs.values():
        if '' in dc.tags and dc.tags[0] != '':
            dc.tags.remove('')
            dc.tags.appendleft('')
    return default_cfgs


def tag_model_args(variant: str, tag: Any) -> Dict[str, Any]:
    """The constructor arguments a shipped tag was trained with (its index entry's ``model_args``): a tag of a
    non-default shape (another head, other widths) builds that shape."""
    entry = shipped().get(f'{variant}.{tag}') if isinstance(tag, str) and tag else None
    return dict((entry or {}).get('model_args') or {})


def build(model_cls: type, variant: str, pretrained: bool, **kwargs: Any):
    """``build_model_with_cfg`` with the tag's own model arguments (the caller's win), and a clear message when hub
    weights are not available offline."""
    kwargs = {**tag_model_args(variant, kwargs.get('pretrained_cfg')), **kwargs}
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except (OSError, ValueError) as e:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
        hub_id = getattr(cfg, 'hf_hub_id', None)
        if not pretrained or not hub_id or 'offline' not in f'{type(e).__name__} {e}'.lower() and \
                not isinstance(e, FileNotFoundError):
            raise
        tag = f'{variant}.{cfg.tag}' if getattr(cfg, 'tag', None) else variant
        raise WeightsUnavailable(
            f'pretrained weights of {tag} live in the Hugging Face Hub repo {hub_id!r} and are not in the local '
            f'cache (offline or unreachable: {type(e).__name__}). Place them locally with '
            f'timm_lipschitz.hub.place_in_cache("<folder with model.safetensors>", "{hub_id}"), run '
            f'`huggingface-cli download {hub_id}` where there is internet, or load a file directly with '
            f'timm.create_model("{variant}", pretrained=True, pretrained_cfg_overlay=dict(file="model.safetensors")).'
        ) from e
