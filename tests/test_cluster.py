"""Runs that survive a shared cluster: preemption signals, a full disk, concurrent jobs, job-array scripts.
Real signals and real processes (1 process, and 2 with torchrun/gloo)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import child_env, tiny_grid, tiny_recipe
from safetensors.torch import load_file
from timm_lipschitz.train import EXIT_PREEMPTED, latest_state

ROOT = Path(__file__).resolve().parent.parent


def recipe(out, **over):
    r = {'name': 'long', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
         'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
         'loss': {'name': 'lipschitz_hinge', 'sigma': 0.3, 'beta': 1.0, 'lipschitz_target': 0.1},
         'optimizer': {'name': 'sgd', 'lr': 0.05, 'momentum': 0.9}, 'schedule': {'name': 'cosine'},
         'epochs': 12, 'batch_size': 32, 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0},
         'checkpoint': {'every_steps': 50, 'keep': 2}, 'log_with': [], 'log_every_steps': 4, 'output_dir': str(out)}
    r.update(over)
    return r


def _write(tmp_path, r, name):
    path = tmp_path / f'{name}.yaml'
    path.write_text(yaml.safe_dump(r))
    return path


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1')


def _train_cmd(recipe_path, resume=False, nproc=1):
    if nproc == 1:
        head = [sys.executable, '-m', 'timm_lipschitz.train']
    else:
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        head = [str(Path(sys.executable).parent / 'torchrun'), '--nproc_per_node', str(nproc), '--master_addr',
                '127.0.0.1', '--master_port', str(port), '-m', 'timm_lipschitz.train']
    return head + ['--recipe', str(recipe_path), '--no-progress'] + (['--resume'] if resume else [])


def _wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f'the run ended before {path} appeared'
        assert time.time() < deadline
        time.sleep(0.01)


def _weights(folder):
    return load_file(str(Path(folder) / 'model.safetensors'))


@pytest.mark.parametrize('nproc,sig', [(1, signal.SIGTERM), (1, signal.SIGUSR1), (2, signal.SIGTERM)])
def test_a_stop_signal_saves_the_step_and_resume_loses_nothing(tmp_path, nproc, sig, signals_at_defaults):
    """The signal ends the run at a step boundary with a complete state there, stopped.json saying why and exit code
    75; --resume then finishes with the weights of an unbroken run with as many processes."""
    ref = recipe(tmp_path / 'ref')
    r = subprocess.run(_train_cmd(_write(tmp_path, ref, 'ref'), nproc=nproc), env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    out = tmp_path / 'run'
    path = _write(tmp_path, recipe(out), 'run')
    proc = subprocess.Popen(_train_cmd(path, nproc=nproc), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=signals_at_defaults)
    _wait_for(out / 'state' / 'step_00000050', proc)
    time.sleep(0.3)
    os.killpg(proc.pid, sig) if nproc > 1 else proc.send_signal(sig)
    time.sleep(0.05)
    os.killpg(proc.pid, sig) if nproc > 1 else proc.send_signal(sig)  # a second signal must not spoil the save
    output, _ = proc.communicate(timeout=300)
    if nproc == 1:
        assert proc.returncode == EXIT_PREEMPTED, output[-3000:]
    stopped = json.loads((out / 'stopped.json').read_text())
    assert stopped['signal'] == signal.Signals(sig).name and stopped['exit_code'] == EXIT_PREEMPTED
    state = latest_state(out)
    assert int(state.name.split('_')[1]) == stopped['step'] > 50, output[-3000:]
    # the step in progress finishes (several processes agree at the next log line, every 4 steps here)
    assert 0 <= stopped['step'] - stopped['signal_at_step'] <= (1 if nproc == 1 else 4), stopped
    assert not (out / 'final.json').exists() and not list((out / 'state').glob('.tmp*'))
    assert 'continue with --resume' in output

    r = subprocess.run(_train_cmd(path, resume=True, nproc=nproc), env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert not (out / 'stopped.json').exists()
    a, b = _weights(out), _weights(tmp_path / 'ref')
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    """The first run must still hold its claim when the second starts: 12 epochs of this tiny_recipe model can end in
    the seconds a second interpreter takes to start (the flaky case), so it trains far longer and is killed."""
    out = tmp_path / 'run'
    path = _write(tmp_path, recipe(out, epochs=100_000), 'run')
    first = subprocess.Popen(_train_cmd(path), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / 'run.lock', first)
        deadline = time.time() + 60  # the claim is created, then written: wait until it names its process
        while not (out / 'run.lock').read_text().strip().endswith('}'):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.01)
        r = subprocess.run(_train_cmd(path, resume=True), env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 2
        assert f'run folder {out} is in use by process {first.pid} on this host' in r.stderr
    finally:
        first.kill()
        first.wait()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_stops_cleanly_and_the_previous_state_resumes(tmp_path):
    """On a small filesystem the second state does not fit: the run stops with the folder, the space needed and
    free, the intact previous state named; no half-written state is left; the run resumes elsewhere."""
    disk = tmp_path / 'small_disk'
    if not _mount_tmpfs(disk, '240k'):
        pytest.skip('cannot mount a small tmpfs here (needs root and mount permission)')
    try:
        out = disk / 'run'
        path = _write(tmp_path, recipe(out, epochs=4, checkpoint={'every_steps': 20, 'keep': 5}), 'run')
        r = subprocess.run(_train_cmd(path), env=_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
        err = r.stderr.strip().splitlines()[-1]
        assert f'could not write the training state in {out}/state' in err, err
        assert ' MiB; ' in err and 'MiB are free there' in err and 'is intact' in err
        previous = latest_state(out)
        assert previous is not None and f'The previous state {previous} is intact' in err
        assert not list((out / 'state').glob('.tmp*'))
        copy = tmp_path / 'moved'
        subprocess.run(['cp', '-r', str(out), str(copy)], check=True)
    finally:
        subprocess.run(['umount', str(disk)], capture_output=True)
    r = subprocess.run(_train_cmd(path, resume=True) + ['--output-dir', str(copy)], env=_env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert json.loads((copy / 'final.json').read_text())['steps'] == 4 * 44


def test_a_failed_state_write_is_reported_wherever_the_disk_is(tmp_path, monkeypatch):
    """The same guarantee without a small filesystem: the write itself fails (as torch reports a full disk)."""
    import accelerate
    from timm_lipschitz.runs import StateSaveError
    from timm_lipschitz.train import train
    real = accelerate.Accelerator.save_state
    calls = {'n': 0}

    def failing(self, output_dir=None, **kwargs):
        calls['n'] += 1
        if calls['n'] == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / 'model.safetensors').write_bytes(b'half')
            raise RuntimeError('[enforce fail at inline_container.cc:820] . PytorchStreamWriter failed writing file '
                               'data/0: file write failed: unexpected pos 497856 vs 497744')
        return real(self, output_dir, **kwargs)
    monkeypatch.setattr(accelerate.Accelerator, 'save_state', failing)
    out = tmp_path / 'run'
    with pytest.raises(StateSaveError, match=r'could not write the training state in .*unexpected pos.*MiB are '
                                             r'free there\. The previous state .*step_00000020 is intact'):
        train(recipe(out, epochs=2, checkpoint={'every_steps': 20, 'keep': 5}), progress=False)
    assert [p.name for p in (out / 'state').iterdir()] == ['step_00000020']


def _slurm_grid(tmp_path):
    base = recipe(tmp_path / 'unused', epochs=8)
    base.pop('output_dir')
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump(base))
    grid = {'name': 'cluster', 'base': 'base.yaml', 'output_dir': str(tmp_path / 'sweep'),
            'axes': {'loss.sigma': [0.25, 0.5]}}
    (tmp_path / 'grid.yaml').write_text(yaml.safe_dump(grid))
    return tmp_path / 'grid.yaml'


def test_sweep_writes_a_slurm_job_array_that_requeues_and_resumes(tmp_path, signals_at_defaults):
    from timm_lipschitz.cli import main
    grid = _slurm_grid(tmp_path)
    script = tmp_path / 'jobs.sbatch'
    assert main(['sweep', str(grid), '--emit-commands', '--slurm', str(script), '--time', '01:00:00',
                 '--partition', 'short', '--mem', '8G']) == 0
    text = script.read_text()
    for directive in ('--array=0-1', '--signal=B:USR1@120', '--requeue', '--time=01:00:00', '--partition=short',
                      '--mem=8G', '--cpus-per-task=4', f'--output={tmp_path}/sweep/slurm/%A_%a.out'):
        assert f'#SBATCH {directive}\n' in text, directive
    assert '--gres' not in text  # fp32 recipe, no --gpus-per-task: a CPU job
    commands = [line for line in text.splitlines() if 'timm_lipschitz.train' in line]
    assert len(commands) == 2 and all('--resume' in c for c in commands)
    assert f'output_dir="{tmp_path}/sweep/s0.25"' in commands[0] and f'output_dir="{tmp_path}/sweep/s0.5"' in commands[1]
    assert main(['sweep', str(grid), '--emit-commands', '--slurm', str(tmp_path / 'gpu.sbatch'),
                 '--gpus-per-task', '2']) == 0
    gpu = (tmp_path / 'gpu.sbatch').read_text()
    assert '#SBATCH --gres=gpu:2' in gpu and '--nproc_per_node 2 -m timm_lipschitz.train' in gpu

    # run the script as SLURM would, with a stand-in scontrol that records the requeue
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'scontrol').write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/requeued\n')
    (bin_dir / 'scontrol').chmod(0o755)
    env = dict(_env(), PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_ARRAY_JOB_ID='77')
    done = subprocess.run(['bash', str(script)], env=dict(env, SLURM_ARRAY_TASK_ID='0'), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (tmp_path / 'sweep' / 's0.25' / 'final.json').is_file() and not (tmp_path / 'requeued').exists()

    task = subprocess.Popen(['bash', str(script)], env=dict(env, SLURM_ARRAY_TASK_ID='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=signals_at_defaults)
    _wait_for(tmp_path / 'sweep' / 's0.5' / 'state' / 'step_00000050', task)
    task.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends to the batch script
    output, _ = task.communicate(timeout=300)
    assert task.returncode == 0, output[-3000:]
    assert (tmp_path / 'requeued').read_text().split() == ['requeue', '77_1'], output[-3000:]
    assert json.loads((tmp_path / 'sweep' / 's0.5' / 'stopped.json').read_text())['signal'] == 'SIGTERM'
    again = subprocess.run(['bash', str(script)], env=dict(env, SLURM_ARRAY_TASK_ID='1'), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and 'resumed from' in again.stdout + again.stderr
    assert json.loads((tmp_path / 'sweep' / 's0.5' / 'final.json').read_text())['steps'] == 8 * 44


def _slurm(tmp_path, **extra):
    from timm_lipschitz.cli import main
    path = tiny_grid(tmp_path)
    script = tmp_path / 'jobs.sbatch'
    assert main(['sweep', str(path), '--emit-commands', '--slurm', str(script), *extra.get('argv', [])]) == 0
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / 'scontrol').write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/requeued\n')
    (bin_dir / 'scontrol').chmod(0o755)
    return script, child_env(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_ARRAY_JOB_ID='7', SLURM_ARRAY_TASK_ID='0')


def test_the_slurm_script_never_requeues_a_task_that_failed_before_stopping(tmp_path):
    script, env = _slurm(tmp_path)
    assert (tmp_path / 'sweep' / 'slurm').is_dir()  # SLURM opens its log there before the script runs
    text = script.read_text()
    assert f'run={tmp_path.resolve()}/sweep' in text
    run = tmp_path / 'sweep' / 'namecrossentropy'
    run.mkdir(parents=True)
    (run / 'recipe.yaml').write_text(yaml.safe_dump({**tiny_recipe(run), 'seed': 9}))  # its resume will be refused
    (run / 'stopped.json').write_text('{}')  # left by an earlier attempt
    done = subprocess.run(['bash', str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and 'seed: 9 -> 0' in done.stderr and not (tmp_path / 'requeued').exists()


def test_the_slurm_script_stops_requeueing_after_the_stated_number(tmp_path):
    script, env = _slurm(tmp_path, argv=['--max-requeues', '3'])
    text = script.read_text().replace('setsid bash -c "exec ${COMMANDS[$task]}" &',
                                      'setsid bash -c "echo {} > $run/stopped.json" &')  # a task that stops
    script.write_text(text)
    (tmp_path / 'sweep' / 'namecrossentropy').mkdir(parents=True)
    again = subprocess.run(['bash', str(script)], env=dict(env, SLURM_RESTART_COUNT='1'), capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and (tmp_path / 'requeued').read_text().split() == ['requeue', '7_0']
    over = subprocess.run(['bash', str(script)], env=dict(env, SLURM_RESTART_COUNT='3'), capture_output=True,
                          text=True, timeout=60)
    assert over.returncode == 75 and 'requeued 3 times already (at most 3)' in over.stderr
    assert (tmp_path / 'requeued').read_text().split() == ['requeue', '7_0']
