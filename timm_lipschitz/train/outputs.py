"""The run's outputs: the JSONL metrics tracker, the evaluations during and at the end of training, the summary
(``final.json``, written last: the finished marker), the checkpoint files and model card, and the closing lines.
Every score comes from the weights that are saved (the EMA weights when EMA is on)."""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from accelerate.tracking import GeneralTracker

from ..fileio import atomic_write_json, atomic_write_text, dumps
from ..hub import make_tag, save_pretrained
from ..modes import eval_mode, for_evaluation
from ..normalization import unwrap_model
from ..recipes import flatten
from ..robustness import noise_sweep, plot_sweeps, summary_table, sweep_table
from ..robustness.subsets import subset_record
from ..runs import FINAL_NAME, METRICS_NAME, StateSaveError, segments, space_message

__all__ = ['JsonlTracker', 'METRICS_NAME', 'tracker_config', 'evaluate_clean', 'evaluate_epoch', 'finish_run',
           'reproduce_command', 'write_outputs', 'print_summary']


class JsonlTracker(GeneralTracker):
    """An Accelerate tracker writing one JSON line per ``accelerator.log`` call to ``metrics.jsonl``."""

    name = 'jsonl'
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: Union[str, Path]):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: Dict[str, Any]) -> None:
        pass  # the resolved recipe is written to recipe.yaml

    def log(self, values: Dict[str, Any], step: Optional[int] = None, **kwargs: Any) -> None:
        row = {'step': step, 'time': round(time.time(), 3), **{k: _scalar(v) for k, v in values.items()}}
        with open(self.path, 'a') as f:
            f.write(dumps(row) + '\n')


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, 'item') else v


def tracker_config(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe's dotted leaves as TensorBoard hparams (lists, None and empty mappings as strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(recipe).items()}


def reproduce_commands(out: Path) -> List[str]:
    """The commands that train the run's weights again, with absolute paths so they work from any directory: one
    from its resolved recipe, or, for a run resumed with another recipe (more steps change the schedule), one per
    segment, each stopping where the run was resumed (``--stop-at-step``), then resuming with the next recipe."""
    out = Path(out).resolve()
    target = shlex.quote(str(out) + '_reproduced')
    commands = []
    for i, seg in enumerate(segments(out)):
        commands.append(f'timm-lipschitz train --recipe {shlex.quote(str(out / seg["recipe"]))} --output-dir {target} '
                        f'--stop-at-step {seg["until_step"]}' + (' --resume' if i else ''))
    commands.append(f'timm-lipschitz train --recipe {shlex.quote(str(out / "recipe.yaml"))} --output-dir {target}'
                    + (' --resume' if commands else ''))
    return commands


def reproduce_command(out: Path) -> str:
    """:func:`reproduce_commands` as one shell line (joined by ``&&``)."""
    return ' && '.join(reproduce_commands(out))


@torch.no_grad()
def evaluate_clean(model, loader, accelerator, normalizer) -> float:
    """Top-1 accuracy (%) on clean images, gathered across processes."""
    correct = total = 0
    model = for_evaluation(unwrap_model(model))
    with eval_mode(model):
        for images, labels in loader:
            logits = model(normalizer(model, images))
            hits = accelerator.gather_for_metrics((logits.argmax(1) == labels).float())
            correct += hits.sum().item()
            total += hits.numel()
    return 100.0 * correct / max(total, 1)


def evaluate_epoch(run) -> Optional[float]:
    """The periodic clean-accuracy evaluation (``eval.every_epochs``, and at the last epoch), logged and kept in the
    run's history; None when it is not due."""
    loop, every = run.loop, run.recipe['eval']['every_epochs']
    if not every or not (loop.state.epoch % every == 0 or loop.done):
        return None
    acc = evaluate_clean(run.model, run.test_loader, run.accelerator, run.objective.normalizer)
    run.accelerator.log({'eval/clean_acc': acc, 'eval/epoch': loop.state.epoch}, step=loop.state.global_step)
    run.history.append({'epoch': loop.state.epoch, 'step': loop.state.global_step, 'clean_acc': acc,
                        'weights': 'trained (not EMA)' if run.ema is not None else 'trained'})
    loop.write(f'epoch {loop.state.epoch}: step {loop.state.global_step}/{loop.total_steps}, clean test acc '
               f'{acc:.2f}%')
    return acc


def _final_robustness(run, model, progress: bool) -> Optional[Dict[str, Any]]:
    """The end-of-run noise sweep (``eval.at_end``) on the run's evaluation images."""
    if not run.recipe['eval']['at_end']:
        return None
    e = run.recipe['eval']
    result = noise_sweep(for_evaluation(unwrap_model(model)), run.eval_ds, e['sigmas'], e['repeats'], e['seed'], clip=e['clip'],
                         batch_size=e['batch_size'], accelerator=run.accelerator, progress=progress,
                         mean=run.objective.normalizer.mean, std=run.objective.normalizer.std).to_dict()
    return {**result, 'images': subset_record(run.eval_ds)}


def finish_run(run, extent: Dict[str, Any], command: Optional[str], progress: bool) -> Dict[str, Any]:
    """Score the saved weights, write every output (``final.json`` last) and return the summary. A stop signal
    between these phases stops the run at its saved final step (exit 75); ``--resume`` then writes the outputs."""
    try:
        return _finish(run, extent, command, progress)
    finally:
        run.loop.close()


def _finish(run, extent: Dict[str, Any], command: Optional[str], progress: bool) -> Dict[str, Any]:
    accelerator, recipe, out = run.accelerator, run.recipe, run.out
    final_model = run.ema.module if run.ema is not None else run.model
    commands = [command] if command else reproduce_commands(out)
    run.loop.stop_if_signalled()
    clean_acc = run.history[-1]['clean_acc'] if run.history and run.ema is None else \
        evaluate_clean(final_model, run.test_loader, accelerator, run.objective.normalizer)
    run.loop.stop_if_signalled()
    robustness = _final_robustness(run, final_model, progress)
    run.loop.stop_if_signalled()
    summary = {
        'name': recipe['name'], 'output_dir': str(out), **extent,
        'clean_accuracy': clean_acc, 'weights': 'EMA' if run.ema is not None else 'trained', 'history': run.history,
        'robustness': robustness['summary'] if robustness else None,
        'num_processes': accelerator.num_processes, 'threads': torch.get_num_threads(),
        'distributed_type': accelerator.distributed_type.value,
        'objective': run.objective.loss_name, 'hparams': run.objective.hparams(), 'dataset': run.dataset,
        'train_images': run.train_images, 'test_images': len(run.eval_ds), 'test_subset': subset_record(run.eval_ds),
        'command': ' && '.join(commands), 'commands': commands,
    }
    if accelerator.is_main_process:
        try:
            write_outputs(out, unwrap_model(final_model), recipe, run.objective, run.dataset, robustness, summary)
        except OSError as e:  # a full disk: the final state is saved, --resume writes the outputs again
            weights = sum(t.numel() * t.element_size() for t in final_model.state_dict().values())
            raise StateSaveError(space_message(out, out, weights + 2 ** 20, e, 'the checkpoint files')) from e
        print_summary(summary, robustness)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def write_outputs(out: Path, model, recipe, objective, dataset: str, robustness, summary) -> None:
    """The plot and tables of the noise sweep, the checkpoint folder files (weights, config, card), then final.json."""
    plot = None
    if robustness:
        plot_sweeps({recipe['name']: robustness}, out / 'robustness.png',
                    title=f'{recipe["model"]["name"]} on {dataset}: accuracy vs noise',
                    chance=100.0 / model.num_classes if getattr(model, 'num_classes', 0) else None)
        plot = 'robustness.png'
        atomic_write_text(out / 'robustness.md', summary_table({recipe['name']: robustness}) + '\n\n' +
                          sweep_table({recipe['name']: robustness}) + '\n')
    save_pretrained(model, out, tag=make_tag(objective.loss_name, objective.hparams(), dataset), dataset=dataset,
                    objective=objective.loss_name, hparams=objective.hparams(), recipe=recipe,
                    robustness=robustness, command=summary['command'], plot=plot)
    atomic_write_json(out / FINAL_NAME, summary)  # last: the finished marker


def print_summary(summary: Dict[str, Any], robustness: Optional[Dict[str, Any]]) -> None:
    """The closing lines: speed, clean accuracy, a tenth of the noise grid, where the outputs are."""
    covers = f" ({summary['time_covers']})" if summary.get('time_covers') else ''
    print(f"\n== {summary['name']}: {summary['steps']} steps in {summary['train_time_s']:.1f}s "
          f"({summary['images_per_s']:.0f} images/s{covers}), clean test accuracy {summary['clean_accuracy']:.2f}%")
    if robustness:
        grid = robustness['sigmas']
        shown = [s for i, s in enumerate(grid) if i % max(1, len(grid) // 10) == 0 or s == grid[-1]]
        print('\nNoise robustness (test accuracy %, Gaussian noise in [0,1] pixel space):')
        print(sweep_table({summary['name']: robustness}, shown))
        s = robustness['summary']
        print('summary: ' + ', '.join(f'{k} {v:.2f}' for k, v in s.items() if v is not None))
    print(f"outputs in {summary['output_dir']}")
