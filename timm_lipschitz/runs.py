"""The run folder: what it holds, who owns it, and its training states.

A run folder holds ``recipe.yaml`` (resolved), ``metrics.jsonl``, ``tensorboard/``, ``state/step_XXXXXXXX``
(Accelerate state, renamed into place only when complete), ``model.safetensors`` + ``config.json`` + ``README.md``,
``robustness.*``, ``run.lock`` while a process trains in it, ``stopped.json`` when a run was stopped by a signal,
``diverged.json`` when its loss became NaN, and ``final.json`` written last (the finished marker).

Rules (the README's "What happens when..."):

- A folder that already holds a run is never trained into again without ``--resume``: the old metrics, TensorBoard
  files and states would mix with the new run's. The refusal names the folder and the ways out.
- ``--resume`` compares the saved recipe with the new one and refuses a difference in anything that shapes the
  weights (model, data, objective, optimizer, schedule, batch, precision, seed, ...); the keys of
  :data:`~timm_lipschitz.recipes.RESUME_SAFE` (more epochs, logging, evaluation, checkpointing) may change, and the
  change is recorded in ``metrics.jsonl``.
- The folder is claimed with ``run.lock`` (host, process id and its start time), created atomically: a second run
  into a folder in use is refused. A claim left by a process that no longer exists on this host is taken over with
  a notice; a claim from another host is reported with how to take it over (delete the lock).
- A state is written to ``state/.tmp_step_*`` and renamed into place; a failed write (a full disk) removes the
  temporary folder, says how much space was needed and free, and leaves the previous state intact.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import yaml

from ._lazy import lazy_module
from .errors import UserError
from .fileio import atomic_write_json, atomic_write_text, read_json
from .folders import PRODUCTS, check_output_folder
from .recipes import flatten, recipe_differences, under

torch = lazy_module('torch', __name__)  # the run rules are torch-free: a refused run folder is answered fast
accelerate_utils = lazy_module('accelerate.utils', __name__)

__all__ = ['latest_state', 'save_state', 'space_message', 'RunFolderError', 'StateSaveError', 'RunClaim', 'run_status',
           'check_new_run', 'check_resume', 'read_metrics', 'LOCK_NAME', 'STOPPED_NAME', 'FINAL_NAME', 'DIVERGED_NAME',
           'METRICS_NAME',
           'folder_size', 'finished_summary', 'require_finished', 'open_run_folder', 'apply_run_rules',
           'check_not_foreign', 'discard_fresh_run', 'discard_if_stub', 'segments', 'archive_segment', 'SEGMENTS_NAME',
           'check_not_shorter', 'WEIGHT_NEUTRAL', 'DATA_NAME', 'check_same_data', 'state_name', 'state_step',
           'with_recorded_normalization']

LOCK_NAME = 'run.lock'
FINAL_NAME = 'final.json'      # the run's summary, written last: the finished marker
STOPPED_NAME = 'stopped.json'  # written by a run stopped by a signal at a saved step (resume it)
DIVERGED_NAME = 'diverged.json'  # written when the loss became NaN/inf
SEGMENTS_NAME = 'segments.json'  # the earlier segments of a run resumed with another recipe
DATA_NAME = 'data.json'  # the fingerprint of the training split the run started with
METRICS_NAME = 'metrics.jsonl'  # one JSON line per log call
RUN_MARKERS = ('recipe.yaml', METRICS_NAME, 'state', FINAL_NAME, 'model.safetensors')
# every file a run writes into its folder (its checkpoint files aside)
RUN_FILES = (*RUN_MARKERS, LOCK_NAME, STOPPED_NAME, DIVERGED_NAME, SEGMENTS_NAME, DATA_NAME)
RUN_RECORDS = (METRICS_NAME, 'state', FINAL_NAME, DATA_NAME)  # what only a training run writes


class RunFolderError(UserError, RuntimeError):
    """The run folder cannot be used as asked; the message names the folder and the ways out."""


class StateSaveError(UserError, RuntimeError):
    """A training state could not be written (disk full, folder not writable); the previous state is intact."""


# ---- states ------------------------------------------------------------------------------------------------------
def latest_state(output_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete state folder (``state/step_XXXXXXXX``; incomplete ones are never renamed into place)."""
    root = Path(output_dir) / 'state'
    states = sorted(p for p in root.glob('step_*') if p.is_dir()) if root.is_dir() else []
    return states[-1] if states else None


def state_name(step: int) -> str:
    """The folder name of the state saved at ``step`` (``step_00000120``): sorted by name, sorted by step."""
    return f'step_{int(step):08d}'


def state_step(state: Path) -> int:
    """The step a state folder was saved at (the inverse of :func:`state_name`)."""
    return int(Path(state).name.split('_')[1])


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it does not exist)."""
    return sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) if path.exists() else 0


def space_message(folder: Path, run: Path, needed: int, error: BaseException, what: str = 'the training state') \
        -> str:
    """Why a write failed, how much it needed and how much is free, and what is still intact."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path('/'))
    free = shutil.disk_usage(existing).free
    previous = latest_state(run)
    return (f'could not write {what} in {folder}: {error.__class__.__name__}: {error}. It needs about '
            f'{needed / 2 ** 20:.2f} MiB; {free / 2 ** 20:.2f} MiB are free there. The previous state '
            f'{previous if previous else "(none yet)"} is intact and --resume continues from it; free some space '
            f'or copy the run folder elsewhere and resume there (--output-dir).')


def save_state(accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """Accelerate state into a temporary folder, then renamed into place: a kill mid-save loses nothing.

    A failed write is reported on every process as :class:`StateSaveError` (with the space needed and free); the
    temporary folder is removed.
    """
    root = output_dir / 'state'
    final = root / state_name(step)
    tmp = root / f'.tmp_{state_name(step)}'
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    failure = None
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # a full disk: OSError, torch's RuntimeError('unexpected pos'), safetensors' own error
        failure = e
    failed = _any_process(accelerator, failure is not None)
    if failed:
        needed = folder_size(latest_state(output_dir) or tmp)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        failure = failure or OSError(errno.EIO, 'the write failed on another process')
        raise StateSaveError(space_message(root, output_dir, needed, failure)) from failure
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in root.glob('step_*') if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _any_process(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, 'sum').item() > 0)


# ---- what a folder holds -----------------------------------------------------------------------------------------
def run_status(out: Path) -> Optional[str]:
    """None for an empty or missing folder; otherwise a short description of the run in it."""
    out = Path(out)
    if not any((out / m).exists() for m in RUN_MARKERS):
        return None
    if (out / FINAL_NAME).is_file():
        return 'a finished run'
    state = latest_state(out)
    return f'an unfinished run (last state: step {state_step(state)})' if state else \
        'an unfinished run (no saved state)'


def finished_summary(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """The summary a finished run wrote last (its ``final.json``), or None while the run is not finished."""
    path = Path(folder) / FINAL_NAME
    return read_json(path) if path.is_file() else None


def require_finished(folder: Union[str, Path], error: type = None) -> Dict[str, Any]:
    """The finished run's summary; ``error`` (default :class:`RunFolderError`) names the folder when it is not one."""
    summary = finished_summary(folder)
    if summary is None:
        raise (error or RunFolderError)(f'{folder} is not a finished training run (no {FINAL_NAME}).')
    return summary


def check_not_foreign(out: Path) -> None:
    """A folder that holds no run must hold nothing a user wrote (the one output rule, :mod:`.folders`): training
    there would overwrite a user's README.md or config.json (``--output-dir .``)."""
    check_output_folder(out, '--output-dir', writes=PRODUCTS['checkpoint'], ignore=(LOCK_NAME,))


def discard_fresh_run(out: Path) -> None:
    """Remove what a new run wrote into its (empty, claimed) folder before it was refused, e.g. the ``recipe.yaml``
    of a recipe the trainer refused: a stub would block the corrected run and ``--resume`` alike."""
    for entry in Path(out).iterdir():
        if entry.name == LOCK_NAME:
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextlib.contextmanager
def discard_if_stub(folder: Dict[str, Any], out: Path, accelerator) -> Iterator[None]:
    """A new run that ends with an error before its first saved state (a refused recipe, a model argument that
    fails at the first forward, a bug) leaves nothing worth resuming: what it wrote is removed, so the corrected run
    starts cleanly instead of being refused as an unfinished run. A run with a saved state keeps it."""
    try:
        yield
    except BaseException:
        if folder['fresh'] and accelerator.is_main_process and latest_state(out) is None:
            discard_fresh_run(out)
        raise


def check_new_run(out: Path) -> None:
    """A new (not resumed) run needs a folder without a run in it."""
    status = run_status(out)
    if status:
        raise RunFolderError(
            f'run folder {out} already holds {status}; a new run there would mix with it. Continue it with '
            f'--resume, or train into a new folder: --output-dir <other folder> (or --set name=<other name>).')


def check_resume(out: Path, recipe: Dict[str, Any]) -> List[str]:
    """Refuses a resume whose recipe differs from the saved one in a key that shapes the weights; returns the
    allowed differences (to be recorded)."""
    saved_file = out / 'recipe.yaml'
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text()) or {}
    recipe = with_recorded_normalization(recipe, saved)
    refused, allowed = recipe_differences(saved, recipe)
    if refused:
        a, b = flatten(saved), flatten(recipe)
        shown = '; '.join(f'{k}: {a.get(k, "(default)")!r} -> {b.get(k, "(default)")!r}' for k in refused[:8])
        raise RunFolderError(
            f'--resume of {out}: the recipe differs from the one the run started with in {len(refused)} key(s) '
            f'that shape the weights ({shown}{"; ..." if len(refused) > 8 else ""}). Resume with the saved recipe '
            f'(--recipe {saved_file}), or start a new run in another folder.')
    return allowed


# Resume-safe keys that leave the weights as they are; a change of any other (steps, epochs, compile, data.root)
# makes a new segment of the run, replayed by its own command.
WEIGHT_NEUTRAL = ('name', 'description', 'output_dir', 'log_with', 'threads', 'log_every_steps', 'eval',
                  'checkpoint', 'data.root', 'data.download', 'data.num_workers', 'data.eval_batch_size')  # data.root: same data


def segments(out: Path) -> List[Dict[str, Any]]:
    """The run's earlier segments: each the recipe it trained with (archived) and the step it ran to."""
    path = Path(out) / SEGMENTS_NAME
    return read_json(path) if path.is_file() else []


def archive_segment(out: Path) -> None:
    """Before a resume changes what shapes the weights (more steps change the schedule), keep the recipe the run
    trained with so far and the step it is resumed from: the reproduce record replays each segment."""
    state = latest_state(out)
    if state is None:  # nothing trained is kept: the run starts again with the new recipe
        return
    done = segments(out)
    until = state_step(state)
    if done and done[-1]['until_step'] == until:  # a resume retried from the same state: the same segment
        return
    name = f'recipe.segment-{len(done)}.yaml'
    shutil.copyfile(out / 'recipe.yaml', out / name)
    atomic_write_json(out / SEGMENTS_NAME, done + [{'recipe': name, 'until_step': until}])


def check_same_data(out: Path, fingerprint: str, root: Any, write: bool) -> None:
    """The training split a run continues on is the one it started with: its fingerprint is recorded at the start
    (``write``: the main process) and compared on every resume, whatever ``data.root`` says now."""
    path = Path(out) / DATA_NAME
    if path.is_file():
        recorded = read_json(path).get('train')
        if recorded != fingerprint:
            raise RunFolderError(
                f'the training split read from data.root={root!r} is not the one {out} started with (fingerprint '
                f'{fingerprint}, recorded {recorded}): the rest of the run would train on other data. Resume with '
                f'the data it started with, or start a new run.')
    elif write:
        atomic_write_json(path, {'train': fingerprint})


def check_not_shorter(out: Path, recipe: Dict[str, Any]) -> None:
    """A resume never asks for fewer steps or epochs than the run has already trained: its weights would be those of
    the longer run while ``recipe.yaml`` named the shorter one."""
    done = finished_summary(out)
    state = latest_state(out)
    steps_done = done['steps'] if done else state_step(state) if state else 0
    if recipe.get('steps') is not None and recipe['steps'] < steps_done:
        raise RunFolderError(f'--resume of {out} with steps={recipe["steps"]}: the run has trained {steps_done} steps '
                             f'already, and its weights cannot be made shorter. Resume with steps >= {steps_done}, or '
                             f'train the shorter run into a new folder.')
    if done and recipe.get('epochs') is not None and recipe['epochs'] < done.get('epochs', 0):
        raise RunFolderError(f'--resume of {out} with epochs={recipe["epochs"]}: the finished run trained '
                             f'{done["epochs"]} epochs already. Resume with epochs >= {done["epochs"]}, or train the '
                             f'shorter run into a new folder.')


def with_recorded_normalization(recipe: Dict[str, Any], saved: Dict[str, Any]) -> Dict[str, Any]:
    """A recipe that names no mean/std means "the run's own": the numbers its start recorded in recipe.yaml."""
    model, saved_model = recipe.get('model') or {}, saved.get('model') or {}
    if model.get('mean') is None and saved_model.get('mean') is not None:
        recipe = {**recipe, 'model': {**model, 'mean': saved_model['mean'], 'std': saved_model.get('std')}}
    return recipe


# ---- the claim ------------------------------------------------------------------------------------------------------
def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` on this host (Linux: /proc/<pid>/stat field 22), None if it is gone."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
        return stat.rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 'unknown'
        return 'unknown'


class RunClaim:
    """``run.lock`` in a run folder: created with O_EXCL, removed when the run ends (also on errors and signals)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.held = False
        self.notice = ''

    def _mine(self) -> Dict[str, Any]:
        return {'host': socket.gethostname(), 'pid': os.getpid(), 'pid_start': _process_start(os.getpid()),
                'since': time.strftime('%Y-%m-%d %H:%M:%S')}

    def acquire(self) -> 'RunClaim':
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    self._handle_existing()
                    continue
                with os.fdopen(fd, 'w') as f:
                    json.dump(self._mine(), f)
                self.held = True
                return self
        except OSError as e:  # a read-only filesystem, a full disk, no permission: the same clear message
            raise StateSaveError(space_message(self.path.parent, self.path.parent, 4096, e, 'the run claim')) \
                from e
        raise RunFolderError(f'could not claim {self.path}: another process claimed it at the same moment.')

    def _read_other(self) -> Any:
        """The other claim; an empty file is read again after a moment (a claim being written right now)."""
        for wait in (0.0, 0.3):
            time.sleep(wait)
            try:
                other = read_json(self.path)
            except (OSError, ValueError):
                other = {}
            if other:
                return other
        return other

    def _handle_existing(self) -> None:
        other = self._read_other()
        if not isinstance(other, dict) or not other:
            size = self.path.stat().st_size if self.path.exists() else 0
            raise RunFolderError(
                f'{self.path} is {"empty" if size == 0 else "not a claim this package wrote"} (a claim cut short by a '
                f'crash or a full disk, or a file put there by hand): it names no process. If no run is using '
                f'{self.path.parent}, delete {self.path} to take the folder over; otherwise train into another '
                f'--output-dir.')
        host, pid = other.get('host'), other.get('pid')
        if host == socket.gethostname() and isinstance(pid, int):
            alive = _process_start(pid)
            # a live process whose start the claim does not record may be the one that claimed it: never called dead
            if alive is not None and (alive == 'unknown' or other.get('pid_start') in (None, alive)):
                raise RunFolderError(
                    f'run folder {self.path.parent} is in use by process {pid} on this host (since '
                    f'{other.get("since")}); wait for it to end, or train into another --output-dir.')
            self.notice = (f'taking over the stale claim of {self.path.parent}: process {pid} that claimed it '
                           f'({other.get("since")}) no longer runs.')
            self.path.unlink(missing_ok=True)
            return
        raise RunFolderError(
            f'run folder {self.path.parent} is claimed by process {pid} on host {host} (since {other.get("since")}). '
            f'If that job is no longer running, delete {self.path} to take the folder over; otherwise train into '
            f'another --output-dir.')

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                if read_json(self.path).get('pid') == os.getpid():
                    self.path.unlink()
            except (OSError, ValueError):
                pass


# ---- opening a run folder ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def open_run_folder(accelerator, out: Path, recipe: Dict[str, Any], resume: bool) -> Iterator[Dict[str, Any]]:
    """Claim the run folder for this run and apply the rules above (module doc), on the main process; its
    answer, or its error, reaches every process. Yields what resuming needs; releases the claim at the end."""
    claim = RunClaim(out)
    answer: List[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            answer = [apply_run_rules(out, recipe, resume, claim), None]
        except (UserError, OSError) as e:
            answer = [None, e]
    if accelerator.num_processes > 1:
        accelerate_utils.broadcast_object_list(answer, from_process=0)
    try:
        if answer[1] is not None:
            raise answer[1]
        yield answer[0]
    finally:
        claim.release()


def apply_run_rules(out: Path, recipe: Dict[str, Any], resume: bool, claim: RunClaim) -> Dict[str, Any]:
    """Claim the folder, then: a resume checks the recipe and repairs ``metrics.jsonl``; a new run needs a folder
    without a run. The markers of an earlier end (finished, diverged, stopped) are cleared."""
    claim.acquire()
    if claim.notice:
        print(claim.notice, flush=True)
    saved = None
    allowed: List[str] = []
    fresh = not run_status(out)
    if fresh:
        check_not_foreign(out)
    if resume and not fresh:
        allowed = check_resume(out, recipe)
        check_not_shorter(out, recipe)
        if any(not under(k, WEIGHT_NEUTRAL) for k in allowed):
            archive_segment(out)
        saved = yaml.safe_load((out / 'recipe.yaml').read_text()) if (out / 'recipe.yaml').is_file() else {}
        _, broken = read_metrics(out / METRICS_NAME, repair=True)
        if broken:
            print(f'warning: {out / METRICS_NAME}: dropped {broken} broken line(s) (a kill mid-write).',
                  flush=True)
    elif not resume:
        check_new_run(out)
    for stale in (FINAL_NAME, DIVERGED_NAME, STOPPED_NAME):
        (out / stale).unlink(missing_ok=True)
    return {'saved': saved, 'allowed': allowed, 'fresh': fresh}


# ---- metrics ------------------------------------------------------------------------------------------------------
def read_metrics(path: Union[str, Path], repair: bool = False) -> Tuple[List[Dict[str, Any]], int]:
    """The rows of ``metrics.jsonl`` and the number of broken lines skipped (a kill mid-write leaves a truncated
    last line). ``repair=True`` rewrites the file without them, so appended rows start on a line of their own."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows, broken, kept = [], 0, []
    for line in path.read_text(errors='replace').splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
            kept.append(line)
        except json.JSONDecodeError:
            broken += 1
    if repair and (broken or not path.read_bytes().endswith(b'\n')):
        atomic_write_text(path, ''.join(x + '\n' for x in kept))
    return rows, broken


