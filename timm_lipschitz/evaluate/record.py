"""What an evaluation may write into a run's or checkpoint's own record (its ``robustness.json``, the metadata summary
and the model card): only what was measured under the full protocol of
:mod:`timm_lipschitz.protocol` (every image of the test split, severities 1-5 over the benchmark
corruptions, the default epsilon grid, attack size and steps), or, when the user asks for it (``--record``), a
departure that the record and the card then state. Every recorded score carries its split, image count and grid.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from ..certificates import DETERMINISTIC_KEY, certified_accuracy
from ..hub import record_evaluation
from ..protocol import ATTACK_IMAGES, ATTACK_STEPS, EVAL_SPLIT, FULL_CORRUPTIONS, SEVERITIES
from ..robustness.corruptions import MISSING, resolve_corruptions

__all__ = ['departures', 'record_in_folders']


def departures(kind: str, settings: Dict[str, Any], result: Dict[str, Any]) -> List[str]:
    """How a ``corruptions``, ``attacks``, ``deterministic_certificate`` or ``smoothing`` result departs from the
    full protocol (empty: it follows it; the certificate's protocol is every image of the test split)."""
    out: List[str] = []
    if settings['split'] != EVAL_SPLIT:
        out.append(f"split {settings['split']} (the protocol: {EVAL_SPLIT})")
    if settings.get('max_images') is not None:
        out.append(f"--max-images {settings['max_images']} (the protocol: every image)")
    if kind == 'corruptions':
        if tuple(result['severities']) != SEVERITIES:
            out.append(f"severities {list(result['severities'])} (the protocol: {list(SEVERITIES)})")
        missing = [n for n in resolve_corruptions(FULL_CORRUPTIONS) if n not in result]
        if missing:
            out.append(f'without {", ".join(missing)} (the protocol: the {FULL_CORRUPTIONS} corruptions'
                       f'{", less " + ", ".join(MISSING) if MISSING else ""})')
    if kind == 'attacks':
        request = settings['attacks']
        if request.get('eps'):
            out.append(f"epsilons {request['eps']} (the protocol: the default grid)")
        if request.get('max_images', ATTACK_IMAGES) != ATTACK_IMAGES:
            out.append(f"{request['max_images']} images attacked (the protocol: {ATTACK_IMAGES})")
        if request.get('steps', ATTACK_STEPS) != ATTACK_STEPS:
            out.append(f"{request['steps']} steps (the protocol: {ATTACK_STEPS})")
        if request.get('square_restarts') is not None:
            out.append(f"AutoAttack's Square with {request['square_restarts']} restart(s) (the protocol: ART's "
                       'default)')
    return out


def _protocol(kind: str, settings: Dict[str, Any], entry: Dict[str, Any], gaps: Sequence[str]) -> Dict[str, Any]:
    """The protocol a recorded result was measured under (the card and the metadata read it)."""
    result = entry[kind]
    images = result.get('subset') or result.get('images') or entry.get('images') or \
        {'num_images': result.get('num_images')}
    return {'split': settings['split'], 'data': entry.get('data'), 'images': images,
            'severities': list(result['severities']) if kind == 'corruptions' else None,
            'full_protocol': not gaps, 'departures': list(gaps)}


def _smoothing_record(result: Dict[str, Any], cert: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """What a folder keeps of randomized smoothing: its settings and scores, not the per-image rows; beside them,
    the deterministic certificate on the same images (each row's position in the evaluation data), so the card
    compares like with like."""
    out = {k: v for k, v in result.items() if k != 'rows'}
    if cert is not None and cert.get('radius') is not None:
        out['deterministic_same_images'] = certified_accuracy([cert['radius'][row['index']] for row in result['rows']],
                                                              result['radii'])
    return out


def record_in_folders(models: List[Tuple[nn.Module, Dict[str, Any]]], results: Dict[str, Any],
                      settings: Dict[str, Any], record_departures: bool = False) -> Dict[str, List[str]]:
    """Corruption and attack results of a run or checkpoint folder go into that folder's own files when they follow
    the full protocol, or with ``record_departures`` (then stated); returns what was left out, and why."""
    skipped: Dict[str, List[str]] = {}
    for (model, info), (label, entry) in zip(models, results.items()):
        folder: Optional[Any] = info.get('folder')
        if folder is None:
            continue
        extra = {}
        for kind in ('corruptions', 'attacks', DETERMINISTIC_KEY, 'smoothing'):
            if kind not in entry:
                continue
            gaps = departures(kind, settings, entry[kind])
            if gaps and not record_departures:
                skipped.setdefault(str(folder), []).append(f'{kind}: ' + '; '.join(gaps))
                continue
            result = {**entry[kind], 'protocol': _protocol(kind, settings, entry, gaps)}
            if kind == DETERMINISTIC_KEY:  # the folder keeps the scores and the check, not the per-image radii
                result = {k: v for k, v in result.items() if k not in ('radius', 'rule')}
                result['soundness'] = entry.get('soundness')
            if kind == 'smoothing':
                result = _smoothing_record(result, entry.get(DETERMINISTIC_KEY))
            extra[kind] = result
        if extra:
            record_evaluation(folder, **extra)
    for folder, why in skipped.items():
        print(f'not recorded in {folder} (its card, metadata and robustness.json keep the full-protocol results): '
              f'{" | ".join(why)}. Add --record to record it anyway; the card then states the departure.')
    return skipped
