"""Recipes and the one number checker: files that are not recipes, plugins that need consent, and every number of a
recipe, a grid, ``--set`` or a flag checked the same way (finite where finite is meant, in range, named by its key)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import child_env, tiny_grid, tiny_recipe
from timm_lipschitz.recipes import RecipeError, resolve_recipe


ROOT = Path(__file__).resolve().parent.parent


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
                             capture_output=True, text=True, env=child_env(), timeout=600)
    assert refused.returncode == 2 and "plugins: 'evil' would be imported from" in refused.stderr
    assert not (tmp_path / 'ran').exists()
    trusted = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', 'r.yaml',
                              '--trust-local-plugins'], cwd=tmp_path, capture_output=True, text=True, env=child_env(),
                             timeout=600)
    assert (tmp_path / 'ran').read_text() == 'yes' and f'plugins: imported evil from {tmp_path / "evil.py"}' in \
        trusted.stderr and "model.name='no_such_model'" in trusted.stderr


def test_a_negative_seed_is_refused_naming_the_key(tmp_path):
    from timm_lipschitz.sweep import GridError, run_sweep
    with pytest.raises(RecipeError, match=r'seed=-1 is not allowed; it must be an integer from 0'):
        resolve_recipe(tiny_recipe(tmp_path / 'run', seed=-1))
    with pytest.raises(GridError, match=r'seed=-1 is not allowed'):
        run_sweep(tiny_grid(tmp_path, seeds=[-1]), dry_run=True)


# ---- the one number checker -----------------------------------------------------------------------------------------
@pytest.mark.parametrize('override,message', [
    ('loss.sigma=.inf', 'loss.sigma=inf is not allowed; sigma must be a finite number > 0'),
    ('loss.beta=.inf', 'loss.beta=inf is not allowed; beta must be a finite number >= 0'),
    ('loss.lipschitz_target=.inf', 'loss.lipschitz_target=inf is not allowed'),
    ('loss={"name": "trades", "beta": .inf}', 'loss.beta=inf is not allowed'),
    ('loss={"name": "pgd_adversarial", "epsilon": .inf}', 'loss.epsilon=inf is not allowed'),
    ('loss={"name": "lipschitz_margin", "temperature": .inf}', 'loss.temperature=inf is not allowed'),
    ('optimizer.lr=.inf', 'optimizer.lr=inf is not allowed; give a finite number'),
    ('optimizer.lr=.nan', 'optimizer.lr=nan is not allowed'),
    ('model.kwargs.drop_rate=1.5', 'model.kwargs.drop_rate=1.5 is not allowed; give a finite number in [0, 1)'),
])
def test_a_number_out_of_range_is_refused_naming_its_key(override, message):
    from timm_lipschitz.recipes import RecipeError, resolve_recipe
    with pytest.raises(RecipeError, match=re.escape(message)):
        resolve_recipe(str(ROOT / 'recipes' / 'digits_lipschitz.yaml'), [override])


def test_yaml_exponents_are_numbers_in_recipes_sets_and_grids(tmp_path):
    """``1e-3`` is text to YAML 1.1; every paper writes learning rates that way."""
    from timm_lipschitz.recipes import resolve_recipe
    from timm_lipschitz.sweep import expand_grid, load_grid
    assert resolve_recipe(str(ROOT / 'recipes' / 'digits_lipschitz.yaml'), ['optimizer.lr=1e-3'])['optimizer'][
        'lr'] == 0.001
    (tmp_path / 'r.yaml').write_text(f'extends: {ROOT}/recipes/lipschitz/digits_lipconvnet_margin.yaml\n'
                                     'optimizer: {lr: 5E-4}\nloss: {lipschitz: 1e+0}\n')
    r = resolve_recipe(str(tmp_path / 'r.yaml'))
    assert r['optimizer']['lr'] == 0.0005 and r['loss']['lipschitz'] == 1.0
    (tmp_path / 'g.yaml').write_text(f'base: {ROOT}/recipes/digits_lipschitz.yaml\naxes: {{loss.lipschitz_target: '
                                     f'[1e-3, 1e-2]}}\n')
    assert [p['loss.lipschitz_target'] for p in expand_grid(load_grid(tmp_path / 'g.yaml'))] == [0.001, 0.01]


@pytest.mark.parametrize('kwargs,message', [
    ({'widths': []}, 'widths=() is not allowed'),
    ({'hidden_dim': 0}, 'hidden_dim=0 is not allowed'),
    ({'drop_rate': 1.5}, 'model.kwargs.drop_rate=1.5 is not allowed'),
])
def test_model_arguments_the_model_refuses_leave_no_stub(kwargs, message, tmp_path):
    """Refused before training, and nothing left behind: the corrected run starts (0.2.0 kept data.json and
    recipe.yaml and refused the corrected run as 'an unfinished run')."""
    from timm_lipschitz.errors import UserError
    from timm_lipschitz.train import train
    recipe = {'extends': str(ROOT / 'recipes' / 'lipschitz' / 'digits_lipconvnet_margin.yaml'),
              'model': {'kwargs': kwargs}, 'epochs': None, 'steps': 2, 'log_with': [],
              'eval': {'sigmas': [0.0], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run')}
    with pytest.raises(UserError, match=re.escape(message)):
        train(recipe, progress=False)
    assert not (tmp_path / 'run').exists() or not any((tmp_path / 'run').iterdir())
    assert train({**recipe, 'model': {'kwargs': {}}}, progress=False)['steps'] == 2


def test_a_run_that_fails_at_its_first_step_leaves_no_stub(tmp_path, monkeypatch):
    """Any failure before the first saved state (here a model argument only the forward refuses) rolls the new run
    back: the claim, data.json and recipe.yaml go, so the corrected run starts."""
    from timm_lipschitz.models import MnistConvNet
    from timm_lipschitz.train import train

    def broken(self, x):
        raise ValueError('a forward that fails at the first step')
    monkeypatch.setattr(MnistConvNet, 'forward', broken)
    recipe = {'name': 'tiny_recipe', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'steps': 2, 'log_with': [],
              'eval': {'sigmas': [0.0], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run')}
    with pytest.raises(ValueError):
        train(recipe, progress=False)
    assert not any((tmp_path / 'run').iterdir())
    monkeypatch.undo()
    assert train(recipe, progress=False)['steps'] == 2
