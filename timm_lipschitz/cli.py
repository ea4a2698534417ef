"""``timm-lipschitz`` command line: argparse front-end only; the work is done by the package's modules.

Every parser is defined here without importing torch or timm: ``--help`` and a recipe mistake are answered in well
under a second, and the heavy modules load only when a command runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from . import __version__
from .errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UsageError, UserError
from .numbers import check_number
from .protocol import (ATTACK_IMAGES, ATTACK_STEPS, CERTIFY_PRESETS, EVAL_SPLIT, PAPER_GRID, PRESETS, SEVERITIES,
                       SMOOTHING)
from .sweep.slurm import MAX_REQUEUES, SLURM_DEFAULTS

__all__ = ['main', 'build_parser', 'add_train_arguments', 'add_eval_arguments', 'add_sweep_arguments']


def add_train_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('--recipe', required=True, help='recipe YAML (see recipes/)')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override a recipe key, e.g. --set loss.sigma=0.5 (repeatable)')
    p.add_argument('--output-dir', help="run folder (default: the recipe's output_dir)")
    p.add_argument('--resume', action='store_true', help='continue from the newest saved state in the run folder')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--threads', metavar='N|auto',
                   help="torch CPU threads per process (the recipe's threads, default auto: the usable CPUs shared "
                        'among the processes of this machine; 1 is faster on a machine other jobs load)')
    p.add_argument('--stop-at-step', type=int, metavar='N',
                   help="save the state at step N and stop (the recipe's schedule unchanged; --resume continues)")
    p.add_argument('--trust-local-plugins', action='store_true',
                   help="allow the recipe's plugins to be imported from the current directory or the recipe's folder "
                        '(importing runs their code; also TIMM_LIPSCHITZ_TRUST_LOCAL_PLUGINS=1)')
    return p


def add_eval_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('sources', nargs='*', help='run folders or checkpoint folders (several give one overlaid plot)')
    p.add_argument('-m', '--model', help='registered model name, e.g. cifar_resnet20 or cifar_resnet20.<tag> '
                                   '(with --checkpoint or --pretrained)')
    p.add_argument('--checkpoint', help='safetensors file for --model')
    p.add_argument('--pretrained', action='store_true', help='use the registered pretrained tag of --model')
    p.add_argument('--data', '--dataset', help='dataset name (default: the one the run or tag was trained on)')
    p.add_argument('--data-root', '--data-dir', help='where the dataset files are (default: the dataset\'s own)')
    p.add_argument('--input-size', nargs='+', metavar='C H W',
                   help="C,H,W or C H W, as timm's validate.py takes it (default: the model's pretrained_cfg)")
    p.add_argument('--img-size', type=int, metavar='N', help='N x N images with the model\'s own channels (timm)')
    p.add_argument('--split', default=EVAL_SPLIT, choices=('train', 'test'), help='which split to evaluate')
    p.add_argument('--sigmas', default=None,
                   help="'start:stop:step' (stop included), a comma list, or a preset: paper (0..0.5), mnist "
                        f"(0..1.0), cifar10c_gaussian (clipped, uint8-rounded); default {PAPER_GRID}")
    p.add_argument('--preset', choices=tuple(PRESETS),
                   help='same as --sigmas PRESET (kept for compatibility)')
    p.add_argument('--repeats', type=int, default=1, help='noise draws per image and sigma (mean ± std reported)')
    p.add_argument('--seed', type=int, default=0, help='seed of the evaluation noise (common random numbers)')
    p.add_argument('--clip', action='store_true', help='clip noisy images to [0,1]')
    p.add_argument('-b', '--batch-size', type=int, default=256, help='images per forward pass')
    p.add_argument('--max-images', type=int, help='evaluate N images of the split: a prefix of its seeded, '
                   'stratified evaluation order (not the first N, which can be a few classes)')
    p.add_argument('--mean', help='normalization mean for models without pretrained_cfg (comma list)')
    p.add_argument('--std', help='normalization std (comma list)')
    p.add_argument('--lipschitz', action='store_true', help='k(x) statistics, PGD lower bound, spectral upper bound')
    p.add_argument('--certify', action='store_true', help='randomized smoothing certificates (Cohen et al.)')
    p.add_argument('--certify-sigma', type=float,
                   help=f"noise level of the smoothed classifier ({SMOOTHING['sigma']})")
    p.add_argument('--certify-preset', choices=tuple(CERTIFY_PRESETS),
                   help='settings from the literature: cohen = n0 100, n 100,000, alpha 0.001 (Cohen et al. 2019); '
                        'also writes their per-image TSV (certify_<model>.tsv); --n0/--n/--alpha given too override it')
    p.add_argument('--n0', type=int, help=f"Monte Carlo samples to pick the class (certify; {SMOOTHING['n0']})")
    p.add_argument('--n', type=int, help=f"Monte Carlo samples to bound its probability (certify; {SMOOTHING['n']})")
    p.add_argument('--alpha', type=float, help=f"failure probability of a certificate, in (0, 1) "
                                               f"({SMOOTHING['alpha']})")
    p.add_argument('--certify-images', type=int,
                   help=f"images certified (a prefix of the split's stratified evaluation order; "
                        f"{SMOOTHING['num_images']})")
    p.add_argument('--demo', action='store_true', help="the paper's Table 1: one image at sigma 0..0.6")
    p.add_argument('--corruptions', nargs='?', const='all', metavar='WHICH',
                   help='the CIFAR-10-C corruptions, computed on the fly: all (the default when given alone), '
                        'benchmark (the 15), extra (the 4), a family (noise, blur, weather, digital) or a comma '
                        'list of names')
    p.add_argument('--severities',
                   help=f'corruption severities, a comma list of {min(SEVERITIES)}..{max(SEVERITIES)} (all of them)')
    p.add_argument('--attack', nargs='?', const='l2,linf', metavar='NORMS',
                   help='robust accuracy under adversarial attacks in [0,1] pixel space: l2, linf or l2,linf (the '
                        'default when given alone); needs pip install "timm-lipschitz[attacks]"')
    p.add_argument('--attack-method', default='auto',
                   help='pgd (the cheap screen), autoattack (the standard; ART\'s ensemble) or square (black-box); '
                        'auto: autoattack on a GPU, pgd on a CPU')
    p.add_argument('--eps', action='append', metavar='[NORM=]LIST',
                   help='epsilons instead of the defaults, e.g. --eps linf=1/255,8/255 --eps l2=0.5 (repeatable; '
                        'defaults: RGB linf 1,2,4,8/255 and l2 0.25,0.5,1; one-channel linf 0.1,0.2,0.3 and l2 '
                        '0.5,1,2)')
    p.add_argument('--attack-images', type=int, default=ATTACK_IMAGES,
                   help='images attacked (a prefix of the split\'s stratified evaluation order)')
    p.add_argument('--attack-steps', type=int, default=ATTACK_STEPS, help='PGD iterations (Square: 10x as many queries)')
    p.add_argument('--autoattack-square-restarts', type=int, metavar='N',
                   help="restarts of AutoAttack's Square member (ART's default: 5; Croce & Hein's standard version: "
                        '1, about 5x cheaper on a CPU); a result with it is recorded as departing from the protocol')
    p.add_argument('--black-box', action='store_true',
                   help='also run the black-box Square attack and flag where it beats the gradient attack')
    p.add_argument('--record', action='store_true',
                   help='also write corruption and attack results that depart from the full protocol (another split, '
                        '--max-images, other severities, epsilons or attack size) into the run\'s own card, '
                        'metadata and robustness.json; the card then states the departure')
    p.add_argument('--out', default='eval_out', help='output folder')
    p.add_argument('--device', default='auto',
                   help='where the noise sweep runs: auto (CUDA if available), cpu, cuda or cuda:N; '
                        '--lipschitz/--certify/--demo run on the CPU')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def add_sweep_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('grid', help='grid YAML (see recipes/grids/)')
    p.add_argument('--dry-run', action='store_true', help='list the points and what is finished; run nothing')
    p.add_argument('--jobs', type=int, default=1, help='points at a time (subprocesses; one per GPU if several)')
    p.add_argument('--emit-commands', action='store_true', help='print one accelerate launch command per point')
    p.add_argument('--progress', action='store_true', help='progress bars for each run')
    p.add_argument('--collect', action='store_true', help='only collect finished points and render the tables')
    p.add_argument('--seeds', type=int, nargs='+', help='run only the points of these seeds (the tables keep every '
                   'finished point)')
    p.add_argument('--rerun-stale', action='store_true',
                   help='rerun points that finished with another recipe than the grid\'s today (their old runs are '
                        'set aside as <point>.stale-<k>, never deleted)')
    slurm = p.add_argument_group('SLURM job array (with --emit-commands)')
    slurm.add_argument('--slurm', metavar='FILE', help='write a SLURM job-array script (one task per point, '
                                                      'requeued and resumed when preempted) instead of printing')
    slurm.add_argument('--gpus-per-task', type=int, help='GPUs per point (default: 1 for a mixed-precision '
                                                        'recipe, else 0); several run under torchrun')
    slurm.add_argument('--cpus-per-task', type=int, default=SLURM_DEFAULTS['cpus_per_task'], help='CPU cores per point')
    slurm.add_argument('--mem', help='memory per point, e.g. 16G')
    slurm.add_argument('--time', help='time limit per run of a point, e.g. 04:00:00 (a longer point requeues)')
    slurm.add_argument('--partition', help='SLURM partition')
    slurm.add_argument('--max-requeues', type=int, default=MAX_REQUEUES,
                       help='a task stopped this often already fails instead of requeueing again (SLURM_RESTART_COUNT)')
    slurm.add_argument('--signal-lead', type=int, default=SLURM_DEFAULTS['signal_lead'],
                       help='seconds before the time limit at which the point saves its state and requeues')
    return p


def _add_publish_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('run_dir', help='a finished run folder')
    p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hugging Face Hub')
    p.add_argument('--dry-run', action='store_true', help='write the folder only, upload nothing')
    p.add_argument('--out-dir', help='where to build the folder (default RUN_DIR/publish)')
    p.add_argument('--private', action='store_true', help='create the hub repo as private')
    return p


def _add_hub_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('action', choices=('list',), help='list: every shipped tag with its dataset, objective and '
                                                     'headline scores (from the files\' metadata)')
    return p


def _run_hub(args: argparse.Namespace) -> None:
    from .listing import tag_rows, tag_table
    print(tag_table(tag_rows()))


def _add_convert_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('checkpoint', help='.th / .pt file (read with torch.load(weights_only=True))')
    p.add_argument('out_dir', help='checkpoint folder to write')
    p.add_argument('--source', default='auto', choices=('auto', 'akamaster', 'chenyaofo'),
                   help='the project the file comes from; auto detects it from the layout, a named source is '
                        'checked against it')
    p.add_argument('--dataset', default='cifar10', help='dataset the weights were trained on (metadata)')
    return p


def _add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument('--robustbench', metavar='RUN_OR_TAG', required=True,
                   help='a finished run folder, checkpoint folder or tag, exported in RobustBench\'s form')
    p.add_argument('--name', required=True, help='RobustBench model name, e.g. Usama2026Lipschitz')
    p.add_argument('--threat', required=True, help='RobustBench threat model: L2, Linf or corruptions')
    p.add_argument('--out', help='export folder (default: $TIMM_LIPSCHITZ_HOME/robustbench/<entry>, '
                                 'TIMM_LIPSCHITZ_HOME defaulting to ~/.cache/timm_lipschitz)')
    for key in ('link', 'authors', 'venue'):
        p.add_argument(f'--{key}', help=f"model-info {key} (default: the paper's)")
    p.add_argument('--paper-name', help="model-info name: the paper's title (default: the method's paper)")
    return p


def _run_export(args: argparse.Namespace) -> None:
    from .hub.robustbench import export_robustbench
    paper = {k: v for k, v in (('link', args.link), ('authors', args.authors), ('venue', args.venue),
                               ('name', args.paper_name)) if v}
    entry, folder, info = export_robustbench(args.robustbench, args.name, args.threat, args.out, paper)
    print(f'exported {args.robustbench} to {folder} (model info: {folder / (args.name + ".json")})\n'
          f'timm name: {entry}; after import timm_lipschitz, RobustBench finds it with '
          f"load_model('{args.name}', dataset='{info['dataset']}', threat_model='{args.threat}'), and timm with "
          f"timm.create_model('{entry}', pretrained=True) (inputs: [0,1] pixels, normalization inside).")


def train_overrides(args: argparse.Namespace) -> list:
    """``--set`` overrides plus ``--output-dir`` and ``--threads``."""
    return list(args.overrides) + ([f'output_dir={args.output_dir}'] if args.output_dir else []) + \
        ([f'threads={args.threads}'] if getattr(args, 'threads', None) else [])


def _run_train(args: argparse.Namespace) -> None:
    from .recipes import TRUST_LOCAL_PLUGINS, resolve_recipe
    if args.trust_local_plugins:  # the user's decision, inherited by processes this one launches
        os.environ[TRUST_LOCAL_PLUGINS] = '1'
    check_number('--stop-at-step', args.stop_at_step, low=1, integer=True, allow_none=True)
    recipe = resolve_recipe(args.recipe, train_overrides(args))  # a recipe mistake is answered before torch loads
    from .train import train
    train(recipe, resume=args.resume, progress=not args.no_progress, stop_at_step=args.stop_at_step)


def _run_eval(args: argparse.Namespace) -> None:
    from .evaluate import run_from_args
    run_from_args(args)


def _run_sweep(args: argparse.Namespace) -> None:
    if args.slurm and not args.emit_commands:
        raise UsageError('--slurm FILE writes the commands of --emit-commands as a job array: add --emit-commands.')
    from .sweep import run_from_args
    run_from_args(args)


def _run_publish(args: argparse.Namespace) -> None:
    from .hub import publish
    out = publish(args.run_dir, args.repo_id, dry_run=args.dry_run, out_dir=args.out_dir, private=args.private)
    print(f"{'built' if args.dry_run else 'uploaded'} {out}" + ('' if args.dry_run else f' to {args.repo_id}'))


def _run_convert(args: argparse.Namespace) -> None:
    from .hub import convert_checkpoint
    print(f'wrote {convert_checkpoint(args.checkpoint, args.out_dir, args.source, args.dataset)}')


COMMANDS: dict = {
    'train': ('train a model from a recipe (Accelerate)', add_train_arguments, _run_train),
    'eval': ('noise-robustness evaluation of runs, checkpoints or registered models', add_eval_arguments,
             _run_eval),
    'sweep': ('run a hyperparameter grid and render the paper-style tables', add_sweep_arguments, _run_sweep),
    'publish': ('build a hub folder from a finished run and upload it', _add_publish_arguments, _run_publish),
    'convert': ('convert akamaster / chenyaofo CIFAR ResNet checkpoints', _add_convert_arguments, _run_convert),
    'hub': ('the shipped tags: hub list', _add_hub_arguments, _run_hub),
    'export': ('export a model in RobustBench\'s form (registered with timm, with its model-info JSON)',
               _add_export_arguments, _run_export),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-lipschitz',
                                description='Noise-robust training with the Lipschitz hinge loss, as a timm plugin.')
    p.add_argument('--version', action='version', version=f'timm-lipschitz {__version__}')
    sub = p.add_subparsers(dest='command', required=True)
    for name, (help_text, add, run) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)).set_defaults(func=run)
    return p


# What is the user's mistake or the machine's state gets one line and its own exit code; anything else is a bug or an
# unexpected failure and keeps its traceback (exit code EXIT_INTERNAL_ERROR), so it can be reported and fixed.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


def _interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: for a training run, its last complete state (states are renamed into place whole)."""
    if getattr(args, 'command', None) != 'train':
        return 'nothing was written after the last complete file.'
    from .recipes import resolve_recipe
    from .runs import latest_state
    try:
        out = resolve_recipe(args.recipe, train_overrides(args))['output_dir']
    except UserError:
        return 'no run was started.'
    state = latest_state(out)
    return (f'the last complete state is {state}; continue with --resume.' if state else
            f'no state of {out} was saved yet; start it again (with --resume if its folder holds the run).')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    try:
        args.func(args)
    except USER_ERRORS as e:
        code = getattr(e, 'exit_code', EXIT_USER_ERROR)  # a run stopped by a signal exits 75 (resume it)
        print(f'{"error" if code == EXIT_USER_ERROR else "stopped"}: {e}', file=sys.stderr if code else sys.stdout)
        return code
    except KeyboardInterrupt:
        print(f'interrupted: {_interrupted(args)}', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # noqa: BLE001 - shown whole: not a refusal but a failure to report
        traceback.print_exc()
        print(f'internal error (exit code {EXIT_INTERNAL_ERROR}): the traceback above is not a usage mistake; '
              f'please report it with the command that produced it.', file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0


if __name__ == '__main__':
    sys.exit(main())
