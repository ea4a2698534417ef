"""``timm-lipschitz`` command line: argparse front-end only; the work is done by the package's modules."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ['main']


def _train(sub) -> None:
    from . import train as train_mod
    p = sub.add_parser('train', help='train a model from a recipe (Accelerate)')
    train_mod.build_parser(p)
    p.set_defaults(func=train_mod.run_from_args)


def _eval(sub) -> None:
    p = sub.add_parser('eval', help='noise-robustness evaluation of runs, checkpoints or registered models')
    from .evaluate import add_arguments, run_from_args
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def _sweep(sub) -> None:
    p = sub.add_parser('sweep', help='run a hyperparameter grid and render the paper-style tables')
    from .sweep import add_arguments, run_from_args
    add_arguments(p)
    p.set_defaults(func=run_from_args)


def _publish(sub) -> None:
    p = sub.add_parser('publish', help='build a hub folder from a finished run and upload it')
    p.add_argument('run_dir')
    p.add_argument('--repo-id', required=True, help='ORG/NAME on the Hugging Face Hub')
    p.add_argument('--dry-run', action='store_true', help='write the folder only, upload nothing')
    p.add_argument('--out-dir', help='where to build the folder (default RUN_DIR/publish)')
    p.add_argument('--private', action='store_true')

    def run(args):
        from .hub import publish
        out = publish(args.run_dir, args.repo_id, dry_run=args.dry_run, out_dir=args.out_dir, private=args.private)
        print(f"{'built' if args.dry_run else 'uploaded'} {out}" + ('' if args.dry_run else f' to {args.repo_id}'))
    p.set_defaults(func=run)


def _convert(sub) -> None:
    p = sub.add_parser('convert', help='convert akamaster / chenyaofo CIFAR ResNet checkpoints')
    p.add_argument('checkpoint', help='.th / .pt file (read with torch.load(weights_only=True))')
    p.add_argument('out_dir')
    p.add_argument('--source', default='auto', choices=('auto', 'akamaster', 'chenyaofo'))
    p.add_argument('--dataset', default='cifar10')

    def run(args):
        from .hub import convert_checkpoint
        print(f'wrote {convert_checkpoint(args.checkpoint, args.out_dir, args.source, args.dataset)}')
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='timm-lipschitz',
                                description='Noise-robust training with the Lipschitz hinge loss, as a timm plugin.')
    sub = p.add_subparsers(dest='command', required=True)
    for add in (_train, _eval, _sweep, _publish, _convert):
        add(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
