"""Converters: CIFAR ResNet checkpoints of akamaster/pytorch_resnet_cifar10 and chenyaofo/pytorch-cifar-models into
this package's checkpoint format (read only with ``torch.load(weights_only=True)``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Tuple, Union

import timm
import torch

from ..errors import UsageError
from ..folders import MANIFEST_NAME, PRODUCTS, check_output_folder, record_outputs
from .files import CheckpointError, save_pretrained

__all__ = ['convert_checkpoint', 'CONVERTER_SOURCES']


def _load_foreign(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f'{path} cannot be read as a weights-only torch checkpoint: {e}') from e
    for key in ('state_dict', 'model', 'net'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f'{path} holds no state dict of tensors.')
    return {re.sub(r'^module\.', '', k): v for k, v in obj.items()}


CONVERTER_SOURCES = ('auto', 'akamaster', 'chenyaofo')


def _detect_source(state: Dict[str, torch.Tensor]) -> str:
    """akamaster: option-A shortcuts (no parameters) and a ``linear`` classifier; chenyaofo: option-B projections
    (``downsample.0/1``) and an ``fc`` classifier."""
    projections = any('.downsample.' in k or '.shortcut.' in k for k in state)
    if any(k.startswith('linear.') for k in state) and not projections:
        return 'akamaster'
    if any(k.startswith('fc.') for k in state) and projections:
        return 'chenyaofo'
    return 'unknown'


def _infer_arch(state: Dict[str, torch.Tensor], path: Path) -> Tuple[int, str, int, int]:
    blocks = {int(m.group(1)) for k in state for m in [re.match(r'layer1\.(\d+)\.', k)] if m}
    if not blocks or 'conv1.weight' not in state:
        raise CheckpointError(f'{path} does not look like a CIFAR ResNet (no conv1 / layer1 blocks).')
    depth = 6 * len(blocks) + 2
    shortcut = 'B' if any('downsample' in k for k in state) else 'A'
    fc = state.get('fc.weight')
    if fc is None:
        raise CheckpointError(f'{path} has no classifier (fc.weight or linear.weight).')
    return depth, shortcut, fc.shape[0], state['conv1.weight'].shape[1]


def convert_checkpoint(path: Union[str, Path], out_dir: Union[str, Path], source: str = 'auto',
                       dataset: str = 'cifar10') -> Path:
    """Convert akamaster/pytorch_resnet_cifar10 (.th, ``module.`` prefix, option A, ``linear``) or
    chenyaofo/pytorch-cifar-models (option B, ``downsample.0/1``, ``fc``) weights into this package's format.

    ``source='auto'`` detects the layout; naming a source checks that the file has that layout. Pickles are read
    only with ``torch.load(weights_only=True)``. The result loads with ``local-dir:``.
    """
    if source not in CONVERTER_SOURCES:
        raise UsageError(f'source={source!r} is not allowed; choose one of {CONVERTER_SOURCES}.')
    check_output_folder(out_dir, 'OUT_DIR', writes=PRODUCTS['checkpoint'])
    path = Path(path)
    state = _load_foreign(path)
    found = _detect_source(state)
    if source == 'auto' and found == 'unknown' and 'conv1.weight' in state:
        raise CheckpointError(f'{path}: cannot tell whether it is an akamaster (option A, linear) or a chenyaofo '
                              f'(option B, fc) checkpoint; pass source=.')
    if source != 'auto' and found not in (source, 'unknown'):
        raise CheckpointError(f'{path} has the {found} layout, not {source}: pass source={found!r} or "auto".')
    source = found if source == 'auto' else source
    state = {k.replace('linear.', 'fc.', 1) if k.startswith('linear.') else k: v for k, v in state.items()}
    state = {re.sub(r'\.shortcut\.', '.downsample.', k): v for k, v in state.items()}
    depth, shortcut, num_classes, in_chans = _infer_arch(state, path)
    model = timm.create_model(f'cifar_resnet{depth}', num_classes=num_classes, in_chans=in_chans,
                              shortcut=shortcut)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked') or k in own}
    for k in own:
        if k.endswith('num_batches_tracked') and k not in state:
            state[k] = own[k]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f'{path} does not map onto cifar_resnet{depth} (shortcut {shortcut}): missing '
                              f'{missing[:5]}, unexpected {unexpected[:5]}.')
    model.load_state_dict(state)
    folder = save_pretrained(model, out_dir, tag=f'converted_{source}', dataset=dataset, objective='external',
                             hparams={'source_file': path.name, 'source': source})
    record_outputs(folder, [p.name for p in folder.iterdir() if p.name != MANIFEST_NAME], 'timm-lipschitz convert')
    return folder
