"""The Accelerate training function (``python -m timm_lipschitz.train`` / ``accelerate launch -m ...`` run it from a
recipe: :mod:`.__main__`).

One readable function in the spirit of Accelerate's ``complete_cv_example.py``: the recipe picks a timm model,
a dataset from :mod:`timm_lipschitz.data` and an objective from the loss factory; Accelerate handles devices,
mixed precision, DDP, gradient accumulation, trackers and checkpoint state; timm supplies the optimizer,
scheduler and EMA. The trainer never special-cases an objective; the loop's bookkeeping (counters, logging,
divergence guard, state saves, resuming, stop signals) is :class:`timm_lipschitz.loop.TrainingLoop`, and the run
folder's rules are :mod:`timm_lipschitz.runs`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from accelerate.tracking import GeneralTracker

from .._lazy import load_all
from ..data import DeviceLoader, check_labels, create_dataset, standard_loader, train_transform
from ..fileio import atomic_write_json, atomic_write_text
from ..losses import create_loss
from ..normalization import per_channel, unwrap_model
from ..recipes import RecipeError, flatten, resolve_recipe
from ..runs import (STOPPED_NAME, RunClaim, RunFolderError, StateSaveError, check_new_run, check_resume,
                   latest_state, read_metrics, run_status, space_message)
from ..seeding import stream_seed
from .loop import (EXIT_PREEMPTED, DivergenceGuard, Preempted, TrainingDiverged, TrainingLoop, TrainState,
                   optimizer_stepper, step_target, window_add as _window_add, window_means as _window_means)

__all__ = ['train', 'TrainingDiverged', 'Preempted', 'latest_state', 'JsonlTracker', 'evaluate_clean',
           'check_runtime', 'build_model', 'compile_step', 'build_data', 'data_mean_std', 'reproduce_command',
           'EXIT_PREEMPTED',
           'TrainState', 'DivergenceGuard', 'optimizer_stepper', 'step_target']
_ = (_window_add, _window_means)  # re-exported names of 0.1.0 (tests and scripts import them from here)


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
            f.write(json.dumps(row) + '\n')


def _scalar(v: Any) -> Any:
    return v.item() if hasattr(v, 'item') else v


def _hparams(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """The recipe's dotted leaves as TensorBoard hparams (lists, None and empty mappings as strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(recipe).items()}


# ---- checks before any work ----------------------------------------------------------------------------------------
def _has_accelerator() -> bool:
    mps = getattr(torch.backends, 'mps', None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or \
        bool(getattr(torch, 'xpu', None) and torch.xpu.is_available())


def check_runtime(recipe: Dict[str, Any]) -> None:
    """What the recipe asks of this machine and of the model, checked before any data is read: fp16 and
    synchronized BatchNorm need a CUDA GPU, ``model.kwargs`` must be arguments the model accepts, and
    ``model.checkpoint`` must exist."""
    import timm
    if recipe['precision'] == 'fp16' and not torch.cuda.is_available():
        raise RecipeError("precision='fp16' needs a CUDA GPU (on this machine Accelerate would train in fp32 "
                          "without a word); use precision: bf16 (CPU autocast) or 'no'.")
    if recipe['compile_mode'] == 'reduce-overhead' and not torch.cuda.is_available():
        raise RecipeError("compile_mode='reduce-overhead' captures CUDA graphs and needs a CUDA GPU; on this machine "
                          "use compile_mode: default (or compile: false).")
    if recipe['sync_batchnorm'] and not torch.cuda.is_available():
        raise RecipeError('sync_batchnorm=True needs CUDA GPUs: torch.nn.SyncBatchNorm runs on GPUs only. On CPU '
                          'each process normalizes with its own batch statistics; set sync_batchnorm: false.')
    m = recipe['model']
    if not timm.is_model(m['name']):
        raise RecipeError(f'model.name={m["name"]!r} is not a timm model (import the package that registers it, '
                          f'or see timm.list_models()).')
    if m['checkpoint'] is not None and not Path(m['checkpoint']).expanduser().is_file():
        raise RecipeError(f'model.checkpoint={m["checkpoint"]!r}: no such file.')
    try:
        with torch.device('meta'):
            timm.create_model(m['name'], pretrained=False, **m['kwargs'])
    except TypeError as e:
        raise RecipeError(f'model.kwargs={m["kwargs"]!r} are not all arguments of {m["name"]}: {e}') from None


# ---- building blocks ---------------------------------------------------------------------------------------------
def _default_input_size(model_name: str) -> Tuple[int, int, int]:
    import timm
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or cfg.input_size is None:
        raise ValueError(f'model {model_name!r} has no default input size; set data.input_size in the recipe.')
    return tuple(cfg.input_size)


def build_data(recipe: Dict[str, Any], input_size: Sequence[int]):
    """Train/test datasets per the recipe (the train fraction is the run's ``train_fraction`` stream)."""
    d = recipe['data']
    common = dict(root=d['root'], download=d['download'], input_size=input_size, **d['kwargs'])
    train_ds, info = create_dataset(d['name'], 'train', **common)
    test_ds, _ = create_dataset(d['name'], 'test', **common)
    frac = d['train_fraction']
    if frac < 1:
        g = torch.Generator().manual_seed(stream_seed('train_fraction', recipe['seed']))
        keep = torch.randperm(len(train_ds), generator=g)[:max(1, round(frac * len(train_ds)))].sort().values
        train_ds = train_ds.subset(keep) if hasattr(train_ds, 'subset') else torch.utils.data.Subset(train_ds, keep)
    return train_ds, test_ds, info


def data_mean_std(dataset, max_images: int = 2000) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of a split's [0,1] pixels (all of an in-memory split; else ``max_images`` spread
    evenly over it): the normalization of a run that trains from scratch and names none."""
    if hasattr(dataset, 'images'):
        x = dataset.images.double().div_(255) if dataset.images.dtype == torch.uint8 else dataset.images.double()
    else:
        step = max(1, len(dataset) // max_images)
        x = torch.stack([dataset[i][0] for i in range(0, len(dataset), step)[:max_images]]).double()
    x = x.transpose(0, 1).flatten(1)
    return tuple(round(v, 4) for v in x.mean(1).tolist()), tuple(round(v, 4) for v in x.std(1).tolist())


def resolve_normalization(recipe: Dict[str, Any], train_ds, saved: Optional[Dict[str, Any]]) -> None:
    """Fix the run's mean/std once, in the recipe (so ``recipe.yaml`` records them): the recipe's own; else, on a
    resume, the saved run's (a run of 0.1.0 recorded none and used the model's defaults); else the model's defaults
    for pretrained weights (they expect them); else the training data's own statistics."""
    m = recipe['model']
    if m.get('mean') is not None:
        return
    if saved is not None:
        if (saved.get('model') or {}).get('mean') is not None:
            m['mean'], m['std'] = saved['model']['mean'], saved['model']['std']
        return
    if m['pretrained'] or m['checkpoint']:
        return
    mean, std = data_mean_std(train_ds)
    m['mean'], m['std'] = list(mean), list(std)


def build_model(recipe: Dict[str, Any], num_classes: int, input_size: Sequence[int], class_names: List[str]):
    """``timm.create_model`` with the data's class count and channels; ``model.checkpoint`` loads a local weights file
    through timm (``pretrained_cfg_overlay=dict(file=...)``), which replaces a classifier of another class count and
    adapts the first conv to other channel counts. The ``pretrained_cfg`` then describes the trained model: input and
    pool size, class count and names, and the normalization."""
    import timm
    m = recipe['model']
    c = int(input_size[0])
    pretrained = m['pretrained'] or bool(m['checkpoint'])
    # the input size goes in at creation (models with a fixed input size, like mnist_convnet, size their layers by
    # it); class count and names only after timm has loaded the weights (it compares them with the file's)
    overlay: Dict[str, Any] = {'input_size': tuple(int(s) for s in input_size)}
    if m['checkpoint']:
        overlay['file'] = str(Path(m['checkpoint']).expanduser())
    model = timm.create_model(m['name'], pretrained=pretrained, pretrained_cfg_overlay=overlay,
                              **{'num_classes': num_classes, 'in_chans': c, **m['kwargs']})
    cfg = dict(model.pretrained_cfg)
    mean = m.get('mean') or (per_channel(tuple(cfg['mean']), c, 'mean') if cfg.get('mean') else None)
    std = m.get('std') or (per_channel(tuple(cfg['std']), c, 'std') if cfg.get('std') else None)
    cfg.update(input_size=tuple(int(s) for s in input_size), num_classes=num_classes, label_names=tuple(class_names))
    cfg.pop('file', None)
    if mean is not None:
        cfg.update(mean=tuple(mean), std=tuple(std))
    pool = _feature_map_size(model, input_size)
    if pool is not None:
        cfg['pool_size'] = pool
    model.pretrained_cfg = model.default_cfg = cfg  # timm keeps default_cfg as an alias
    return model


@torch.no_grad()
def _feature_map_size(model, input_size: Sequence[int]) -> Optional[Tuple[int, int]]:
    """The spatial size of ``forward_features`` at ``input_size`` (timm's ``pool_size``), from one zero image."""
    if not hasattr(model, 'forward_features'):
        return None
    was = model.training
    model.eval()
    try:
        out = model.forward_features(torch.zeros(1, *input_size))
    finally:
        model.train(was)
    return tuple(int(s) for s in out.shape[-2:]) if out.ndim == 4 else None


def apply_model_options(recipe: Dict[str, Any], model):
    """What the recipe asks of the model before ``accelerator.prepare``: torch's ``SyncBatchNorm`` (every process
    then normalizes with the statistics of the global batch) and the channels_last memory layout."""
    if recipe['sync_batchnorm']:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if recipe['channels_last']:
        model = model.to(memory_format=torch.channels_last)
    return model


def compile_step(objective, mode: str = 'default'):
    """The objective's whole computation (noise, normalization, forward passes, k(x), the loss) under
    ``torch.compile`` (recipe ``compile: step``). The noise is drawn eagerly (``torch.compiler.disable``): a
    generator-driven ``randn`` breaks dynamo graphs and cannot be replayed inside a CUDA graph, and drawn eagerly it
    is bit-identical to an eager run for the same generator state. The objectives' deferred imports
    (:mod:`timm_lipschitz._lazy`) are resolved first, so no import runs inside the compiled region."""
    load_all()
    objective.noise_like = torch.compiler.disable(objective.noise_like)
    return torch.compile(objective.__call__, mode=mode)


def build_objective(recipe: Dict[str, Any]):
    loss = dict(recipe['loss'])
    return create_loss(loss.pop('name'), seed=stream_seed('objective_noise', recipe['seed']), **loss)


def build_optimizer(recipe: Dict[str, Any], model):
    from timm.optim import create_optimizer_v2
    o = dict(recipe['optimizer'])
    name = o.pop('name')
    if name == 'sgd':  # timm's 'sgd' means Nesterov; the paper's (He et al.'s) SGD is plain momentum
        name = 'nesterov' if o.pop('nesterov', False) else 'momentum'
    o.pop('nesterov', None)
    if 'betas' in o:
        o['betas'] = tuple(o['betas'])
    return create_optimizer_v2(model, opt=name, **o)


def build_scheduler(recipe: Dict[str, Any], optimizer, num_epochs: int, steps_per_epoch: int):
    """timm scheduler stepped per optimizer update (milestones and warmup in epochs)."""
    from timm.scheduler import create_scheduler_v2
    s = recipe['schedule']
    if s['name'] == 'none':
        return None
    milestones = list(s.get('milestones') or [])
    if s['name'] == 'multistep' and milestones and max(milestones) >= num_epochs:
        raise RecipeError(f'schedule.milestones={milestones} is not allowed; the run has {num_epochs} epochs, so '
                          f'every milestone must be below {num_epochs} or it never decays the lr.')
    kwargs = dict(sched=s['name'], num_epochs=num_epochs, decay_rate=s.get('decay_rate', 0.1),
                  warmup_epochs=s.get('warmup_epochs', 0), warmup_lr=s.get('warmup_lr', 1e-5),
                  min_lr=s.get('min_lr', 0.0), step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    if s['name'] == 'multistep':
        kwargs['decay_milestones'] = milestones or [num_epochs + 1]
    scheduler, _ = create_scheduler_v2(optimizer, **kwargs)
    return scheduler


def build_train_loader(recipe: Dict[str, Any], train_ds, micro_batch: int, input_size: Sequence[int], accelerator):
    """The fast device-resident loader, or a DataLoader (sharded by Accelerate), in the run's one sample order."""
    d, seed = recipe['data'], recipe['seed']
    if d['fast_path']:
        if not hasattr(train_ds, 'images'):
            train_ds = train_ds.materialize()
        return DeviceLoader(train_ds, micro_batch, shuffle=True, seed=seed, augmentation=d['augmentation'],
                            device=accelerator.device, drop_last=True, num_processes=accelerator.num_processes,
                            process_index=accelerator.process_index)
    train_ds.transform = train_transform(d['augmentation'], input_size)
    return standard_loader(train_ds, micro_batch, shuffle=True, seed=seed, drop_last=True,
                           num_workers=d['num_workers'])


@torch.no_grad()
def evaluate_clean(model, loader, accelerator, normalizer) -> float:
    """Top-1 accuracy (%) on clean images, gathered across processes."""
    was = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(normalizer(model, images))
        hits = accelerator.gather_for_metrics((logits.argmax(1) == labels).float())
        correct += hits.sum().item()
        total += hits.numel()
    model.train(was)
    return 100.0 * correct / max(total, 1)


def _eval_subset(test_ds, max_images: Optional[int]):
    if max_images is None or max_images >= len(test_ds):
        return test_ds
    return torch.utils.data.Subset(test_ds, list(range(max_images)))


def _make_accelerator(recipe: Dict[str, Any], out: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration
    # the function may run several times in one process (tests, sweeps): no state of an earlier run may leak in,
    # e.g. a data loader left "at its end" would make every micro-batch a sync step and silently skip accumulation
    AcceleratorState._reset_state()
    GradientState._reset_state()
    trackers: List[Any] = [JsonlTracker(out / 'metrics.jsonl')] + list(recipe['log_with'])
    return Accelerator(
        cpu=not _has_accelerator(),  # lets torchrun/mpirun start a real MULTI_CPU (gloo) run without GPUs
        mixed_precision=recipe['precision'],
        gradient_accumulation_steps=recipe['gradient_accumulation_steps'],
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / 'tensorboard')),
    )


@contextlib.contextmanager
def open_run_folder(accelerator, out: Path, recipe: Dict[str, Any], resume: bool) -> Iterator[Dict[str, Any]]:
    """Claim the run folder for this run and apply the run-folder rules of :mod:`.runs` (on the main process; its
    answer, or its error, reaches every process); yields what resuming needs, releases the claim at the end."""
    from accelerate.utils import broadcast_object_list
    claim = RunClaim(out)
    answer: List[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            answer = [_apply_run_rules(out, recipe, resume, claim), None]
        except (RunFolderError, RecipeError, OSError) as e:
            answer = [None, e]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
    try:
        if answer[1] is not None:
            raise answer[1]
        yield answer[0]
    finally:
        claim.release()


def _apply_run_rules(out: Path, recipe: Dict[str, Any], resume: bool, claim: RunClaim) -> Dict[str, Any]:
    claim.acquire()
    if claim.notice:
        print(claim.notice, flush=True)
    saved = None
    allowed: List[str] = []
    if resume and run_status(out):
        allowed = check_resume(out, recipe)
        saved = yaml.safe_load((out / 'recipe.yaml').read_text()) if (out / 'recipe.yaml').is_file() else {}
        _, broken = read_metrics(out / 'metrics.jsonl', repair=True)
        if broken:
            print(f'warning: {out / "metrics.jsonl"}: dropped {broken} broken line(s) (a kill mid-write).',
                  flush=True)
    elif not resume:
        check_new_run(out)
    for stale in ('final.json', 'diverged.json', STOPPED_NAME):
        (out / stale).unlink(missing_ok=True)
    return {'saved': saved, 'allowed': allowed}


def reproduce_command(out: Path) -> str:
    """The command that trains the run again from its resolved recipe (which the folder keeps)."""
    import shlex
    return (f'timm-lipschitz train --recipe {shlex.quote(str(out / "recipe.yaml"))} '
            f'--output-dir {shlex.quote(str(out) + "_reproduced")}')


# ---- the training function -----------------------------------------------------------------------------------------
def train(recipe: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = (), resume: bool = False,
          command: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train per ``recipe`` (a path or dict; ``overrides`` are ``key=value``); returns the final summary.

    ``resume=True`` continues from the newest complete state in the run folder, skipping the batches of the
    interrupted epoch that were already trained on. ``command`` overrides the reproduce command recorded in
    ``final.json`` and the model card.
    """
    from accelerate.utils import set_seed

    recipe = resolve_recipe(recipe, overrides)
    check_runtime(recipe)
    out = Path(recipe['output_dir'])
    accelerator = _make_accelerator(recipe, out)
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f'[rank {rank}] num_processes={world} distributed_type={accelerator.distributed_type.value} '
          f'device={accelerator.device} mixed_precision={accelerator.mixed_precision}', flush=True)
    with open_run_folder(accelerator, out, recipe, resume) as folder:
        set_seed(stream_seed('global', recipe['seed']))

        # -- data and model
        input_size = recipe['data']['input_size'] or _default_input_size(recipe['model']['name'])
        train_ds, test_ds, info = build_data(recipe, input_size)
        resolve_normalization(recipe, train_ds, folder['saved'])
        if accelerator.is_main_process:
            atomic_write_text(out / 'recipe.yaml', yaml.safe_dump(recipe, sort_keys=False))
        num_classes = recipe['model']['kwargs'].get('num_classes', info.num_classes)
        check_labels(train_ds.labels if hasattr(train_ds, 'labels') else torch.tensor([]), num_classes,
                     f'{info.name}/train')
        model = apply_model_options(recipe, build_model(recipe, num_classes, input_size, info.class_names))
        objective = build_objective(recipe)
        objective.set_shard(world, rank)

        accum = recipe['gradient_accumulation_steps']
        if recipe['batch_size'] % (world * accum):
            raise RecipeError(f'batch_size={recipe["batch_size"]} must be divisible by num_processes x '
                              f'gradient_accumulation_steps = {world} x {accum}.')
        train_loader = build_train_loader(recipe, train_ds, recipe['batch_size'] // (world * accum), input_size,
                                          accelerator)
        eval_ds = _eval_subset(test_ds, recipe['eval']['max_images'])
        test_loader = torch.utils.data.DataLoader(eval_ds, batch_size=recipe['data']['eval_batch_size'])
        if len(train_loader) < accum:
            raise RecipeError(f'the training split has {len(train_ds)} images: too few for one step of global '
                              f'batch {recipe["batch_size"]}.')

        optimizer = build_optimizer(recipe, model)
        if recipe['compile']:
            model = torch.compile(model, mode=recipe['compile_mode'])
        step_loss = compile_step(objective, recipe['compile_mode']) if recipe['compile'] == 'step' else objective
        if isinstance(train_loader, DeviceLoader):
            model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
        else:
            model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader,
                                                                              test_loader)
        steps_per_epoch = len(train_loader) // accum
        total_steps = recipe['steps'] or recipe['epochs'] * steps_per_epoch
        scheduler = build_scheduler(recipe, optimizer, math.ceil(total_steps / steps_per_epoch), steps_per_epoch)
        ema = None
        if recipe['ema']['enabled']:
            from timm.utils import ModelEmaV3
            ema = ModelEmaV3(unwrap_model(model), decay=recipe['ema']['decay'])
            accelerator.register_for_checkpointing(ema)
        loop = TrainingLoop(accelerator, recipe, out, train_loader, total_steps, progress)
        accelerator.register_for_checkpointing(loop.state)
        accelerator.register_for_checkpointing(objective)

        accelerator.init_trackers('tensorboard', config=_hparams(recipe))
        if folder['allowed']:
            accelerator.log({'event/resume_recipe_changes': ', '.join(folder['allowed'])}, step=None)
        if resume:
            loop.resume()
        if scheduler is not None:
            scheduler.step_update(num_updates=loop.state.global_step)

        # -- the loop
        step_optimizer = optimizer_stepper(accelerator, optimizer)
        history: List[Dict[str, Any]] = []
        clean_acc = None
        loop.start(optimizer)
        model.train()
        for _ in loop.epochs():
            for images, targets in loop.batches():
                with accelerator.accumulate(model):
                    output = step_loss(model, images, targets)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients:
                        if recipe['max_grad_norm']:
                            accelerator.clip_grad_norm_(model.parameters(), recipe['max_grad_norm'])
                        step_optimizer()
                if loop.record(output, images, targets):  # an optimizer step was taken
                    if scheduler is not None:
                        scheduler.step_update(num_updates=loop.state.global_step)
                    if ema is not None:
                        ema.update(unwrap_model(model), step=loop.state.global_step)
                    loop.after_step()
            loop.end_epoch()
            every = recipe['eval']['every_epochs']
            if every and (loop.state.epoch % every == 0 or loop.done):
                clean_acc = evaluate_clean(model, test_loader, accelerator, objective.normalizer)
                accelerator.log({'eval/clean_acc': clean_acc, 'eval/epoch': loop.state.epoch},
                                step=loop.state.global_step)
                history.append({'epoch': loop.state.epoch, 'step': loop.state.global_step, 'clean_acc': clean_acc,
                                'weights': 'trained (not EMA)' if ema is not None else 'trained'})
                loop.write(f'epoch {loop.state.epoch}: step {loop.state.global_step}/{total_steps}, clean test '
                           f'acc {clean_acc:.2f}%')
            loop.after_epoch()
        extent = loop.finish()

        # -- finish: every score from the weights that are saved (the EMA weights when EMA is on)
        final_model = ema.module if ema is not None else model
        if clean_acc is None or ema is not None:
            clean_acc = evaluate_clean(final_model, test_loader, accelerator, objective.normalizer)
        robustness = None
        if recipe['eval']['at_end']:
            from ..robustness import noise_sweep
            e = recipe['eval']
            robustness = noise_sweep(unwrap_model(final_model), eval_ds, e['sigmas'], e['repeats'], e['seed'],
                                     clip=e['clip'], batch_size=e['batch_size'], accelerator=accelerator,
                                     progress=progress, mean=objective.normalizer.mean,
                                     std=objective.normalizer.std).to_dict()
        summary = {
            'name': recipe['name'], 'output_dir': str(out), **extent,
            'clean_accuracy': clean_acc, 'weights': 'EMA' if ema is not None else 'trained', 'history': history,
            'robustness': robustness['summary'] if robustness else None,
            'num_processes': world, 'distributed_type': accelerator.distributed_type.value,
            'objective': objective.loss_name, 'hparams': objective.hparams(), 'dataset': info.name,
            'train_images': len(train_ds), 'test_images': len(eval_ds),
            'command': command or reproduce_command(out),
        }
        if accelerator.is_main_process:
            try:
                _write_outputs(out, unwrap_model(final_model), recipe, objective, info.name, robustness, summary)
            except OSError as e:  # a full disk: the final state is saved, --resume writes the outputs again
                weights = sum(t.numel() * t.element_size() for t in final_model.state_dict().values())
                raise StateSaveError(space_message(out, out, weights + 2 ** 20, e, 'the checkpoint files')) from e
            _print_summary(summary, robustness)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return summary


def _write_outputs(out: Path, model, recipe, objective, dataset: str, robustness, summary) -> None:
    from ..hub import make_tag, save_pretrained
    from ..robustness import plot_sweeps, summary_table, sweep_table
    plot = None
    if robustness:
        plot_sweeps({recipe['name']: robustness}, out / 'robustness.png',
                    title=f'{recipe["model"]["name"]} on {dataset}: accuracy vs noise')
        plot = 'robustness.png'
        atomic_write_text(out / 'robustness.md', summary_table({recipe['name']: robustness}) + '\n\n' +
                          sweep_table({recipe['name']: robustness}) + '\n')
    save_pretrained(model, out, tag=make_tag(objective.loss_name, objective.hparams(), dataset), dataset=dataset,
                    objective=objective.loss_name, hparams=objective.hparams(), recipe=recipe,
                    robustness=robustness, command=summary['command'], plot=plot)
    atomic_write_json(out / 'final.json', summary)  # last: the finished marker


def _print_summary(summary: Dict[str, Any], robustness: Optional[Dict[str, Any]]) -> None:
    from ..robustness import sweep_table
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
