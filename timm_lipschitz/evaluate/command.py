"""``timm-lipschitz eval`` (arguments: :func:`timm_lipschitz.cli.add_eval_arguments`): every flag is checked once,
before any model or data loads, so a mistake costs no waiting and is named by its flag."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UsageError
from ..numbers import check_number
from ..protocol import CERTIFY_PRESETS, SEVERITIES, SMOOTHING
from ..robustness.attacks import check_request, parse_eps
from ..robustness.certify import check_settings
from ..robustness.corruptions import resolve_corruptions
from .loading import load_model, resolve_device
from .run import check_out_dir, evaluate

__all__ = ['run_from_args', 'attack_request', 'corruption_request', 'certify_request']


def _floats(text: Optional[str], flag: str) -> Optional[List[float]]:
    if not text:
        return None
    try:
        return [float(x) for x in text.split(',')]
    except ValueError:
        raise UsageError(f'{flag} {text!r} is not a comma list of numbers (e.g. {flag} 0.5,0.5,0.5).') from None


def _ints(text: Optional[str], flag: str, count: Optional[int]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        values = [int(x) for x in text.split(',')]
    except ValueError:
        values = []
    if count is not None and (len(values) != count or any(v < 1 for v in values)):
        raise UsageError(f'{flag} {text!r} is not allowed; give {count} positive integers (C,H,W), e.g. 1,32,32.')
    if count is None and not values:
        raise UsageError(f'{flag} {text!r} is not allowed; give a comma list of integers, e.g. 1,3,5.')
    return values


def input_size_request(args: argparse.Namespace) -> Optional[List[int]]:
    """``--input-size C,H,W`` (ours) or ``C H W`` (timm's validate.py), or ``--img-size N``; None: the model's own."""
    if args.input_size and getattr(args, 'img_size', None):
        raise UsageError('--input-size and --img-size name the same thing: give one of them.')
    if getattr(args, 'img_size', None) is not None:
        check_number('--img-size', args.img_size, low=1, integer=True)
        return [0, args.img_size, args.img_size]  # channels: the model's own (filled in per model)
    text = ','.join(args.input_size) if isinstance(args.input_size, list) else args.input_size
    return _ints(text, '--input-size', 3)


def attack_request(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """--attack and its flags as attack_sweep's keyword arguments, checked by the attack module's one check."""
    if args.attack is None:
        return None
    method = args.attack_method
    if method == 'auto':
        method = 'autoattack' if resolve_device(args.device).type == 'cuda' else 'pgd'
    eps: Dict[str, List[float]] = {}
    for text in args.eps or []:
        eps.update(parse_eps(text))
    restarts = args.autoattack_square_restarts
    norms = check_request(args.attack, method, args.attack_steps, args.attack_images,
                          names={'norms': '--attack', 'method': '--attack-method', 'steps': '--attack-steps',
                                 'max_images': '--attack-images', 'square_restarts': '--autoattack-square-restarts'},
                          square_restarts=restarts)
    unused = [n for n in eps if n != '*' and n not in norms]
    if unused:
        raise UsageError(f'--eps gives {", ".join(unused)} values, but --attack {args.attack} does not run '
                         f'{"that norm" if len(unused) == 1 else "those norms"}: they would be unused. Add '
                         f'{",".join(unused)} to --attack or drop those --eps values.')
    return {'norms': norms, 'eps': eps or None, 'method': method, 'steps': args.attack_steps,
            'max_images': args.attack_images, 'black_box': args.black_box, 'batch_size': args.batch_size,
            **({'square_restarts': restarts} if restarts is not None else {})}


def corruption_request(args: argparse.Namespace) -> Sequence[int]:
    """The severities of ``--corruptions``: CIFAR-10-C's 1..5 (the library's severity 0, the clean image, is for
    tests, not a severity to report)."""
    if args.severities is not None and args.corruptions is None:
        raise UsageError('--severities sets the corruptions, which run with --corruptions: add it or drop '
                         '--severities.')
    severities = _ints(args.severities, '--severities', None) or SEVERITIES
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise UsageError(f'--severities {args.severities!r}: {bad} are not allowed; give severities from '
                         f'{min(SEVERITIES)} to {max(SEVERITIES)}.')
    if args.corruptions is not None:
        resolve_corruptions(args.corruptions)
    return severities


def certify_request(args: argparse.Namespace) -> Dict[str, Any]:
    """The randomized-smoothing settings (``--certify`` and the attacks' certified column), checked by the
    certificate module's one check and named by their flags."""
    given = [f'--{k.replace("_", "-")}' for k in ('certify_sigma', 'certify_preset', 'n0', 'n', 'alpha',
                                                 'certify_images') if getattr(args, k, None) is not None]
    if given and not (args.certify or args.attack is not None):
        raise UsageError(f'{", ".join(given)} set randomized smoothing, which runs with --certify (or beside '
                         '--attack); add --certify or drop them.')
    preset = CERTIFY_PRESETS.get(getattr(args, 'certify_preset', None) or '', {})
    chosen = {k: getattr(args, k) for k in ('n0', 'n', 'alpha') if getattr(args, k) is not None}
    settings = {**SMOOTHING, **preset, **chosen}
    settings.update({k: v for k, v in (('sigma', args.certify_sigma), ('num_images', args.certify_images))
                     if v is not None})
    if preset:
        settings['preset'] = args.certify_preset
        settings['departs_from_preset'] = {k: v for k, v in chosen.items() if v != preset.get(k)}
    if args.certify or args.attack is not None:
        check_settings(**{k: settings[k] for k in ('sigma', 'n0', 'n', 'alpha', 'num_images')},
                       names={'sigma': '--certify-sigma', 'n0': '--n0', 'n': '--n', 'alpha': '--alpha',
                              'num_images': '--certify-images'})
    return settings


def check_numbers(args: argparse.Namespace) -> None:
    """The numeric flags of an evaluation, by the package's one number check (each refusal names its flag)."""
    check_number('--batch-size', args.batch_size, low=1, integer=True)
    check_number('--max-images', args.max_images, low=1, integer=True, allow_none=True)
    check_number('--img-size', args.img_size, low=1, integer=True, allow_none=True)
    check_number('--repeats', args.repeats, low=1, integer=True)
    check_number('--seed', args.seed, low=0, high=2 ** 63 - 1, integer=True)
    attack_flags = [f for f, given in (('--eps', args.eps), ('--black-box', args.black_box),
                                       ('--autoattack-square-restarts', args.autoattack_square_restarts is not None))
                    if given]
    if attack_flags and args.attack is None:
        raise UsageError(f'{", ".join(attack_flags)} set the attacks, which run with --attack: add it or drop them.')


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    check_numbers(args)
    resolve_device(args.device)  # a bad --device fails before any model or data is loaded
    severities = corruption_request(args)
    out = check_out_dir(Path(args.out))
    mean, std = _floats(args.mean, '--mean'), _floats(args.std, '--std')
    if (mean is None) != (std is None):
        raise UsageError('--mean and --std go together: give both or neither.')
    size = input_size_request(args)
    attacks = attack_request(args)  # a bad attack request fails before any model or data is loaded
    certify_args = certify_request(args)
    models = [load_model(s) for s in args.sources]
    if args.model:
        models.append(load_model(model_name=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained))
    if not models:
        raise UsageError('nothing to evaluate: give run folders, or --model NAME with --checkpoint/--pretrained.')
    results = evaluate(models, args.out, data=args.data, root=args.data_root, input_size=size, split=args.split,
                       sigmas=args.preset or args.sigmas, repeats=args.repeats, seed=args.seed, clip=args.clip,
                       batch_size=args.batch_size, max_images=args.max_images, mean=mean, std=std,
                       lipschitz=args.lipschitz, certify=args.certify,
                       certify_args=certify_args,
                       demo=args.demo, progress=not args.no_progress, device=args.device,
                       corruptions=args.corruptions, severities=severities, attacks=attacks,
                       record_departures=args.record,
                       command=' '.join(['timm-lipschitz', 'eval', *map(shlex.quote, getattr(args, 'argv', []))]))
    print((out / 'eval.md').read_text())
    print(f'wrote {out}/eval.json, eval.md, eval.png')
    return results
