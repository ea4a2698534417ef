"""Everything a training run is built from, before its first step: checks of what the recipe asks of this machine,
the data, the model (with its ``pretrained_cfg`` describing the trained model), the objective, optimizer,
scheduler, EMA, loaders and the Accelerator; :func:`prepare_run` puts them together as one :class:`PreparedRun`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .._lazy import load_all
from ..data import (DeviceLoader, check_labels, create_dataset, split_fingerprint, standard_loader, timm_crop_pct,
                    train_transform)
from ..errors import UsageError
from ..fileio import atomic_write_text
from ..losses import create_loss
from ..modes import eval_mode
from ..normalization import per_channel, unwrap_model
from ..recipes import RecipeError
from ..robustness.subsets import evaluation_subset
from ..runs import StateSaveError, check_same_data, space_message
from ..seeding import stream_seed
from .loop import TrainingLoop
from .outputs import METRICS_NAME, JsonlTracker, tracker_config

__all__ = ['PreparedRun', 'prepare_run', 'check_runtime', 'has_accelerator', 'default_input_size', 'build_data',
           'data_mean_std', 'resolve_normalization', 'build_model', 'apply_model_options', 'compile_step',
           'build_objective', 'build_optimizer', 'build_scheduler', 'build_train_loader', 'eval_subset',
           'make_accelerator', 'requested_processes', 'warn_single_process_launch']


# ---- checks before any work ----------------------------------------------------------------------------------------
def has_accelerator() -> bool:
    """A CUDA, MPS or XPU device is there (else Accelerate runs on the CPU, also under torchrun: MULTI_CPU)."""
    mps = getattr(torch.backends, 'mps', None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or \
        bool(getattr(torch, 'xpu', None) and torch.xpu.is_available())


def check_runtime(recipe: Dict[str, Any]) -> None:
    """What the recipe asks of this machine and of the model, checked before any data is read: fp16 and
    synchronized BatchNorm need a CUDA GPU, ``model.kwargs`` must be arguments the model accepts, and
    ``model.checkpoint`` must exist."""
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


def default_input_size(model_name: str) -> Tuple[int, int, int]:
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or cfg.input_size is None:
        raise UsageError(f'model {model_name!r} has no default input size; set data.input_size in the recipe.')
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


def build_model(recipe: Dict[str, Any], num_classes: int, input_size: Sequence[int], class_names: List[str],
                native_size: Optional[Sequence[int]] = None):
    """``timm.create_model`` with the data's class count and channels; ``model.checkpoint`` loads a local weights file
    through timm (``pretrained_cfg_overlay=dict(file=...)``), which replaces a classifier of another class count and
    adapts the first conv to other channel counts. The ``pretrained_cfg`` then describes the trained model: input and
    pool size, class count and names, the normalization, and (from the data's ``native_size``) the ``crop_pct`` with
    which timm's own eval transform reproduces the training inputs."""
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
    if native_size is not None:
        cfg['crop_pct'] = timm_crop_pct(native_size, input_size)
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
    with eval_mode(model):
        out = model.forward_features(torch.zeros(1, *input_size))
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
    """The recipe's objective from the loss factory, its noise seeded from the run's ``objective_noise`` stream."""
    loss = dict(recipe['loss'])
    return create_loss(loss.pop('name'), seed=stream_seed('objective_noise', recipe['seed']), **loss)


def build_optimizer(recipe: Dict[str, Any], model):
    """timm's optimizer factory with the recipe's settings (``sgd`` is the paper's plain momentum SGD)."""
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
    transform = train_transform(d['augmentation'], input_size, seed=seed)
    inner = train_ds.dataset if isinstance(train_ds, torch.utils.data.Subset) else train_ds  # a train_fraction subset
    inner.transform = transform
    # the sampler passes each epoch on to the keyed transform, which reaches the workers when they start: started
    # anew each epoch
    return standard_loader(train_ds, micro_batch, shuffle=True, seed=seed, drop_last=True,
                           num_workers=d['num_workers'], persistent_workers=transform is None,
                           on_epoch=getattr(transform, 'set_epoch', None))


def eval_subset(test_ds, max_images: Optional[int], seed: int = 0):
    """The test images the run evaluates: all, or ``eval.max_images`` of them, a prefix of the split's stratified
    evaluation order (:mod:`timm_lipschitz.robustness.subsets`), as ``timm-lipschitz eval --max-images`` takes."""
    return evaluation_subset(test_ds, max_images, seed)


def requested_processes(cmdline: Sequence[str]) -> Optional[int]:
    """The process count an ``accelerate launch`` command line asks for (``--num_processes N``), else None."""
    args = list(cmdline)
    if not any(Path(a).name == 'accelerate' for a in args[:3]) or 'launch' not in args:
        return None
    for i, a in enumerate(args):
        if a.startswith('--num_processes=') or a.startswith('--num-processes='):
            return int(a.split('=', 1)[1])
        if a in ('--num_processes', '--num-processes') and i + 1 < len(args):
            return int(args[i + 1])
    return None


def warn_single_process_launch(accelerator) -> Optional[str]:
    """``accelerate launch --num_processes 2`` without GPUs starts one process (Accelerate has no multi-CPU launch
    of its own there): say so, and point to torchrun, which starts a real 2-process gloo run."""
    if accelerator.num_processes != 1 or has_accelerator():
        return None
    try:
        cmdline = Path(f'/proc/{os.getppid()}/cmdline').read_bytes().decode(errors='replace').split('\0')
    except OSError:
        return None
    asked = requested_processes(cmdline)
    if not asked or asked < 2:
        return None
    message = (f'warning: accelerate launch asked for {asked} processes, but without GPUs it starts one: this run '
               f'trains in 1 process. For a real {asked}-process CPU run use torchrun --nproc_per_node {asked} -m '
               f'timm_lipschitz.train ...')
    print(message, flush=True)
    return message


def cpu_threads(setting: Any, local_processes: int, environ: Optional[Dict[str, str]] = None,
                cpus: Optional[int] = None) -> Optional[int]:
    """The torch thread count for the recipe's ``threads`` (None: leave torch's own).

    ``'auto'`` shares the CPUs this process may use among the processes of this machine (torch's default gives
    every process all of them, so two torchrun processes on 2 cores would run 4 threads), and leaves an explicit
    ``OMP_NUM_THREADS`` alone. On a machine other jobs load, fewer threads than cores is faster: set ``threads: 1``.
    """
    environ = os.environ if environ is None else environ
    if setting != 'auto':
        return int(setting)
    if environ.get('OMP_NUM_THREADS'):
        return None
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, cpus // max(1, local_processes))


def apply_threads(recipe: Dict[str, Any], accelerator) -> int:
    """Set torch's intra-op threads from the recipe (CPU runs; a GPU run's CPU side gets the same rule)."""
    local = int(os.environ.get('LOCAL_WORLD_SIZE', accelerator.num_processes))
    n = cpu_threads(recipe.get('threads', 'auto'), local)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


def make_accelerator(recipe: Dict[str, Any], out: Path):
    """A fresh Accelerator for this run: mixed precision, accumulation and trackers from the recipe."""
    # the function may run several times in one process (tests, sweeps): no state of an earlier run may leak in,
    # e.g. a data loader left "at its end" would make every micro-batch a sync step and silently skip accumulation
    AcceleratorState._reset_state()
    GradientState._reset_state()
    trackers: List[Any] = [JsonlTracker(out / METRICS_NAME)] + list(recipe['log_with'])
    return Accelerator(
        cpu=not has_accelerator(),  # lets torchrun/mpirun start a real MULTI_CPU (gloo) run without GPUs
        mixed_precision=recipe['precision'],
        gradient_accumulation_steps=recipe['gradient_accumulation_steps'],
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / 'tensorboard')),
    )


# ---- the prepared run ----------------------------------------------------------------------------------------------
@dataclass
class PreparedRun:
    """What the training loop and the end of the run need: built, prepared by Accelerate, resumed if asked."""
    recipe: Dict[str, Any]
    out: Path
    accelerator: Any
    model: Any
    objective: Any
    step_loss: Any        # the objective, or its compiled step (``compile: step``)
    optimizer: Any
    scheduler: Any
    ema: Any
    loop: TrainingLoop
    test_loader: Any
    eval_ds: Any
    dataset: str
    train_images: int
    history: List[Dict[str, Any]] = field(default_factory=list)

    def after_optimizer_step(self) -> None:
        """The scheduler and the EMA follow every optimizer step."""
        step = self.loop.state.global_step
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=step)
        if self.ema is not None:
            self.ema.update(unwrap_model(self.model), step=step)


def _data_and_model(recipe: Dict[str, Any], out: Path, accelerator, saved: Optional[Dict[str, Any]]):
    """The splits and the model; fixes the run's normalization in the recipe and writes ``recipe.yaml``."""
    input_size = recipe['data']['input_size'] or default_input_size(recipe['model']['name'])
    train_ds, test_ds, info = build_data(recipe, input_size)
    check_same_data(out, split_fingerprint(train_ds), recipe['data']['root'], accelerator.is_main_process)
    resolve_normalization(recipe, train_ds, saved)
    if accelerator.is_main_process:
        try:
            atomic_write_text(out / 'recipe.yaml', yaml.safe_dump(recipe, sort_keys=False))
        except OSError as e:  # read-only or full: the message of a failed state save
            raise StateSaveError(space_message(out, out, 2 ** 16, e, 'the resolved recipe')) from e
    num_classes = recipe['model']['kwargs'].get('num_classes', info.num_classes)
    check_labels(train_ds.labels if hasattr(train_ds, 'labels') else torch.tensor([]), num_classes,
                 f'{info.name}/train')
    model = apply_model_options(recipe, build_model(recipe, num_classes, input_size, info.class_names,
                                                           info.native_size))
    return train_ds, test_ds, info, input_size, model


def _loaders(recipe: Dict[str, Any], accelerator, train_ds, test_ds, input_size):
    """The training loader (global batch split over processes and accumulation steps) and the test loader."""
    world, accum = accelerator.num_processes, recipe['gradient_accumulation_steps']
    if recipe['batch_size'] % (world * accum):
        raise RecipeError(f'batch_size={recipe["batch_size"]} must be divisible by num_processes x '
                          f'gradient_accumulation_steps = {world} x {accum}.')
    train_loader = build_train_loader(recipe, train_ds, recipe['batch_size'] // (world * accum), input_size,
                                      accelerator)
    if len(train_loader) < accum:
        raise RecipeError(f'the training split has {len(train_ds)} images: too few for one step of global '
                          f'batch {recipe["batch_size"]}.')
    eval_ds = eval_subset(test_ds, recipe['eval']['max_images'], recipe['eval']['seed'])
    return train_loader, eval_ds, torch.utils.data.DataLoader(eval_ds, batch_size=recipe['data']['eval_batch_size'])


def _accelerate(recipe: Dict[str, Any], accelerator, model, optimizer, train_loader, test_loader):
    """``accelerator.prepare`` (the fast device loader is already on the device and sharded by itself)."""
    if isinstance(train_loader, DeviceLoader):
        model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
    else:
        model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader,
                                                                          test_loader)
    return model, optimizer, train_loader, test_loader


def prepare_run(recipe: Dict[str, Any], accelerator, folder: Dict[str, Any], resume: bool,
                progress: bool = True, stop_at_step: Optional[int] = None) -> PreparedRun:
    """Build every part of the run in its one order (data, model, objective, optimizer, compile, Accelerate,
    scheduler, EMA, loop), register what the training state saves, and resume when asked."""
    out = Path(recipe['output_dir'])
    train_ds, test_ds, info, input_size, model = _data_and_model(recipe, out, accelerator, folder['saved'])
    objective = build_objective(recipe)
    objective.set_shard(accelerator.num_processes, accelerator.process_index)
    train_loader, eval_ds, test_loader = _loaders(recipe, accelerator, train_ds, test_ds, input_size)
    optimizer = build_optimizer(recipe, model)
    if recipe['compile']:
        model = torch.compile(model, mode=recipe['compile_mode'])
    step_loss = compile_step(objective, recipe['compile_mode']) if recipe['compile'] == 'step' else objective
    model, optimizer, train_loader, test_loader = _accelerate(recipe, accelerator, model, optimizer, train_loader,
                                                              test_loader)
    steps_per_epoch = len(train_loader) // recipe['gradient_accumulation_steps']
    total_steps = recipe['steps'] or recipe['epochs'] * steps_per_epoch
    scheduler = build_scheduler(recipe, optimizer, math.ceil(total_steps / steps_per_epoch), steps_per_epoch)
    ema = None
    if recipe['ema']['enabled']:
        ema = ModelEmaV3(unwrap_model(model), decay=recipe['ema']['decay'])
        accelerator.register_for_checkpointing(ema)
    loop = TrainingLoop(accelerator, recipe, out, train_loader, total_steps, progress, stop_at_step)
    accelerator.register_for_checkpointing(loop.state)
    accelerator.register_for_checkpointing(objective)
    accelerator.init_trackers('tensorboard', config=tracker_config(recipe))
    if folder['allowed']:
        accelerator.log({'event/resume_recipe_changes': ', '.join(folder['allowed'])}, step=None)
    if resume:
        loop.resume()
    if scheduler is not None:
        scheduler.step_update(num_updates=loop.state.global_step)
    return PreparedRun(recipe, out, accelerator, model, objective, step_loss, optimizer, scheduler, ema, loop,
                       test_loader, eval_ds, info.name, len(train_ds))
