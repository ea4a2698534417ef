"""The model card (``README.md`` of a checkpoint folder): rendered from the same robustness record as
``robustness.json`` and the safetensors metadata, so the three never disagree. Hub conventions: timm's front
matter (``library_name: timm``, tags, license, datasets).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..robustness.protocol import SUMMARY_KEYS, TABLE_SIGMAS, index_on_grid, summary_label

__all__ = ['render_card', 'card_sections']


def _images(record: Optional[Dict[str, Any]], count: Any) -> str:
    """``1000`` or ``500 of 10000 (stratified prefix ...)``: how many images a score measured, and which."""
    if not record or record.get('num_images') == record.get('of'):
        return str(count if not record else record['num_images'])
    return f"{record['num_images']} of {record['of']} ({record['rule']}, seed {record.get('seed', 0)})"


def _recorded(title: str, result: Dict[str, Any], count: Any, sentence: str, table: str) -> List[str]:
    """A section of a result ``timm-lipschitz eval`` recorded: what it measured on which images of which split, and,
    first, how it departs from the full protocol if it does (``--record``)."""
    protocol = result.get('protocol') or {}
    images = f"{_images(result.get('subset') or protocol.get('images'), count)} {protocol.get('split', 'test')} images"
    departures = protocol.get('departures')
    return [f'## {title}', '', sentence.replace('{images}', images), '',
            *([f"**Not the full protocol:** {'; '.join(departures)}.", ''] if departures else []), table, '']


def card_sections(record: Dict[str, Any], plot: Optional[str]) -> List[str]:
    """The card's result sections, from the folder's robustness record (what ``robustness.json`` holds)."""
    lines: List[str] = []
    robustness = record.get('robustness')
    if robustness:
        s = robustness.get('summary', {})
        lines += ['## Accuracy under additive Gaussian noise', '',
                  f"Test accuracy (%) with noise N(0, sigma^2) added per pixel in [0,1] space before "
                  f"normalization, {robustness.get('repeats')} draw(s) per image, "
                  f"{_images(robustness.get('images'), robustness.get('num_images'))} test images, grid "
                  f"{robustness['sigmas'][0]:g}..{robustness['sigmas'][-1]:g} "
                  f"({len(robustness['sigmas'])} levels).", '',
                  '| sigma_test | accuracy | std over draws |', '|---|---|---|']
        step = max(1, len(robustness['sigmas']) // 10)
        for i, (sg, a, sd) in enumerate(zip(robustness['sigmas'], robustness['accuracy'],
                                            robustness['accuracy_std'])):
            if i % step == 0 or i == len(robustness['sigmas']) - 1 or \
                    any(index_on_grid([sg], t) is not None for t in TABLE_SIGMAS[1:]):
                lines.append(f'| {sg:.2f} | {a:.2f} | {sd:.2f} |')
        lines += ['', '| ' + ' | '.join(summary_label(k) for k in SUMMARY_KEYS) + ' |', '|---' * len(SUMMARY_KEYS) + '|',
                  '| ' + ' | '.join('n/a' if s.get(k) is None else f'{s[k]:.2f}' for k in SUMMARY_KEYS) + ' |', '']
    if plot:
        lines += [f'![accuracy vs sigma]({plot})', '']
    corruptions = record.get('corruptions')
    if corruptions:
        from ..robustness.report import corruption_table
        lines += _recorded('Common corruptions (CIFAR-10-C)', corruptions, corruptions.get('num_images'),
                           f"Accuracy (%) under the corruptions of CIFAR-10-C, computed on the fly with its constants, "
                           f"mean over severities {corruptions['severities']}, {{images}}. Mean corruption accuracy: "
                           f"**{corruptions['mean']:.2f}** (clean {corruptions['clean']:.2f}).",
                           corruption_table({'accuracy': corruptions}))
    attacks = record.get('attacks')
    if attacks:
        from ..robustness.report import attack_table
        lines += _recorded('Adversarial robustness', attacks, attacks.get('num_images'),
                           f"Robust accuracy (%) under {attacks.get('method', attacks.get('attack'))}, {{images}}.",
                           attack_table({'accuracy': attacks}))
    return lines


def render_card(name: str, config: Dict[str, Any], meta: Dict[str, str], record: Dict[str, Any],
                command: Optional[str], plot: Optional[str], load_as: str) -> str:
    """The card of a checkpoint folder: front matter, details, usage, its robustness sections, the reproduce command."""
    dataset = meta.get('dataset', '')
    hp = json.loads(meta.get('hparams', '{}'))
    lines = [
        '---',
        'tags:', '- image-classification', '- timm', '- timm-lipschitz', '- noise-robustness',
        'library_name: timm',
        f"license: {config.get('pretrained_cfg', {}).get('license', 'apache-2.0')}",
    ]
    if dataset:
        lines += ['datasets:', f'- {dataset}']
    lines += ['---', '', f'# Model card for {name}', '',
              f"A `{meta.get('architecture')}` image classifier trained on `{dataset}` with the "
              f"`{meta.get('objective')}` objective of timm-lipschitz "
              f"(Usama & Chang, *Towards Robust Neural Networks with Lipschitz Continuity*).", '',
              '## Model details', '',
              f"- **Architecture:** {meta.get('architecture')} ({config.get('num_classes')} classes, input "
              f"{tuple(config.get('pretrained_cfg', {}).get('input_size', ()))})",
              f"- **Objective:** {meta.get('objective')} {hp}",
              f"- **Recipe hash:** {meta.get('recipe_hash') or 'n/a'}; timm-lipschitz {meta.get('version')}", '',
              '## Usage', '', '```python', 'import timm, timm_lipschitz',
              f"model = timm.create_model('{load_as}', pretrained=True)",
              'model.eval()  # inputs: [0,1] pixels normalized with pretrained_cfg mean/std', '```', '']
    lines += card_sections(record, plot)
    if command:
        lines += ['## Reproduce', '', '```bash', command, '```', '']
    return '\n'.join(lines)
