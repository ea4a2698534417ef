"""Grids: expansion, validation before any run, resumable execution, paper-layout tables, studies."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import tiny_grid
from timm_lipschitz.recipes import resolve_recipe
from timm_lipschitz.sweep import (GridError, expand_grid, load_grid, objective_table, paper_tables, point_name,
                                  run_sweep, sensitivity)

ROOT = Path(__file__).resolve().parent.parent


def _grid(tmp_path, **over):
    base = {'name': 'base', 'model': {'name': 'mnist_convnet'}, 'steps': 4, 'batch_size': 32,
            'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
            'loss': {'name': 'lipschitz_hinge', 'sigma': 0.25, 'beta': 1.0, 'lipschitz_target': 0.1},
            'optimizer': {'name': 'sgd', 'lr': 0.05}, 'log_with': [],
            'eval': {'sigmas': '0:0.5:0.1', 'every_epochs': 0}}
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump(base))
    grid = {'name': 'g', 'base': 'base.yaml', 'output_dir': str(tmp_path / 'sweep'),
            'axes': {'loss.sigma': [0.25, 0.5], 'loss.beta': [1.0, 5.0]},
            'include': [{'loss': {'name': 'cross_entropy'}}],
            'table': {'group': 'loss.sigma', 'rows': 'loss.lipschitz_target', 'cols': 'loss.beta'}}
    grid.update(over)
    path = tmp_path / 'grid.yaml'
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_digits_grid_runs_resumes_and_renders(tmp_path, capsys, drawn):
    path = _grid(tmp_path)
    results = run_sweep(path)
    out = tmp_path / 'sweep'
    names = {r['point'] for r in results['rows']}
    assert names == {'s0.25_b1', 's0.25_b5', 's0.5_b1', 's0.5_b5', 'cross_entropy'}
    tables = (out / 'tables.md').read_text()
    assert '### sigma = 0.25' in tables and '### sigma = 0.5' in tables and '| standard | - |' in tables
    curves = drawn['curves_sigma0.25.png']
    assert curves['png'] and sorted(curves['lines']) == ['s0.25_b1', 's0.25_b5', 'standard (cross_entropy)']
    rob = json.loads((out / 's0.25_b5' / 'robustness.json').read_text())['robustness']
    assert curves['lines']['s0.25_b5'] == (rob['sigmas'], rob['accuracy'])
    assert json.loads((out / 'results.json').read_text())['grid'] == 'g'
    # delete one point: only it runs again
    mtimes = {n: (out / n / 'final.json').stat().st_mtime for n in names}
    shutil.rmtree(out / 's0.5_b5')
    capsys.readouterr()
    run_sweep(path)
    assert '1 to run' in capsys.readouterr().out
    for n in names - {'s0.5_b5'}:
        assert (out / n / 'final.json').stat().st_mtime == mtimes[n]
    assert (out / 's0.5_b5' / 'final.json').is_file()


def test_parallel_jobs_run_points_as_subprocesses(tmp_path):
    path = _grid(tmp_path, axes={'loss.sigma': [0.25, 0.5]}, include=[])
    results = run_sweep(path, jobs=2)
    assert {r['point'] for r in results['rows']} == {'s0.25', 's0.5'}
    assert all(r['final']['steps'] == 4 for r in results['rows'])


def test_dry_run_and_emit_commands(tmp_path, capsys):
    path = _grid(tmp_path)
    assert run_sweep(path, dry_run=True) == {'points': 5, 'todo': 5}
    run_sweep(path, emit_commands=True)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith('accelerate launch')]
    assert len(lines) == 5 and all('-m timm_lipschitz.train' in x and '--resume' in x for x in lines)
    assert any('--set loss.sigma=0.5 ' in x for x in lines)
    assert not (tmp_path / 'sweep').exists()


@pytest.mark.parametrize('over,message', [
    ({'axes': {'loss.sigma': []}}, "axis 'loss.sigma' is empty"),
    ({'axes': {'optimiser.lr': [0.1]}}, "unknown axis key 'optimiser.lr'"),
    ({'axes': {'data.nme': ['digits']}}, "unknown axis key 'data.nme'"),
    ({'axes': {'loss.gamma': [1]}}, 'unknown recipe key loss.gamma'),
    ({'axes': {'epochs': ['ten']}}, 'epochs must be int'),
    ({'bogus': 1}, "unknown grid key"),
    ({'axes': {'loss.sigma': [0.5, -1]}}, r'grid point s-1 is not a valid recipe: loss\.sigma=-1 is not allowed'),
])
def test_bad_grids_are_rejected_before_any_run(tmp_path, over, message):
    path = _grid(tmp_path, **over)
    with pytest.raises(GridError, match=message):
        run_sweep(path)
    assert not (tmp_path / 'sweep').exists()


def test_invalid_base_recipe_is_rejected(tmp_path):
    path = _grid(tmp_path)
    (tmp_path / 'base.yaml').write_text(yaml.safe_dump({'epochs': 1, 'precision': 'fp8'}))
    with pytest.raises(GridError, match="precision='fp8'"):
        run_sweep(path)


@pytest.mark.parametrize('grid', sorted((ROOT / 'recipes' / 'grids').glob('*.yaml')), ids=lambda p: p.stem)
def test_shipped_grids_validate(grid):
    points = expand_grid(load_grid(grid))
    assert points and len({point_name(p) for p in points}) == len(points)


def _row(sigma, beta, ln, accs, seed=0, name='lipschitz_hinge'):
    loss = {'name': name} if name == 'cross_entropy' else {'name': name, 'sigma': sigma, 'beta': beta,
                                                           'lipschitz_target': ln}
    return {'point': f'{name}{sigma}{beta}{ln}{seed}', 'axes': {}, 'final': {},
            'recipe': {'loss': loss, 'seed': seed, 'data': {'train_fraction': 1.0}},
            'robustness': {'sigmas': [0.0, 0.3, 0.5], 'accuracy': accs}}


def test_paper_table_layout_bold_and_mean_std():
    rows = [_row(None, None, None, [92.77, 38.28, 18.01], name='cross_entropy'),
            _row(0.25, 1.0, 0.01, [88.0, 50.0, 23.0], seed=0), _row(0.25, 1.0, 0.01, [88.04, 51.12, 23.98], seed=1),
            _row(0.25, 5.0, 0.01, [82.49, 45.80, 21.68]), _row(0.25, 1.0, 0.1, [88.86, 63.01, 34.73]),
            _row(0.25, 5.0, 0.1, [88.21, 59.05, 31.17])]
    table = paper_tables({'rows': rows}, sigmas=(0.0, 0.3, 0.5))
    lines = table.splitlines()
    assert lines[0] == '### sigma = 0.25'
    assert lines[2] == ('| training | lipschitz_target | σ_test 0, beta 1 | σ_test 0, beta 5 | σ_test 0.3, beta 1 | '
                        'σ_test 0.3, beta 5 | σ_test 0.5, beta 1 | σ_test 0.5, beta 5 |')
    assert lines[4].startswith('| standard | - | **92.77** | **92.77** | 38.28 | 38.28 |')
    assert lines[5].startswith('| proposed | 0.01 | 88.02 ± 0.03 | 82.49 | 50.56 ± 0.79 |')
    assert lines[6] == '| proposed | 0.1 | 88.86 | 88.21 | **63.01** | **59.05** | **34.73** | **31.17** |'
    obj = objective_table({'rows': rows}, (0.0, 0.3))
    assert '| standard | 1 | **92.77** | 38.28 |' in obj


def test_objective_table_pools_only_seeds():
    # two seeds of one setting pool; a variant that differs in a non-loss override (here the input scaling) does not
    rows = [_row(None, None, None, [90.0, 40.0, 20.0], seed=s, name='cross_entropy') for s in (0, 1)]
    rows[1]['robustness'] = {'sigmas': [0.0, 0.3, 0.5], 'accuracy': [92.0, 44.0, 20.0]}
    variant = _row(None, None, None, [91.0, 60.0, 30.0], name='cross_entropy')
    variant['axes'] = {'model': {'mean': [0.0], 'std': [1.0]}, 'steps': 200, 'seed': 0}
    table = objective_table({'rows': rows + [variant]}, (0.0, 0.3))
    assert '| standard | 2 | **91.00 ± 1.41** | 42.00 ± 2.83 |' in table
    assert '| standard, model.mean [0.0], model.std [1.0], steps 200 | 1 | **91.00** | **60.00** |' in table


def test_sensitivity_reproduces_the_papers_slopes():
    # the paper's ResNet-20 entries around (sigma 0.25, beta 5, L_n 0.01) at sigma_test 0.3 (Tables 3 and 5)
    rows = [_row(0.25, 5.0, 0.01, [82.49, 45.80, 21.68]), _row(0.5, 5.0, 0.01, [82.72, 67.60, 43.91]),
            _row(0.25, 10.0, 0.01, [88.18, 58.56, 29.70]), _row(0.25, 5.0, 0.1, [88.21, 59.05, 31.17])]
    s = sensitivity({'rows': rows}, {'loss.sigma': 0.25, 'loss.beta': 5.0, 'loss.lipschitz_target': 0.01},
                    {'loss.sigma': 0.25, 'loss.beta': 5.0, 'loss.lipschitz_target': 0.09}, sigma_test=0.3)
    assert s['loss.sigma'] == pytest.approx(87.20, abs=0.01)
    assert s['loss.beta'] == pytest.approx(2.55, abs=0.01)
    assert s['loss.lipschitz_target'] == pytest.approx((59.05 - 45.80) / 0.09)


def test_train_fraction_study(tmp_path, drawn):
    path = _grid(tmp_path, axes={'data.train_fraction': [0.25, 1.0]}, include=[])
    results = run_sweep(path)
    assert {r['recipe']['data']['train_fraction'] for r in results['rows']} == {0.25, 1.0}
    images = {r['recipe']['data']['train_fraction']: r['final']['train_images'] for r in results['rows']}
    assert images == {0.25: round(0.25 * 1437), 1.0: 1437}  # the digits training split has 1,437 images
    study = drawn['fraction_study.png']
    assert study['png'] and sorted(study['lines']) == ['hinge, σ_test 0', 'hinge, σ_test 0.5']
    xs, ys = study['lines']['hinge, σ_test 0']
    by_fraction = {r['recipe']['data']['train_fraction']: r['final']['robustness']['acc@0'] for r in results['rows']}
    assert xs == [0.25, 1.0] and ys == [by_fraction[0.25], by_fraction[1.0]]


def test_only_real_standard_runs_make_the_standard_row():
    """A hinge with beta 0 trains on the task loss alone but feeds noisy images through train-mode BatchNorm: it is a
    run of its own, not pooled into 'standard' (0.1.0 pooled it)."""
    rows = [_row(None, None, None, [90.0, 40.0, 20.0], name='cross_entropy'),
            _row(0.5, 0.0, 0.01, [80.0, 70.0, 60.0]), _row(0.5, 1.0, 0.01, [85.0, 75.0, 65.0])]
    table = paper_tables({'rows': rows}, sigmas=(0.0,))
    assert '| standard | - | **90.00** | **90.00** |' in table
    obj = objective_table({'rows': rows}, (0.0,))
    assert '| standard | 1 | **90.00** |' in obj and 'hinge sigma 0.5, beta 0, lipschitz_target 0.01 | 1 | 80.00' in obj


def test_a_stale_point_is_reported_never_tabulated_and_rerun_only_on_request(tmp_path, capsys):
    from timm_lipschitz.sweep import run_sweep
    run_sweep(tiny_grid(tmp_path, steps=2))
    path = tiny_grid(tmp_path, steps=3)  # the grid edited after its point ran
    results = run_sweep(path)
    assert results['rows'] == [] and list(results['stale']) == ['namecrossentropy'] and 'steps' in \
        results['stale']['namecrossentropy']
    assert '[stale] namecrossentropy (differs in steps)' in capsys.readouterr().out
    tables = (tmp_path / 'sweep' / 'tables.md').read_text()  # the tables say what they left out, and why
    assert '## Stale points (not tabulated)' in tables and '| namecrossentropy | steps |' in tables
    from timm_lipschitz.cli import main
    assert main(['sweep', str(path), '--collect']) == 0
    assert '| namecrossentropy | steps |' in capsys.readouterr().out
    results = run_sweep(path, rerun_stale=True)
    assert [r['final']['steps'] for r in results['rows']] == [3] and not results['stale']
    kept = tmp_path / 'sweep' / 'namecrossentropy.stale-1'
    assert json.loads((kept / 'final.json').read_text())['steps'] == 2  # the old run is kept, not deleted


def test_a_seed_filter_never_loses_results_and_one_that_selects_nothing_is_an_error(tmp_path):
    from timm_lipschitz.sweep import GridError, run_sweep
    path = tiny_grid(tmp_path, seeds=[0, 1])
    run_sweep(path, seeds=[0])
    results = run_sweep(path, seeds=[1])  # the README's workflow: 0.2.0 kept seed 1 only
    assert sorted(r['point'] for r in results['rows']) == ['namecrossentropy_seed0', 'namecrossentropy_seed1']
    written = (tmp_path / 'sweep' / 'results.json').read_text()
    with pytest.raises(GridError, match=r'--seeds \[5\] selects no point of this grid \(its seeds: \[0, 1\]\)'):
        run_sweep(path, seeds=[5])
    with pytest.raises(GridError, match='selects no point'):
        run_sweep(path, seeds=[5], emit_commands=True, slurm={'path': str(tmp_path / 'x.sbatch')})
    assert (tmp_path / 'sweep' / 'results.json').read_text() == written and not (tmp_path / 'x.sbatch').exists()
    (tmp_path / 'noseeds').mkdir()
    with pytest.raises(GridError, match='the grid has no seeds axis'):
        run_sweep(tiny_grid(tmp_path / 'noseeds'), seeds=[0])


def test_a_grid_mapping_merges_into_the_base_section(tmp_path):
    """0.2.0: set: {optimizer: {lr: 0.01}} replaced the section, so weight decay 0.0005 became the default 0.0001."""
    from timm_lipschitz.sweep import expand_grid, load_grid
    from timm_lipschitz.sweep.grid import _overrides
    grid = load_grid(tiny_grid(tmp_path, extra={'set': {'optimizer': {'lr': 0.01}},
                                            'include': [{'loss': {'name': 'lipschitz_hinge', 'sigma': 0.5}}]}))
    recipes = [resolve_recipe(grid['base'], _overrides(grid, p, str(tmp_path / 'x'))) for p in expand_grid(grid)]
    assert all(r['optimizer']['lr'] == 0.01 and r['optimizer']['weight_decay'] == 0.0005 for r in recipes)
    assert recipes[1]['loss'] == {'name': 'lipschitz_hinge', 'sigma': 0.5}  # another loss starts its section clean


def test_table_labels_print_the_exact_value():
    """A point at sigma 0.5000001 is not labelled sigma 0.5 (0.2.0 formatted with :g); tags keep their scheme."""
    from timm_lipschitz.sweep.tables import _loss_label, _row_label
    row = {'recipe': {'loss': {'name': 'lipschitz_hinge', 'sigma': 0.5000001, 'beta': 1.0, 'lipschitz_target': 1e-05}},
           'axes': {'data.train_fraction': 0.25}}
    assert 'sigma 0.5000001' in _loss_label(row) and 'lipschitz_target 1e-05' in _loss_label(row)
    assert _row_label(row).endswith('data.train_fraction 0.25') and 'beta 1,' in _loss_label(row)



def test_a_grid_without_the_group_key_draws_one_plain_plot(tmp_path, drawn):
    """A margin grid has no loss.sigma: its curves are one plot named for the grid, not 'curves_sigmaNone.png'."""
    from timm_lipschitz.recipes import load_recipe
    from timm_lipschitz.sweep.tables import render
    recipe = load_recipe(ROOT / 'recipes' / 'lipschitz' / 'digits_lipmlp_margin.yaml')
    rows = [{'point': f'e{e}', 'recipe': {**recipe, 'loss': {**recipe['loss'], 'epsilon': e}}, 'final': {},
             'robustness': {'sigmas': [0.0, 0.5], 'accuracy': [90.0, 40.0 + e], 'accuracy_std': [0.0, 0.0],
                            'per_repeat': [[90.0], [40.0 + e]], 'num_images': 10, 'repeats': 1, 'seed': 0,
                            'clip': False, 'quantize': False}} for e in (0.5, 1.0)]
    render({'name': 'margin', 'output_dir': str(tmp_path)}, {'rows': rows})
    assert sorted(drawn) == ['curves.png'] and drawn['curves.png']['title'].startswith('margin\n')
    assert sorted(drawn['curves.png']['lines']) == ['e0.5', 'e1.0']
    assert '![margin](curves.png)' in (tmp_path / 'tables.md').read_text()
