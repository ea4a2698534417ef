"""``timm-lipschitz eval``: robustness evaluation of runs, checkpoint folders, or registered models with a checkpoint
file or their pretrained tag; writes ``eval.json``, ``eval.md`` and plots.

- :mod:`.loading` - what is evaluated: models (with what is known of their training), the device, the data;
- :mod:`.command` - the command line's flags, each checked once before anything loads;
- :mod:`.run` - the orchestration: the measurements of :mod:`timm_lipschitz.robustness` for each model, then the
  outputs;
- :mod:`.record` - what a run's or checkpoint's own record may hold: the full protocol, or a stated departure.

``eval.json`` layout (``format_version`` 2)::

    {"format_version": 2, "environment": {"timm_lipschitz", "timm", "torch", "command", "date"},
     "models": {<label>: {"data": ..., "split": ..., "device": ..., "images": ..., "overrides": ..., "sweep": {...},
                          "lipschitz": {...}, "smoothing": {...}, ...}}}

Files of 0.1.0 (format 1) hold the ``models`` mapping at the top level; :func:`read_eval` reads both.
"""
from .command import attack_request, certify_request, corruption_request, run_from_args
from .loading import (ClassNamesWarning, OverrideWarning, check_overrides, data_for, device_name, load_model,
                      resolve_device)
from .run import EVAL_FORMAT_VERSION, SMOOTHING_SETTINGS, check_out_dir, evaluate, extra_evaluations, read_eval

__all__ = ['load_model', 'resolve_device', 'device_name', 'data_for', 'evaluate', 'run_from_args',
           'extra_evaluations', 'read_eval', 'check_out_dir', 'attack_request', 'corruption_request',
           'EVAL_FORMAT_VERSION', 'SMOOTHING_SETTINGS', 'ClassNamesWarning', 'OverrideWarning', 'check_overrides',
           'certify_request']
