"""The Accelerate training function (``python -m timm_lipschitz.train`` / ``accelerate launch -m ...`` run it from a
recipe: :mod:`.__main__`).

One readable function in the spirit of Accelerate's ``complete_cv_example.py``: :func:`train` prepares the run,
trains, and finishes it. The recipe picks a timm model, a dataset from :mod:`timm_lipschitz.data` and an objective
from the loss factory; Accelerate handles devices, mixed precision, DDP, gradient accumulation, trackers and
checkpoint state; timm supplies the optimizer, scheduler and EMA. The trainer never special-cases an objective.

- :mod:`.build` - checks and builders, and :func:`~.build.prepare_run` (everything before the first step);
- :mod:`.loop` - the loop's bookkeeping: :class:`~timm_lipschitz.train.loop.TrainingLoop` (counters, batches,
  divergence guard, state saves, resuming), its :class:`~.loop.StepLog` and :class:`~.loop.StopSignals`;
- :mod:`.outputs` - periodic and final evaluation, ``final.json``, the checkpoint files and the closing lines;
- :mod:`timm_lipschitz.runs` - the run folder's rules (claim, new run or resume, states).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from accelerate.utils import set_seed

from ..recipes import ResolvedRecipe, resolve_recipe
from ..runs import discard_if_stub, latest_state, open_run_folder
from ..seeding import stream_seed
from .build import (PreparedRun, apply_model_options, apply_threads, build_data, build_model, build_objective,
                    build_optimizer, build_scheduler, build_train_loader, check_runtime, compile_step, cpu_threads,
                    data_mean_std, default_input_size, eval_subset, has_accelerator, make_accelerator, prepare_run,
                    resolve_normalization, warn_single_process_launch)
from .loop import (EXIT_PREEMPTED, DivergenceGuard, Preempted, StepLog, StopSignals, TrainState, TrainingDiverged,
                   TrainingLoop, optimizer_stepper, step_target, window_add as _window_add,
                   window_means as _window_means)
from .outputs import JsonlTracker, evaluate_clean, evaluate_epoch, finish_run, reproduce_command

__all__ = ['train', 'TrainingDiverged', 'Preempted', 'latest_state', 'JsonlTracker', 'evaluate_clean',
           'check_runtime', 'build_model', 'compile_step', 'build_data', 'data_mean_std', 'reproduce_command',
           'EXIT_PREEMPTED', 'TrainState', 'DivergenceGuard', 'optimizer_stepper', 'step_target', 'PreparedRun',
           'prepare_run', 'finish_run', 'apply_model_options', 'build_objective', 'build_optimizer',
           'build_scheduler', 'build_train_loader', 'resolve_normalization', 'StepLog', 'StopSignals',
           'TrainingLoop', 'apply_threads', 'cpu_threads']
# names of 0.1.0 and 0.2.0 that scripts import from here
_ = (_window_add, _window_means, default_input_size, eval_subset, has_accelerator, make_accelerator)


def train(recipe: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = (), resume: bool = False,
          command: Optional[str] = None, progress: bool = True, stop_at_step: Optional[int] = None) -> Dict[str, Any]:
    """Train per ``recipe`` (a path, a dict, or a :class:`~timm_lipschitz.recipes.ResolvedRecipe` taken as it is;
    ``overrides`` are ``key=value``); returns the final summary.

    ``resume=True`` continues from the newest complete state in the run folder, skipping the batches of the
    interrupted epoch that were already trained on. ``command`` overrides the reproduce command recorded in
    ``final.json`` and the model card. ``stop_at_step`` saves the state at that step and stops
    (:class:`~.loop.StoppedAsAsked`): how a resumed run's recorded command sequence replays each segment.
    """
    resolved = recipe if isinstance(recipe, ResolvedRecipe) and not overrides else resolve_recipe(recipe, overrides)
    recipe = dict(resolved)  # a plain dict of this run (it records the run's normalization); the caller's stays
    check_runtime(recipe)
    accelerator = make_accelerator(recipe, Path(recipe['output_dir']))
    warn_single_process_launch(accelerator)
    threads = apply_threads(recipe, accelerator)
    print(f'[rank {accelerator.process_index}] num_processes={accelerator.num_processes} distributed_type='
          f'{accelerator.distributed_type.value} device={accelerator.device} '
          f'mixed_precision={accelerator.mixed_precision} threads={threads}', flush=True)
    out = Path(recipe['output_dir'])
    with open_run_folder(accelerator, out, recipe, resume) as folder, discard_if_stub(folder, out, accelerator):
        set_seed(stream_seed('global', recipe['seed']))
        run = prepare_run(recipe, accelerator, folder, resume, progress, stop_at_step)
        model, loop = run.model, run.loop
        step_optimizer = optimizer_stepper(accelerator, run.optimizer)
        loop.start(run.optimizer)
        model.train()
        for _ in loop.epochs():
            for images, targets in loop.batches():
                with accelerator.accumulate(model):
                    output = run.step_loss(model, images, targets)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients:
                        if recipe['max_grad_norm']:
                            accelerator.clip_grad_norm_(model.parameters(), recipe['max_grad_norm'])
                        step_optimizer()
                if loop.record(output, images, targets):  # an optimizer step was taken
                    run.after_optimizer_step()
                    loop.after_step()
            loop.end_epoch()
            evaluate_epoch(run)
            loop.after_epoch()
        return finish_run(run, loop.finish(), command, progress)
