"""Recipes and the one number checker: files that are not recipes, plugins that need consent, and every number of a
recipe, a grid, ``--set`` or a flag checked the same way (finite where finite is meant, in range, named by its key)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from timm_lipschitz.recipes import RecipeError, resolve_recipe


ROOT = Path(__file__).resolve().parent.parent


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT), HF_HUB_OFFLINE='1', **extra)


def tiny(out, **over):
    recipe = {'name': 'tiny', 'model': {'name': 'mnist_convnet', 'kwargs': {'hidden_dim': 16}},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
              'loss': {'name': 'cross_entropy'}, 'optimizer': {'name': 'sgd', 'lr': 0.05},
              'steps': 6, 'batch_size': 32, 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'log_with': [],
              'output_dir': str(out)}
    recipe.update(over)
    return recipe


def _grid(tmp_path, steps=2, seeds=None, extra=None):
    base = tiny(tmp_path / 'unused', steps=steps, optimizer={'name': 'sgd', 'lr': 0.05, 'weight_decay': 0.0005})
    base.pop('output_dir')
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump(base))
    grid = {'name': 'g', 'base': 'base.yaml', 'output_dir': str(tmp_path / 'sweep'),
            'axes': {'loss.name': ['cross_entropy']}, **(extra or {})}
    if seeds is not None:
        grid['seeds'] = seeds
    (tmp_path / 'grid.yaml').write_text(yaml.safe_dump(grid))
    return tmp_path / 'grid.yaml'


@pytest.mark.parametrize('content,message', [
    ('name: a\nsteps: 2\nname: b\n', r"duplicate key 'name' at lines 1 and 3"),
    ('', 'is empty'),
    (b'\x00\x01binary', 'is a binary file, not YAML text'),
    ('a: ' + 'x' * (2 ** 20 + 10) + '\n', r'has 1,048,\d+ bytes; a recipe is at most 1,048,576 bytes'),
])
def test_recipe_files_that_are_not_recipes_get_messages_that_say_so(tmp_path, content, message):
    path = tmp_path / 'r.yaml'
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(RecipeError, match=message):
        resolve_recipe(path)
    with pytest.raises(RecipeError, match='is a directory'):
        resolve_recipe(tmp_path)


def test_plugins_from_the_current_directory_need_consent(tmp_path):
    (tmp_path / 'evil.py').write_text("open('ran', 'w').write('yes')\n")
    recipe = {'extends': str(ROOT / 'recipes' / 'digits_standard.yaml'), 'plugins': ['evil'],
              'model': {'name': 'no_such_model'}}
    (tmp_path / 'r.yaml').write_text(yaml.safe_dump(recipe))
    refused = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', 'r.yaml'], cwd=tmp_path,
                             capture_output=True, text=True, env=_env(), timeout=600)
    assert refused.returncode == 2 and "plugins: 'evil' would be imported from" in refused.stderr
    assert not (tmp_path / 'ran').exists()
    trusted = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', 'r.yaml',
                              '--trust-local-plugins'], cwd=tmp_path, capture_output=True, text=True, env=_env(),
                             timeout=600)
    assert (tmp_path / 'ran').read_text() == 'yes' and f'plugins: imported evil from {tmp_path / "evil.py"}' in \
        trusted.stderr and "model.name='no_such_model'" in trusted.stderr


def test_a_negative_seed_is_refused_naming_the_key(tmp_path):
    from timm_lipschitz.sweep import GridError, run_sweep
    with pytest.raises(RecipeError, match=r'seed=-1 is not allowed; it must be an integer from 0'):
        resolve_recipe(tiny(tmp_path / 'run', seed=-1))
    with pytest.raises(GridError, match=r'seed=-1 is not allowed'):
        run_sweep(_grid(tmp_path, seeds=[-1]), dry_run=True)
