"""The package's structure keeps its promises: each protocol constant and file name has one home, the one mode
switch hands every model back in its mode, names and random draws that finished runs depend on are pinned, refusals
and bugs are told apart on the command line, and the orchestration reads in one pass."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'timm_lipschitz'
FIXTURES = Path(__file__).resolve().parent / 'fixtures'


# ---- one home per constant -----------------------------------------------------------------------------------------
def _code_nodes(path: Path):
    """Every AST node of a module's code, docstrings left out (they may quote a constant to explain it)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [n for n in ast.walk(tree) if id(n) not in docstrings]


def _literal(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def _where(value) -> list:
    found = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in _code_nodes(path):
            lit = _literal(node)
            if lit is not None and type(lit) is type(value) and lit == value:
                found.append(str(path.relative_to(PACKAGE)))
            elif isinstance(value, str) and isinstance(lit, str) and len(value) > 8 and value in lit and lit != value:
                found.append(str(path.relative_to(PACKAGE)) + ' (inside a string)')
    return found


@pytest.mark.parametrize('value,home', [
    ((0.0, 0.3, 0.5), ['protocol.py']),                     # the paper's table columns
    ((0.0, 0.25, 0.5, 0.75, 1.0), ['protocol.py']),         # certified-accuracy radii
    ((1, 2, 3, 4, 5), ['protocol.py']),                     # corruption severities
    ((0.04, 0.06, 0.08, 0.09, 0.10), ['protocol.py']),      # CIFAR-10-C Gaussian sigmas
    ('0:0.5:0.01', ['protocol.py']),                        # the default evaluation grid
    ('1,2,3,4,5', []),                                                 # the --severities default is derived
    (('paper', 'mnist', 'cifar10c_gaussian'), []),                     # --preset's choices are the presets
    ('| clean | sigma 0.3 | sigma 0.5 | grid mean |', []),              # the card's summary header is derived
    ('final.json', ['runs.py']),
    ('stopped.json', ['runs.py']),
    ('diverged.json', ['runs.py']),
    ('run.lock', ['runs.py']),
    ('metrics.jsonl', ['runs.py']),
])
def test_each_constant_is_defined_once(value, home):
    assert _where(value) == home


def test_the_derived_grids_are_the_paper_grids():
    from timm_lipschitz.robustness import protocol as P
    assert P.PAPER_SIGMAS == tuple(round(0.01 * i, 2) for i in range(51))
    assert P.MNIST_SIGMAS == tuple(round(0.01 * i, 2) for i in range(101))
    assert [P.summary_label(k) for k in P.SUMMARY_KEYS] == ['clean', 'sigma 0.3', 'sigma 0.5', 'grid mean']


# ---- one mode switch ------------------------------------------------------------------------------------------------
def test_no_module_switches_a_model_to_eval_but_eval_mode():
    calls = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in _code_nodes(path):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'eval' \
                    and not node.args:
                calls.append(f'{path.relative_to(PACKAGE)}:{node.lineno}')
    assert {c.split(':')[0] for c in calls} == {'modes.py'}, calls  # eval_mode and for_inference


class _TinyNet(nn.Module):
    """BatchNorm makes the mode matter; a timm-like pretrained_cfg lets the package's helpers read it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.num_classes = 3
        self.pretrained_cfg = {'input_size': (1, 8, 8), 'mean': (0.5,), 'std': (0.5,)}

    def forward_features(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean((2, 3)))


def _data(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3)


def _uses():
    from timm_lipschitz.losses import create_loss
    from timm_lipschitz.robustness.certify import Smooth
    from timm_lipschitz.robustness.lipschitz import margin_certificate, pgd_lower_bound, sampled_k
    from timm_lipschitz.robustness.noise import noise_sweep
    from timm_lipschitz.robustness.report import demo_grid
    from timm_lipschitz.train.build import _feature_map_size
    from timm_lipschitz.train.outputs import evaluate_clean

    class _Acc:
        def gather_for_metrics(self, x):
            return x
    return {
        'sampled_k': lambda m, tmp: sampled_k(m, _data(), 0.1),
        'pgd_lower_bound': lambda m, tmp: pgd_lower_bound(m, _data(), steps=1),
        'margin_certificate': lambda m, tmp: margin_certificate(m, _data(), 10.0),
        'smoothing': lambda m, tmp: Smooth(m, 3, 0.25).certify(_data()[0][0], 5, 10, 0.01),
        'demo_grid': lambda m, tmp: demo_grid({'m': m}, _data()[0][0], 0, tmp / 'demo.png', sigmas=(0.0, 0.1)),
        'noise_sweep': lambda m, tmp: noise_sweep(m, _data(), [0.0, 0.1], progress=False),
        'feature_map_size': lambda m, tmp: _feature_map_size(m, (1, 8, 8)),
        'evaluate_clean': lambda m, tmp: evaluate_clean(m, torch.utils.data.DataLoader(_data()), _Acc(),
                                                        lambda model, x: x),
        'clean_logits': lambda m, tmp: create_loss('gaussian_augmentation', sigma=0.1).clean_logits(
            m, _data()[0][0][None]),
    }


@pytest.mark.parametrize('name', sorted(_uses()))
def test_every_evaluation_hands_the_model_back_in_its_mode(name, tmp_path):
    model = _TinyNet().train()
    seen = []
    model.bn.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    _uses()[name](model, tmp_path)
    assert model.training and all(m.training for m in model.modules())
    assert seen and not any(seen), 'the measurement ran in train mode'


def test_an_attack_hands_the_model_back_in_its_mode():
    pytest.importorskip('art')
    from timm_lipschitz.robustness.attacks import attack_sweep
    model = _TinyNet().train()
    attack_sweep(model, _data(4), norms=['l2'], eps={'l2': [0.5]}, steps=1, max_images=4)
    assert model.training


# ---- names and draws that finished runs depend on ------------------------------------------------------------------
def test_point_folders_file_labels_and_dataset_codes_are_unchanged():
    """The names 0.2.0 wrote (every grid's point folders, file labels, dataset codes in tags): renaming them would
    make a finished sweep rerun its points or orphan its files."""
    from timm_lipschitz.evaluate.run import FILE_CHARS, safe_name
    from timm_lipschitz.hub.tags import dataset_code
    from timm_lipschitz.sweep import expand_grid, load_grid, point_name
    pinned = json.loads((FIXTURES / 'names_v0_2_0.json').read_text())
    for grid, names in pinned['points'].items():
        assert [point_name(p) for p in expand_grid(load_grid(ROOT / 'recipes' / 'grids' / grid))] == names, grid
    assert {k: safe_name(k, FILE_CHARS, '_') for k in pinned['file_labels']} == pinned['file_labels']
    assert {k: dataset_code(k) for k in pinned['dataset_codes']} == pinned['dataset_codes']


def test_shipped_tags_still_name_their_configuration():
    from timm_lipschitz.hub import make_tag, parse_tag
    from timm_lipschitz.models._pretrained import shipped
    tags = [name.split('.', 1)[1] for name in shipped()]
    assert tags
    for tag in tags:
        parsed = parse_tag(tag)
        assert make_tag(parsed.objective, parsed.hparams, parsed.dataset) == tag


def test_corruption_ids_are_explicit_and_complete():
    from timm_lipschitz.robustness import corruptions as C
    assert len(C.BENCHMARK) == 15 and len(C.EXTRA) == 4
    assert set(C.BENCHMARK) | set(C.EXTRA) == set(C.CORRUPTIONS) == set(C.CORRUPTION_IDS)
    assert len(set(C.CORRUPTION_IDS.values())) == len(C.CORRUPTION_IDS)


def test_every_corruptions_draws_on_a_fixed_image_are_pinned():
    """Outputs stored by 0.2.0 (seed 3, image index 11, severities 1 and 5, RGB and gray): inserting or reordering a
    corruption can never change another's draws. JPEG and zoom go through PIL and scipy, so one uint8 level of
    difference is allowed on at most 1% of the pixels."""
    from timm_lipschitz.robustness.corruptions import corrupt
    pinned = np.load(FIXTURES / 'corruption_draws.npz')
    checked = 0
    for key in pinned.files:
        if key.startswith('image_'):
            continue
        name, sev, chans = key.rsplit('_', 2)
        image = torch.from_numpy(pinned[f'image_{chans}']).float() / 255
        out = (corrupt(image, name, int(sev[1:]), seed=3, index=11) * 255).round().to(torch.uint8).numpy()
        diff = np.abs(out.astype(int) - pinned[key].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, key
        checked += 1
    assert checked == 72


def test_attack_random_starts_keep_their_seeds():
    """The attacks' per-norm start is a key of the declared attack_start stream: the same seeds as 0.2.0's
    ``stream_seed('attack_start', seed) + k``, and the PGD lower bound's start is key 0."""
    from timm_lipschitz.seeding import stream_seed
    assert [stream_seed('attack_start', 7, k) for k in range(3)] == [7, 8, 9]


# ---- refusals and bugs ----------------------------------------------------------------------------------------------
def test_every_refusal_is_a_user_error():
    from timm_lipschitz.data import DataError
    from timm_lipschitz.errors import UserError
    from timm_lipschitz.hub import CheckpointError, TagError
    from timm_lipschitz.losses import HyperparameterError
    from timm_lipschitz.recipes import RecipeError
    from timm_lipschitz.robustness.attacks import AttackError
    from timm_lipschitz.runs import RunFolderError, StateSaveError
    from timm_lipschitz.sweep import GridError
    from timm_lipschitz.train import EXIT_PREEMPTED, Preempted, TrainingDiverged
    for cls in (DataError, CheckpointError, TagError, HyperparameterError, RecipeError, AttackError, RunFolderError,
                StateSaveError, GridError, Preempted, TrainingDiverged):
        assert issubclass(cls, UserError), cls
    assert Preempted.exit_code == EXIT_PREEMPTED == 75


def test_a_bug_keeps_its_traceback_and_a_refusal_is_one_line(monkeypatch, capsys):
    from timm_lipschitz import cli
    from timm_lipschitz.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, UsageError

    def failing(exc):
        def run(args):
            raise exc
        return run
    for exc, code in ((RuntimeError('an internal torch error'), EXIT_INTERNAL_ERROR),
                      (UsageError('--x 3 is not allowed'), EXIT_USER_ERROR)):
        monkeypatch.setitem(cli.COMMANDS, 'convert', (*cli.COMMANDS['convert'][:2], failing(exc)))
        assert cli.main(['convert', 'a.pt', 'out']) == code
        err = capsys.readouterr().err
        assert ('Traceback' in err) == (code == EXIT_INTERNAL_ERROR)
        assert str(exc) in err
    assert EXIT_INTERNAL_ERROR not in (0, EXIT_USER_ERROR, 75)


# ---- run folders -----------------------------------------------------------------------------------------------------
def test_a_folder_holding_an_unfinished_run_is_refused(tmp_path):
    """The README: a folder holding a run, finished or not, is refused without --resume (the finished case is in
    test_runs.py)."""
    from timm_lipschitz.runs import RunFolderError
    from timm_lipschitz.train import train
    out = tmp_path / 'run'
    (out / 'state' / 'step_00000002').mkdir(parents=True)
    (out / 'recipe.yaml').write_text('name: earlier\n')
    recipe = {'extends': str(ROOT / 'recipes' / 'digits_standard.yaml'), 'output_dir': str(out), 'epochs': None,
              'steps': 1}
    with pytest.raises(RunFolderError, match=r'already holds an unfinished run \(last state: step 2\)'):
        train(recipe)
    assert (out / 'recipe.yaml').read_text() == 'name: earlier\n' and not (out / 'run.lock').exists()


def test_a_resolved_recipe_is_not_resolved_again(monkeypatch):
    """The command line resolves once (answering mistakes before torch loads) and hands the result on."""
    import timm_lipschitz.recipes as recipes
    import timm_lipschitz.train as train_pkg
    from timm_lipschitz import cli
    calls = []
    real = recipes.resolve_recipe

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)
    monkeypatch.setattr(recipes, 'resolve_recipe', counting)
    monkeypatch.setattr(train_pkg, 'resolve_recipe', counting)
    code = cli.main(['train', '--recipe', str(ROOT / 'recipes' / 'digits_standard.yaml'),
                     '--set', 'model.name=no_such_model'])
    assert code == 2 and len(calls) == 1


# ---- reads in one pass ---------------------------------------------------------------------------------------------
def _functions():
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f'{path.relative_to(PACKAGE)}:{node.name}', node.end_lineno - node.lineno + 1


def test_train_reads_in_one_pass_and_no_function_is_long():
    lengths = dict(_functions())
    assert lengths['train/__init__.py:train'] <= 60
    assert {k: n for k, n in lengths.items() if n > 80} == {}
