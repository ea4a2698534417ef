"""Pretrained tags: weights that were really trained by this package's recipes and ship inside it.

A tag is ``<arch>.<objective>_<setting>_<dataset>`` with numbers written without the dot, e.g.
``mnist_convnet.lipschitz_hinge_s075_b10_l0005_fmnist`` (sigma 0.75, beta 10, L_n 0.005, Fashion-MNIST).
Each entry of ``PRETRAINED`` names a file under ``timm_lipschitz/weights/`` (safetensors with the robustness
scores in its metadata, written by ``timm_lipschitz.hub.save_pretrained``) and the cfg fields that differ from
the architecture's default (input size, mean/std, class names). Only files that exist are registered, so a
missing file never becomes a tag that fails on ``pretrained=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / 'weights'

# name -> dict(file=<file name under WEIGHTS_DIR>, cfg=<overrides of the arch's _cfg>)
PRETRAINED: Dict[str, Dict[str, Any]] = {}


def pretrained_cfgs_for(prefix: str, cfg_fn: Callable[..., Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The default-cfg entries of shipped weights whose model name starts with ``prefix``."""
    out = {}
    for name, entry in PRETRAINED.items():
        path = WEIGHTS_DIR / entry['file']
        if name.startswith(prefix) and path.is_file():
            out[name] = cfg_fn(file=str(path), **entry.get('cfg', {}))
    return out
