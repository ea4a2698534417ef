"""The Accelerate training function, and ``python -m timm_lipschitz.train`` / ``accelerate launch -m ...``.

One readable function in the spirit of Accelerate's ``complete_cv_example.py``: the recipe picks a timm model,
a dataset from :mod:`timm_lipschitz.data` and an objective from the loss factory; Accelerate handles devices,
mixed precision, DDP, gradient accumulation, trackers and checkpoint state; timm supplies the optimizer,
scheduler and EMA. The trainer never special-cases an objective.

Run folder: ``recipe.yaml`` (resolved), ``metrics.jsonl``, ``tensorboard/``, ``state/step_XXXXXXXX`` (Accelerate
state, renamed into place only when complete), ``model.safetensors`` + ``config.json`` + ``README.md``,
``robustness.json``, ``robustness.md``, ``robustness.png``, and ``final.json`` written last (the finished marker).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import yaml
from accelerate.tracking import GeneralTracker

from .data import (DeviceLoader, check_labels, create_dataset, standard_loader, train_transform)
from .fileio import atomic_write_json, atomic_write_text
from .losses import create_loss
from .normalization import per_channel, unwrap_model
from .recipes import resolve_recipe

__all__ = ['train', 'main', 'build_parser', 'TrainingDiverged', 'latest_state', 'JsonlTracker', 'evaluate_clean']


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good state is kept and named in the message."""


class TrainState:
    """Counters saved with every checkpoint (registered with Accelerate), so ``--resume`` knows where it was."""

    def __init__(self) -> None:
        self.global_step = 0      # optimizer steps taken
        self.epoch = 0            # current epoch
        self.batch_in_epoch = 0   # micro-batches of the current epoch already consumed

    def state_dict(self) -> Dict[str, int]:
        return {'global_step': self.global_step, 'epoch': self.epoch, 'batch_in_epoch': self.batch_in_epoch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.global_step, self.epoch, self.batch_in_epoch = (int(state[k]) for k in
                                                             ('global_step', 'epoch', 'batch_in_epoch'))


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


def _flat(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """Dotted scalars for TensorBoard's hparams (lists and None as strings)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if isinstance(v, dict):
            out.update(_flat(v, key + '.'))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


# ---- state files -------------------------------------------------------------------------------------------------
def latest_state(output_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete state folder (``state/step_XXXXXXXX``; incomplete ones are never renamed into place)."""
    root = Path(output_dir) / 'state'
    states = sorted(p for p in root.glob('step_*') if p.is_dir()) if root.is_dir() else []
    return states[-1] if states else None


def _save_state(accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """Accelerate state into a temporary folder, then renamed into place: a kill mid-save loses nothing."""
    root = output_dir / 'state'
    final = root / f'step_{step:08d}'
    tmp = root / f'.tmp_step_{step:08d}'
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob('step_*') if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ---- building blocks ---------------------------------------------------------------------------------------------
def _default_input_size(model_name: str) -> Tuple[int, int, int]:
    import timm
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or cfg.input_size is None:
        raise ValueError(f'model {model_name!r} has no default input size; set data.input_size in the recipe.')
    return tuple(cfg.input_size)


def build_data(recipe: Dict[str, Any], input_size: Sequence[int]):
    """Train/test datasets per the recipe (train fraction drawn with the run's seed)."""
    d = recipe['data']
    common = dict(root=d['root'], download=d['download'], input_size=input_size, **d['kwargs'])
    train_ds, info = create_dataset(d['name'], 'train', **common)
    test_ds, test_info = create_dataset(d['name'], 'test', **common)
    frac = d['train_fraction']
    if frac < 1:
        g = torch.Generator().manual_seed(recipe['seed'])
        keep = torch.randperm(len(train_ds), generator=g)[:max(1, round(frac * len(train_ds)))].sort().values
        train_ds = train_ds.subset(keep) if hasattr(train_ds, 'subset') else torch.utils.data.Subset(train_ds, keep)
    return train_ds, test_ds, info


def build_model(recipe: Dict[str, Any], num_classes: int, input_size: Sequence[int], class_names: List[str]):
    """``timm.create_model`` with the data's class count, channels and input size recorded in ``pretrained_cfg``."""
    import timm
    m = recipe['model']
    cfg = timm.models.get_pretrained_cfg(m['name'])
    c = int(input_size[0])
    mean = m.get('mean') or (per_channel(tuple(cfg.mean), c, 'mean') if cfg and cfg.mean else None)
    std = m.get('std') or (per_channel(tuple(cfg.std), c, 'std') if cfg and cfg.std else None)
    overlay = {'input_size': tuple(int(s) for s in input_size), 'num_classes': num_classes,
               'label_names': tuple(class_names)}
    if mean is not None:
        overlay.update(mean=tuple(mean), std=tuple(std))
    kwargs = {'num_classes': num_classes, 'in_chans': c, **m['kwargs']}
    return timm.create_model(m['name'], pretrained=m['pretrained'], pretrained_cfg_overlay=overlay, **kwargs)


def build_objective(recipe: Dict[str, Any]):
    loss = dict(recipe['loss'])
    return create_loss(loss.pop('name'), seed=recipe['seed'] * 7919 + 17, **loss)


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
    kwargs = dict(sched=s['name'], num_epochs=num_epochs, decay_rate=s.get('decay_rate', 0.1),
                  warmup_epochs=s.get('warmup_epochs', 0), warmup_lr=s.get('warmup_lr', 1e-5),
                  min_lr=s.get('min_lr', 0.0), step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    if s['name'] == 'multistep':
        kwargs['decay_milestones'] = list(s.get('milestones') or [num_epochs + 1])
    scheduler, _ = create_scheduler_v2(optimizer, **kwargs)
    return scheduler


@torch.no_grad()
def evaluate_clean(model, loader, accelerator, normalizer) -> float:
    """Top-1 accuracy (%) on clean images, gathered across processes."""
    was = model.training
    model.eval()
    correct = total = 0
    for images, labels in loader:
        logits = model(normalizer(model, images.float()))
        hits = accelerator.gather_for_metrics((logits.argmax(1) == labels).float())
        correct += hits.sum().item()
        total += hits.numel()
    model.train(was)
    return 100.0 * correct / max(total, 1)


def _eval_subset(test_ds, max_images: Optional[int]):
    if max_images is None or max_images >= len(test_ds):
        return test_ds
    return torch.utils.data.Subset(test_ds, list(range(max_images)))


# ---- the training function -----------------------------------------------------------------------------------------
def train(recipe: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = (), resume: bool = False,
          command: Optional[str] = None, progress: bool = True) -> Dict[str, Any]:
    """Train per ``recipe`` (a path or dict; ``overrides`` are ``key=value``); returns the final summary.

    ``resume=True`` continues from the newest complete state in the run folder, skipping the batches of the
    interrupted epoch that were already trained on.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    recipe = resolve_recipe(recipe, overrides)
    out = Path(recipe['output_dir'])
    AcceleratorState._reset_state()  # the function may run several times in one process (tests, sweeps)
    trackers: List[Any] = [JsonlTracker(out / 'metrics.jsonl')] + list(recipe['log_with'])
    accelerator = Accelerator(
        cpu=not _has_accelerator(),  # lets torchrun/mpirun start a real MULTI_CPU (gloo) run without GPUs
        mixed_precision=recipe['precision'],
        gradient_accumulation_steps=recipe['gradient_accumulation_steps'],
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / 'tensorboard')),
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    print(f'[rank {rank}] num_processes={world} distributed_type={accelerator.distributed_type.value} '
          f'device={accelerator.device} mixed_precision={accelerator.mixed_precision}', flush=True)
    set_seed(recipe['seed'])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ('final.json', 'diverged.json'):
            if (out / stale).exists() and not resume:
                (out / stale).unlink()
        atomic_write_text(out / 'recipe.yaml', yaml.safe_dump(recipe, sort_keys=False))
    accelerator.wait_for_everyone()

    # -- data and model
    model_name = recipe['model']['name']
    input_size = recipe['data']['input_size'] or _default_input_size(model_name)
    train_ds, test_ds, info = build_data(recipe, input_size)
    num_classes = recipe['model']['kwargs'].get('num_classes', info.num_classes)
    check_labels(train_ds.labels if hasattr(train_ds, 'labels') else torch.tensor([]), num_classes,
                 f'{info.name}/train')
    model = build_model(recipe, num_classes, input_size, info.class_names)
    if recipe['channels_last']:
        model = model.to(memory_format=torch.channels_last)
    objective = build_objective(recipe)
    objective.set_shard(world, rank)

    accum = recipe['gradient_accumulation_steps']
    if recipe['batch_size'] % (world * accum):
        raise ValueError(f'batch_size={recipe["batch_size"]} must be divisible by num_processes x '
                         f'gradient_accumulation_steps = {world} x {accum}.')
    micro = recipe['batch_size'] // (world * accum)
    aug = recipe['data']['augmentation']
    seed = recipe['seed']
    if recipe['data']['fast_path']:
        if not hasattr(train_ds, 'images'):
            train_ds = train_ds.materialize()
        train_loader = DeviceLoader(train_ds, micro, shuffle=True, seed=seed, augmentation=aug,
                                    device=accelerator.device, drop_last=True, num_processes=world,
                                    process_index=rank)
        sampler = train_loader
    else:
        train_ds.transform = train_transform(aug, input_size)
        train_loader = standard_loader(train_ds, micro, shuffle=True, seed=seed, drop_last=True,
                                       num_workers=recipe['data']['num_workers'])
        sampler = train_loader.sampler
    eval_ds = _eval_subset(test_ds, recipe['eval']['max_images'])
    test_loader = torch.utils.data.DataLoader(eval_ds, batch_size=recipe['data']['eval_batch_size'])
    if len(train_loader) < accum:
        raise ValueError(f'the training split has {len(train_ds)} images: too few for one step of global batch '
                         f'{recipe["batch_size"]}.')

    optimizer = build_optimizer(recipe, model)
    if recipe['compile']:
        model = torch.compile(model)
    if recipe['data']['fast_path']:
        model, optimizer, test_loader = accelerator.prepare(model, optimizer, test_loader)
    else:
        model, optimizer, train_loader, test_loader = accelerator.prepare(model, optimizer, train_loader,
                                                                          test_loader)
    steps_per_epoch = len(train_loader) // accum
    total_steps = recipe['steps'] or recipe['epochs'] * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = build_scheduler(recipe, optimizer, num_epochs, steps_per_epoch)
    ema = None
    if recipe['ema']['enabled']:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(unwrap_model(model), decay=recipe['ema']['decay'])
        accelerator.register_for_checkpointing(ema)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    accelerator.register_for_checkpointing(objective)

    accelerator.init_trackers('tensorboard', config=_flat(recipe))
    skip = 0
    if resume:
        latest = latest_state(out)
        if latest is None:
            accelerator.print(f'--resume: no saved state in {out / "state"}; starting from scratch.')
        else:
            accelerator.load_state(str(latest))
            skip = state.batch_in_epoch
            accelerator.print(f'resumed from {latest}: step {state.global_step}, epoch {state.epoch}; skipping '
                              f'{skip} batches already seen in this epoch')
            accelerator.log({'event/resumed_step': state.global_step, 'event/skipped_batches': skip},
                            step=state.global_step)
    if scheduler is not None:
        scheduler.step_update(num_updates=state.global_step)

    # -- loop
    every = recipe['checkpoint']['every_steps']
    keep = recipe['checkpoint']['keep']
    log_every = recipe['log_every_steps']
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not (progress and accelerator.is_main_process),
               desc=recipe['name'], dynamic_ncols=True)
    t_start = time.time()
    seen_images = 0
    window: Dict[str, List[Any]] = {}
    window_n = 0
    window_t = time.time()
    window_images = 0
    history: List[Dict[str, Any]] = []
    clean_acc = None
    guard = DivergenceGuard(accelerator.device)
    step_optimizer = optimizer_stepper(accelerator, optimizer)
    save_s = 0.0  # time inside train_time_s spent saving state (reported: it dominates very short epochs)

    def save_state() -> None:
        nonlocal save_s
        t = time.time()
        _save_state(accelerator, out, state.global_step, keep)
        save_s += time.time() - t
    done = state.global_step >= total_steps
    model.train()
    while not done:
        epoch = state.epoch
        sampler.set_epoch(epoch)
        loader = train_loader
        if skip:
            if isinstance(train_loader, DeviceLoader):
                train_loader.skip_batches = skip
            else:
                loader = accelerator.skip_first_batches(train_loader, skip)
        state.batch_in_epoch = skip
        skip = 0
        for images, targets in loader:
            if recipe['channels_last']:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model):
                output = objective(model, images, targets)
                guard.observe(output.loss, state.global_step + 1)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    if recipe['max_grad_norm']:
                        accelerator.clip_grad_norm_(model.parameters(), recipe['max_grad_norm'])
                    step_optimizer()
            state.batch_in_epoch += 1
            n_img = images.shape[0] * world
            seen_images += n_img
            window_images += n_img
            # kept on the device and reduced at the log line: a few small kernels a step, no host sync
            acc = (output.logits.argmax(1) == targets).float().mean()
            for k, v in {'loss': output.loss, 'acc': acc, **output.parts}.items():
                _window_add(window, k, v)
            window_n += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=state.global_step)
            if ema is not None:
                ema.update(unwrap_model(model), step=state.global_step)
            bar.update(1)
            if state.global_step % log_every == 0 or state.global_step == total_steps:
                guard.check(accelerator, state, out)
                elapsed = max(time.time() - window_t, 1e-9)
                logs = {f'train/{k}': v for k, v in _window_means(window, window_n).items()}
                logs['train/lr'] = optimizer.param_groups[0]['lr']
                logs['train/images_per_s'] = window_images / elapsed
                logs['train/epoch'] = epoch
                accelerator.log(logs, step=state.global_step)
                bar.set_postfix({k.split('/')[1]: f'{v:.3g}' for k, v in logs.items() if k != 'train/epoch'},
                                refresh=False)
                window, window_n, window_images, window_t = {}, 0, 0, time.time()
            if every and state.global_step % every == 0 and state.global_step < total_steps:
                guard.check(accelerator, state, out)
                save_state()
            if state.global_step >= total_steps:
                done = True
                break
        if not done or state.batch_in_epoch >= len(train_loader):
            state.epoch += 1
            state.batch_in_epoch = 0
        ev = recipe['eval']['every_epochs']
        if ev and (state.epoch % ev == 0 or done):
            clean_acc = evaluate_clean(model, test_loader, accelerator, objective.normalizer)
            accelerator.log({'eval/clean_acc': clean_acc, 'eval/epoch': state.epoch}, step=state.global_step)
            history.append({'epoch': state.epoch, 'step': state.global_step, 'clean_acc': clean_acc})
            if accelerator.is_main_process and progress:
                bar.write(f'epoch {state.epoch}: step {state.global_step}/{total_steps}, clean test acc '
                          f'{clean_acc:.2f}%')
        guard.check(accelerator, state, out)
        save_state()
    bar.close()
    train_time = time.time() - t_start

    # -- finish: final evaluation, checkpoint, marker
    final_model = ema.module if ema is not None else model
    if clean_acc is None:
        clean_acc = evaluate_clean(final_model, test_loader, accelerator, objective.normalizer)
    robustness = None
    if recipe['eval']['at_end']:
        from .robustness import noise_sweep
        e = recipe['eval']
        sweep = noise_sweep(unwrap_model(final_model), eval_ds, e['sigmas'], e['repeats'], e['seed'], clip=e['clip'],
                            batch_size=e['batch_size'], accelerator=accelerator, progress=progress,
                            mean=objective.normalizer.mean, std=objective.normalizer.std)
        robustness = sweep.to_dict()
    summary = {
        'name': recipe['name'], 'output_dir': str(out), 'steps': state.global_step, 'epochs': state.epoch,
        'train_time_s': round(train_time, 2), 'state_save_s': round(save_s, 3),
        'images_per_s': round(seen_images / max(train_time, 1e-9), 1),
        'clean_accuracy': clean_acc, 'history': history,
        'robustness': robustness['summary'] if robustness else None,
        'num_processes': world, 'distributed_type': accelerator.distributed_type.value,
        'objective': objective.loss_name, 'hparams': objective.hparams(), 'dataset': info.name,
        'command': command or _command_line(recipe),
    }
    if accelerator.is_main_process:
        _write_outputs(out, unwrap_model(final_model), recipe, objective, info.name, robustness, summary)
        _print_summary(summary, robustness)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def optimizer_stepper(accelerator, optimizer) -> Callable[[], None]:
    """``step()`` then ``zero_grad()`` of :func:`step_target`, called on gradient-sync steps only."""
    target = step_target(accelerator, optimizer)

    def step() -> None:
        target.step()
        target.zero_grad(set_to_none=True)
    return step


def step_target(accelerator, optimizer):
    """The optimizer to step: the one Accelerate wraps, where the wrapper has nothing to do.

    Accelerate's optimizer wrapper (1.15) looks up the optional ``lomo_optim`` package with an uncached
    ``importlib`` search twice per step and inspects ``zero_grad``'s signature every call: about 0.5 ms of host
    time a step, which a launch-bound GPU turns into lost throughput on small models. It is kept where it works:
    an fp16 GradScaler, XLA, and DeepSpeed or other specialised wrappers (subclasses).
    """
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.utils import DistributedType
    if type(optimizer) is not AcceleratedOptimizer or optimizer.scaler is not None or \
            accelerator.distributed_type == DistributedType.XLA:
        return optimizer
    return optimizer.optimizer


FOLD_EVERY = 1024  # per-step device tensors kept at most before they are reduced, so memory stays bounded


def _window_add(window: Dict[str, List[Any]], key: str, value: Any, fold_every: int = FOLD_EVERY) -> None:
    """Keeps a step's metric for the log line: a reference to the device tensor, no kernel and no sync; every
    ``fold_every`` values are summed into one, so a long interval between log lines holds little memory."""
    values = window.setdefault(key, [])
    values.append(value.detach() if torch.is_tensor(value) else value)
    if len(values) >= fold_every and torch.is_tensor(values[0]):
        values[:] = [torch.stack(values).sum(0)]


def _window_means(window: Dict[str, List[Any]], n: int) -> Dict[str, float]:
    """Mean of each logged quantity over the ``n`` steps since the last log line, with one host sync for all."""
    sums = {k: sum(v) for k, v in window.items() if not torch.is_tensor(v[0])}
    on_device = {k: torch.stack(v).float().sum() for k, v in window.items() if torch.is_tensor(v[0])}
    if on_device:
        sums.update(zip(on_device, torch.stack(list(on_device.values())).tolist()))
    return {k: float(sums[k]) / n for k in window}


def _has_accelerator() -> bool:
    mps = getattr(torch.backends, 'mps', None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or \
        bool(getattr(torch, 'xpu', None) and torch.xpu.is_available())


class DivergenceGuard:
    """Notes the first non-finite loss and raises at the next ``check``.

    A per-step check would sync the host with the GPU every step, and on small models that costs more than the
    check is worth; even a few tiny kernels per step show on a launch-bound GPU. So a step only keeps a reference
    to its (already computed) loss, and ``check`` looks at them all at once and syncs once: before every state
    save, log line and the end of an epoch. A bad state is then never saved, and ``--resume`` restarts from the
    last good one.
    """

    FOLD_EVERY = FOLD_EVERY  # pending losses folded into (step, value) on the device

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)  # first bad step; -1: none yet
        self.value = torch.zeros((), device=device)                       # the loss it had
        self._losses: List[torch.Tensor] = []
        self._steps: List[int] = []

    def observe(self, loss: torch.Tensor, step: int) -> None:
        self._losses.append(loss.detach())  # no kernel launched
        self._steps.append(step)
        if len(self._losses) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        """The first non-finite pending loss, if any and none was found before, becomes (step, value)."""
        if not self._losses:
            return
        losses = torch.stack(self._losses).float()
        steps = torch.tensor(self._steps, dtype=torch.long).to(losses.device, non_blocking=True)
        first = torch.where(torch.isfinite(losses), len(losses), torch.arange(len(losses), device=losses.device))
        first = first.min()
        new = (self.step < 0) & (first < len(losses))
        at = first.clamp(max=len(losses) - 1)
        self.step = torch.where(new, steps[at], self.step)
        self.value = torch.where(new, losses[at], self.value)
        self._losses, self._steps = [], []

    def check(self, accelerator, state: TrainState, out: Path) -> None:
        self._fold()
        bad = self.step
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad.clone(), 'max')
        step = int(bad.item())
        if step < 0:
            return
        latest = latest_state(out)
        value = self.value.item() if int(self.step.item()) >= 0 else 'non-finite (on another process)'
        msg = (f'loss is {value} at step {step} (now at step {state.global_step}, epoch {state.epoch}); training '
               f'stopped before saving anything after it. The last good state is '
               f'{latest if latest else "none (no state was saved yet)"}: lower the learning rate or change '
               f'precision, then --resume.')
        if accelerator.is_main_process:
            atomic_write_json(out / 'diverged.json', {'message': msg, 'step': step})
        raise TrainingDiverged(msg)


def _command_line(recipe: Dict[str, Any]) -> str:
    return 'timm-lipschitz train ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else \
        f'timm-lipschitz train --recipe <recipe> (name {recipe["name"]})'


def _write_outputs(out: Path, model, recipe, objective, dataset: str, robustness, summary) -> None:
    from .hub import make_tag, save_pretrained
    from .robustness import plot_sweeps, summary_table, sweep_table
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
    from .robustness import sweep_table
    print(f"\n== {summary['name']}: {summary['steps']} steps in {summary['train_time_s']:.1f}s "
          f"({summary['images_per_s']:.0f} images/s), clean test accuracy {summary['clean_accuracy']:.2f}%")
    if robustness:
        grid = robustness['sigmas']
        shown = [s for i, s in enumerate(grid) if i % max(1, len(grid) // 10) == 0 or s == grid[-1]]
        print('\nNoise robustness (test accuracy %, Gaussian noise in [0,1] pixel space):')
        print(sweep_table({summary['name']: robustness}, shown))
        s = robustness['summary']
        print('summary: ' + ', '.join(f'{k} {v:.2f}' for k, v in s.items() if v is not None))
    print(f"outputs in {summary['output_dir']}")


# ---- command line ------------------------------------------------------------------------------------------------
def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog='timm-lipschitz train', description=__doc__.split('\n')[0])
    p.add_argument('--recipe', required=True, help='recipe YAML (see recipes/)')
    p.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE',
                   help='override a recipe key, e.g. --set loss.sigma=0.5 (repeatable)')
    p.add_argument('--output-dir', help='run folder (default: the recipe\'s output_dir)')
    p.add_argument('--resume', action='store_true', help='continue from the newest saved state in the run folder')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p


def run_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f'output_dir={args.output_dir}')
    return train(args.recipe, overrides, resume=args.resume, progress=not args.no_progress,
                 command=' '.join(['timm-lipschitz train'] + sys.argv[1:]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_from_args(args)
    except (ValueError, TrainingDiverged) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
