"""The training loop's bookkeeping, kept out of :func:`timm_lipschitz.train.train` so that one reads top to bottom.

:class:`TrainingLoop` owns what is not the method: the step and epoch counters (saved with every state), which
batches an epoch yields (fast device path or DataLoader, skipping the batches a resumed run already trained on),
the divergence guard, and periodic state saves and their timing. Two parts it holds by composition:
:class:`StepLog` (the log window, the log line and the progress bar) and :class:`StopSignals` (SIGTERM / SIGUSR1:
the current step finishes - with several processes, the steps up to the next log line - a state is saved, and the
run exits with :data:`EXIT_PREEMPTED`).
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from ..data import DeviceLoader
from ..errors import EXIT_PREEMPTED, UserError
from ..fileio import atomic_write_json
from ..runs import DIVERGED_NAME, STOPPED_NAME, latest_state, save_state, state_step

__all__ = ['TrainState', 'DivergenceGuard', 'TrainingDiverged', 'TrainingLoop', 'StepLog', 'StopSignals', 'Preempted',
           'StoppedAsAsked',
           'EXIT_PREEMPTED',
           'STOP_SIGNALS', 'FOLD_EVERY', 'optimizer_stepper', 'step_target', 'window_add', 'window_means']

FOLD_EVERY = 1024  # per-step device tensors kept at most before they are reduced, so memory stays bounded
STOP_SIGNALS = tuple(s for s in (getattr(signal, 'SIGTERM', None), getattr(signal, 'SIGUSR1', None)) if s)


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN/inf; the last good state is kept and named in the message."""


class Preempted(UserError, RuntimeError):
    """A stop signal arrived; the run saved a complete state at the step it finished and can be resumed."""

    exit_code = EXIT_PREEMPTED


class StoppedAsAsked(UserError):
    """The run reached the step ``--stop-at-step`` named; its state there is saved (``--resume`` continues)."""

    exit_code = 0


class TrainState:
    """Counters saved with every checkpoint (registered with Accelerate), so ``--resume`` knows where it was.

    ``train_time_s`` and ``images_seen`` add up over every part of a resumed run; ``time_from_step`` is the step
    the time accounting starts at (0 unless the run was resumed from a state that did not record its time).
    """

    def __init__(self) -> None:
        self.global_step = 0      # optimizer steps taken
        self.epoch = 0            # current epoch
        self.batch_in_epoch = 0   # micro-batches of the current epoch already consumed
        self.train_time_s = 0.0
        self.images_seen = 0
        self.time_from_step = 0

    def state_dict(self) -> Dict[str, Any]:
        return {'global_step': self.global_step, 'epoch': self.epoch, 'batch_in_epoch': self.batch_in_epoch,
                'train_time_s': self.train_time_s, 'images_seen': self.images_seen,
                'time_from_step': self.time_from_step}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.global_step, self.epoch, self.batch_in_epoch = (int(state[k]) for k in
                                                             ('global_step', 'epoch', 'batch_in_epoch'))
        if 'train_time_s' in state:
            self.train_time_s, self.images_seen = float(state['train_time_s']), int(state['images_seen'])
            self.time_from_step = int(state.get('time_from_step', 0))
        else:  # a state of timm-lipschitz 0.1.0: its time was not recorded
            self.train_time_s, self.images_seen, self.time_from_step = 0.0, 0, self.global_step


def window_add(window: Dict[str, List[Any]], key: str, value: Any, fold_every: int = FOLD_EVERY) -> None:
    """Keeps a step's metric for the log line: a reference to the device tensor, no kernel and no sync; every
    ``fold_every`` values are summed into one, so a long interval between log lines holds little memory."""
    values = window.setdefault(key, [])
    values.append(value.detach() if torch.is_tensor(value) else value)
    if len(values) >= fold_every and torch.is_tensor(values[0]):
        values[:] = [torch.stack(values).sum(0)]


def window_means(window: Dict[str, List[Any]], n: int) -> Dict[str, float]:
    """Mean of each logged quantity over the ``n`` steps since the last log line, with one host sync for all."""
    sums = {k: sum(v) for k, v in window.items() if not torch.is_tensor(v[0])}
    on_device = {k: torch.stack(v).float().sum() for k, v in window.items() if torch.is_tensor(v[0])}
    if on_device:
        sums.update(zip(on_device, torch.stack(list(on_device.values())).tolist()))
    return {k: float(sums[k]) / n for k in window}


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
            atomic_write_json(out / DIVERGED_NAME, {'message': msg, 'step': step})
        raise TrainingDiverged(msg)


def optimizer_stepper(accelerator, optimizer) -> Callable[[], None]:
    """``step()`` then ``zero_grad()`` of :func:`step_target`, called on gradient-sync steps only."""
    target = step_target(accelerator, optimizer)

    def step() -> None:
        target.step()
        target.zero_grad(set_to_none=True)
    return step


def step_target(accelerator, optimizer):
    """The optimizer to step: the one Accelerate wraps, where the wrapper has nothing to do.

    Accelerate's optimizer wrapper looks up the optional ``lomo_optim`` package with an uncached ``importlib``
    search and inspects ``zero_grad``'s signature on every step: host time that a launch-bound GPU turns into lost
    throughput on small models (measured in benchmarks/RESULTS.md, "Speed ratios (GPU: NVIDIA H200)", item 3). It is kept where it works: an fp16 GradScaler, XLA, and DeepSpeed or other specialised wrappers
    (subclasses).
    """
    if type(optimizer) is not AcceleratedOptimizer or optimizer.scaler is not None or \
            accelerator.distributed_type == DistributedType.XLA:
        return optimizer
    return optimizer.optimizer


class StopSignals:
    """Stopping on SIGTERM / SIGUSR1 at a saved step.

    The first signal is noted (stop after this step); later ones are noted and ignored, so a second signal cannot
    interrupt the state save. With one process the flag is a Python attribute checked every step; with several the
    processes agree at log lines on the earliest step a signal arrived (a collective per step would sync the host
    with the GPU every step).
    """

    def __init__(self, accelerator, step: Callable[[], int]) -> None:
        self.accelerator = accelerator
        self.signum: Optional[int] = None
        self.at_step: Optional[int] = None  # the optimizer steps finished when the signal arrived
        self._step = step
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self.at_step = signum, self._step()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def requested(self, agree_now: bool = True) -> bool:
        """Whether to stop now: with one process, whether a signal arrived; with several, only where they agree
        (``agree_now``: a log line or an epoch end), whether a signal reached any of them (then every process takes
        the earliest step it arrived)."""
        if self.accelerator.num_processes == 1:
            return self.signum is not None
        if not agree_now:
            return False
        mine = torch.tensor([float(self.at_step if self.signum is not None else -1)],
                            device=self.accelerator.device)
        steps = [int(s) for s in self.accelerator.gather(mine).tolist() if s >= 0]
        if steps and self.at_step is None:
            self.at_step = min(steps)
        return bool(steps)

    def stop(self, save: Callable[[], Path], state: 'TrainState', out: Path) -> None:
        """Save a complete state at this step, record why the run stopped, and raise :class:`Preempted`."""
        if self._previous:  # from here on the OS ignores stop signals (Python's handlers are reset while the
            for s in STOP_SIGNALS:  # interpreter exits, when another SIGTERM would kill it and lose its exit code)
                signal.signal(s, signal.SIG_IGN)
        name = signal.Signals(self.signum).name if self.signum else 'a signal on another process'
        path = save()
        msg = (f'stopped by {name} at step {state.global_step} (epoch {state.epoch}); the state {path} is complete: '
               f'continue with --resume (exit code {EXIT_PREEMPTED}, for schedulers to requeue on).')
        if self.accelerator.is_main_process:
            atomic_write_json(out / STOPPED_NAME, {'signal': name, 'signal_at_step': self.at_step,
                                                    'step': state.global_step, 'state': str(path), 'message': msg,
                                                    'exit_code': EXIT_PREEMPTED})
        raise Preempted(msg)


class StepLog:
    """The log window (per-step metrics kept on the device), the log line (one host sync per line) and the progress
    bar (main process only)."""

    def __init__(self, accelerator, progress: bool = True) -> None:
        self.accelerator = accelerator
        self.progress = progress
        self.bar = None
        self._window: Dict[str, List[Any]] = {}
        self._n = self._images = 0
        self._t = time.time()

    def start(self, total: int, initial: int, desc: str) -> None:
        self._t = time.time()
        self.bar = tqdm(total=total, initial=initial, desc=desc,
                        disable=not (self.progress and self.accelerator.is_main_process), dynamic_ncols=True)

    def add(self, output, targets: torch.Tensor, n_images: int) -> None:
        """One micro-batch's loss, accuracy and parts: references to device tensors (a few small kernels a step,
        no host sync), reduced at the next log line."""
        self._images += n_images
        acc = (output.logits.argmax(1) == targets).float().mean()
        for k, v in {'loss': output.loss, 'acc': acc, **output.parts}.items():
            window_add(self._window, k, v)
        self._n += 1

    def line(self, step: int, epoch: int, lr: float) -> Dict[str, float]:
        """Log the means since the last line (with lr, images/s and epoch) and start a new window."""
        elapsed = max(time.time() - self._t, 1e-9)
        logs = {f'train/{k}': v for k, v in window_means(self._window, self._n).items()}
        logs.update({'train/lr': lr, 'train/images_per_s': self._images / elapsed, 'train/epoch': epoch})
        self.accelerator.log(logs, step=step)
        self.bar.set_postfix({k.split('/')[1]: f'{v:.3g}' for k, v in logs.items() if k != 'train/epoch'},
                             refresh=False)
        self._window, self._n, self._images, self._t = {}, 0, 0, time.time()
        return logs

    def write(self, text: str) -> None:
        """A line above the progress bar (main process only, when progress is shown)."""
        if self.accelerator.is_main_process and self.progress:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TrainingLoop:
    """Counters, batches, guard and saves of one training run, with its :class:`StepLog` and
    :class:`StopSignals` (module doc)."""

    def __init__(self, accelerator, recipe: Dict[str, Any], out: Path, train_loader, total_steps: int,
                 progress: bool = True, stop_at: Optional[int] = None):
        self.accelerator, self.recipe, self.out = accelerator, recipe, out
        self.stop_at = stop_at
        self.train_loader, self.total_steps = train_loader, total_steps
        self.world = accelerator.num_processes
        self.state = TrainState()
        self.guard = DivergenceGuard(accelerator.device)
        self.every_steps = recipe['checkpoint']['every_steps']
        self.every_epochs = recipe['checkpoint']['every_epochs']
        self.keep = recipe['checkpoint']['keep']
        self.log_every = recipe['log_every_steps']
        self.channels_last = recipe['channels_last']
        self.skip = 0
        self.save_s = 0.0
        self.resumed_from: Optional[int] = None
        self._t0 = time.time()
        self._time_before = 0.0
        self.log = StepLog(accelerator, progress)
        self.signals = StopSignals(accelerator, lambda: self.state.global_step)
        self.optimizer = None

    # -- resuming and the run's extent ------------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the newest complete state of the run folder (if any) and skip what the epoch already trained."""
        latest = latest_state(self.out)
        if latest is None:
            self.accelerator.print(f'--resume: no saved state in {self.out / "state"}; starting from scratch.')
            return
        self.accelerator.load_state(str(latest))
        self.skip = self.state.batch_in_epoch
        self.resumed_from = self.state.global_step
        self.accelerator.print(f'resumed from {latest}: step {self.state.global_step}, epoch {self.state.epoch}; '
                               f'skipping {self.skip} batches already seen in this epoch')
        self.accelerator.log({'event/resumed_step': self.state.global_step, 'event/skipped_batches': self.skip},
                             step=self.state.global_step)

    @property
    def done(self) -> bool:
        return self.state.global_step >= self.total_steps

    def start(self, optimizer) -> None:
        """Start the clock, the progress bar and the stop-signal handlers."""
        if self.stop_at is not None and self.state.global_step >= self.stop_at:
            raise StoppedAsAsked(f'the run is at step {self.state.global_step} already, not before '
                                 f'--stop-at-step {self.stop_at}: nothing to train; continue with --resume.')
        self.optimizer = optimizer
        self._time_before = self.state.train_time_s
        self._t0 = time.time()
        self.log.start(self.total_steps, self.state.global_step, self.recipe['name'])
        self.signals.install()

    # -- batches -------------------------------------------------------------------------------------------------------
    def epochs(self) -> Iterator[int]:
        """The epochs still to train (the current one first, when resumed mid-epoch)."""
        while not self.done:
            yield self.state.epoch

    def batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The current epoch's batches in the run's order, without those a resumed run already trained on; ends at
        the last step of the run."""
        self.train_loader.set_epoch(self.state.epoch)  # Accelerate's prepared loader passes it to our sampler
        loader = self.train_loader
        if self.skip:
            if isinstance(self.train_loader, DeviceLoader):
                self.train_loader.skip_batches = self.skip
            else:
                loader = self.accelerator.skip_first_batches(self.train_loader, self.skip)
        self.state.batch_in_epoch, self.skip = self.skip, 0
        for images, targets in loader:
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets
            if self.done:
                return

    # -- per step ------------------------------------------------------------------------------------------------------
    def record(self, output, images: torch.Tensor, targets: torch.Tensor) -> bool:
        """Note a micro-batch (loss for the guard, metrics for the log line); True when it completed an optimizer
        step (the caller then updates the scheduler and EMA, and calls :meth:`after_step`)."""
        self.guard.observe(output.loss, self.state.global_step + 1)
        self.state.batch_in_epoch += 1
        n_img = images.shape[0] * self.world
        self.state.images_seen += n_img
        self.log.add(output, targets, n_img)
        if not self.accelerator.sync_gradients:
            return False
        self.state.global_step += 1
        return True

    def after_step(self) -> None:
        """Progress, the log line, periodic saves, and a stop signal (after the scheduler and EMA updates, so a
        state saved here is whole)."""
        step = self.state.global_step
        self.log.bar.update(1)
        log_line = step % self.log_every == 0 or step == self.total_steps
        if log_line:
            self.guard.check(self.accelerator, self.state, self.out)
            self.log.line(step, self.state.epoch, self.optimizer.param_groups[0]['lr'])
        if self.signals.requested(agree_now=log_line):
            self.signals.stop(self.save, self.state, self.out)
        if self.every_steps and step % self.every_steps == 0 and step < self.total_steps:
            self.save()
        if self.stop_at is not None and step >= self.stop_at and step < self.total_steps:
            path = self._final_state()
            raise StoppedAsAsked(f'stopped at step {step} as asked (--stop-at-step); the state {path} is saved: '
                                 f'continue with --resume.')

    def end_epoch(self) -> None:
        """Advance the epoch counter when the epoch was trained to its end (not when the run ended inside it)."""
        if self.state.batch_in_epoch >= len(self.train_loader) or not self.done:
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def after_epoch(self) -> None:
        """The epoch-end state save (``checkpoint.every_epochs``); always checks the losses first."""
        self.guard.check(self.accelerator, self.state, self.out)
        if self.signals.requested():
            self.signals.stop(self.save, self.state, self.out)
        if self.every_epochs and (self.state.epoch % self.every_epochs == 0 or self.done):
            self.save()

    def write(self, text: str) -> None:
        """A line above the progress bar (main process only, when progress is shown)."""
        self.log.write(text)

    # -- states and time -----------------------------------------------------------------------------------------------
    def _update_clock(self) -> None:
        self.state.train_time_s = self._time_before + (time.time() - self._t0)

    def save(self) -> Path:
        self.guard.check(self.accelerator, self.state, self.out)
        t = time.time()
        self._update_clock()
        path = save_state(self.accelerator, self.out, self.state.global_step, self.keep)
        self.save_s += time.time() - t
        return path

    def stop_if_signalled(self) -> None:
        """After training, between the phases of the end of the run (evaluation, outputs): a stop signal saves the
        final state (unless it is saved already) and stops as during training (exit 75; --resume finishes)."""
        if self.signals.requested():
            self.signals.stop(self._final_state, self.state, self.out)

    def _final_state(self) -> Path:
        latest = latest_state(self.out)
        if latest is not None and state_step(latest) == self.state.global_step:
            return latest
        return self.save()

    def close(self) -> None:
        """The stop-signal handlers go back to what they were (the end of the run's outputs)."""
        self.signals.restore()

    def finish(self) -> Dict[str, Any]:
        """Close the bar; the run's extent and speed, over every part of a resumed run. The stop-signal handlers
        stay until :meth:`close`, so a signal during the final evaluation still stops at a saved step."""
        self.log.close()
        self._update_clock()
        s = self.state
        out = {'steps': s.global_step, 'epochs': s.epoch, 'train_time_s': round(s.train_time_s, 2),
               'state_save_s': round(self.save_s, 3), 'images_seen': s.images_seen,
               'images_per_s': round(s.images_seen / max(s.train_time_s, 1e-9), 1)}
        if s.time_from_step:
            out['time_covers'] = (f'steps {s.time_from_step}..{s.global_step} (resumed from a state that did not '
                                  f'record the time of the steps before)')
        elif self.resumed_from is not None:
            out['time_covers'] = f'the whole run (resumed at step {self.resumed_from})'
        return out
