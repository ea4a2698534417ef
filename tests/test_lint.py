"""Lints: structural rules a reviewer would otherwise re-check by hand. Each test says what it guards; none of them
runs the package's features (those are the subject files' tests). They read the package's source (AST, docstrings
left out: a docstring may quote a constant to explain it)."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / 'timm_lipschitz'
OPTIONAL = {'art', 'datasets', 'mlxtend', 'tensorboard', 'tensorboardX'}  # imported only where a feature needs it


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob('*.py'))


def _code_nodes(path: Path) -> List[ast.AST]:
    """Every AST node of a module's code, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body and \
                isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    return [n for n in ast.walk(tree) if id(n) not in docstrings]


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple) and all(isinstance(e, ast.Constant) for e in node.elts):
        return tuple(e.value for e in node.elts)
    return None


def _where(value) -> List[str]:
    found = []
    for path in _modules():
        for node in _code_nodes(path):
            lit = _literal(node)
            if lit is not None and type(lit) is type(value) and lit == value:
                found.append(str(path.relative_to(PACKAGE)))
            elif isinstance(value, str) and isinstance(lit, str) and len(value) > 8 and value in lit and lit != value:
                found.append(str(path.relative_to(PACKAGE)) + ' (inside a string)')
    return found


# ---- one home for each guarantee ----------------------------------------------------------------------------------
@pytest.mark.parametrize('value,home', [
    ((0.0, 0.3, 0.5), ['protocol.py']),                     # the paper's table columns
    ((0.0, 0.25, 0.5, 0.75, 1.0), ['protocol.py']),         # certified-accuracy radii
    ((1, 2, 3, 4, 5), ['protocol.py']),                     # corruption severities
    ((0.04, 0.06, 0.08, 0.09, 0.10), ['protocol.py']),      # CIFAR-10-C Gaussian sigmas
    ('0:0.5:0.01', ['protocol.py']),                        # the default evaluation grid
    ('1,2,3,4,5', []),                                      # the --severities default is derived
    (('paper', 'mnist', 'cifar10c_gaussian'), []),          # --preset's choices are the presets
    ('| clean | sigma 0.3 | sigma 0.5 | grid mean |', []),  # the card's summary header is derived
    ('final.json', ['runs.py']),                            # the run folder's file names
    ('stopped.json', ['runs.py']),
    ('diverged.json', ['runs.py']),
    ('run.lock', ['runs.py']),
    ('metrics.jsonl', ['runs.py']),
    ('config.json', ['folders.py']),                        # its name once (hub/files.read_config reads it)
    ('deterministic_certificate', ['certificates.py']),     # the certificate's one record name
])
def test_each_constant_is_defined_once(value, home):
    """A protocol constant, a file name or a record key restated elsewhere drifts from its home."""
    assert _where(value) == home


def _is_sqrt2(node: ast.AST) -> bool:
    if isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', None)) == 'sqrt':
        return len(node.args) == 1 and _literal(node.args[0]) == 2
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and _literal(node.left) == 2 and \
        _literal(node.right) == 0.5


def _folds_a_std(node: ast.AST) -> bool:
    """``min(std ...)`` or ``1 / <...std...>``: a per-channel std turned into a Lipschitz factor."""
    if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'min':
        return any('std' in ast.unparse(a) or 'sd' == ast.unparse(a) for a in node.args)
    return False


def test_the_certificate_rules_live_in_the_certificates_module():
    """Outside ``certificates.py`` no package code writes the sqrt(2) margin rule or folds a std into a constant:
    the margin objective and the evaluation both call its rule (tests/test_certificates.py checks they do)."""
    found = [f'{path.relative_to(PACKAGE)}:{node.lineno}' for path in _modules() for node in _code_nodes(path)
             if _is_sqrt2(node) or _folds_a_std(node)]
    assert {f.split(':')[0] for f in found} == {'certificates.py'}, found


def test_the_resolvers_of_a_model_source_are_one():
    """Only ``hub/sources.py`` turns a tag, a folder or ``hf-hub:`` into a model; ``timm.create_model`` with
    ``pretrained=True`` elsewhere would be a second resolver with its own rules."""
    found = []
    for path in _modules():
        for node in _code_nodes(path):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'create_model' and \
                    any(k.arg == 'pretrained' and _literal(k.value) is True for k in node.keywords):
                found.append(str(path.relative_to(PACKAGE)))
    assert set(found) <= {'hub/sources.py'}, found


def test_no_module_switches_a_model_to_eval_but_eval_mode():
    """``modes.eval_mode`` hands a model back in its own mode; a bare ``.eval()`` leaves BatchNorm frozen."""
    calls = [f'{path.relative_to(PACKAGE)}:{node.lineno}' for path in _modules() for node in _code_nodes(path)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'eval'
             and not node.args]
    assert {c.split(':')[0] for c in calls} == {'modes.py'}, calls


# ---- imports ------------------------------------------------------------------------------------------------------
def _local_imports() -> Iterator[Tuple[str, int, str]]:
    for path in _modules():
        def visit(node, in_func):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    yield from visit(child, True)
                elif isinstance(child, (ast.Import, ast.ImportFrom)):
                    if in_func:
                        root = child.names[0].name if isinstance(child, ast.Import) else \
                            '.' * child.level + (child.module or '')
                        yield str(path.relative_to(PACKAGE)), child.lineno, root
                else:
                    yield from visit(child, in_func)
        yield from visit(ast.parse(path.read_text()), False)


def test_function_local_imports_only_for_optional_dependencies_and_at_the_cli():
    """The import graph a reader sees is the one that runs: a module imports what it uses at its top, except an
    optional dependency (imported where its feature runs, with its install hint) and the command line's handing over
    to a command (``cli.py``: ``--help`` answers without torch). Torch-free modules defer torch through the one
    lazy-import device, ``_lazy.lazy_module``."""
    bad = [f'{m}:{line} imports {name}' for m, line, name in _local_imports()
           if m != 'cli.py' and name.lstrip('.').split('.')[0] not in OPTIONAL]
    assert not bad, bad


def test_one_lazy_import_device():
    """Besides the hook that registers the models when timm is imported, only ``_lazy.lazy_module`` defers an
    import: no module-level ``__getattr__`` table."""
    found = [str(p.relative_to(PACKAGE)) for p in _modules() for n in ast.parse(p.read_text()).body
             if isinstance(n, ast.FunctionDef) and n.name == '__getattr__']
    assert not found, found


def test_an_extras_package_is_never_needed_by_a_plain_install():
    """Each optional extra's packages (read from pyproject.toml) are imported only inside the function that needs
    them, so ``pip install timm-lipschitz`` runs every other feature; and the extras are the optional set above."""
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    dist_to_import = {'adversarial-robustness-toolbox': 'art'}
    extras = {name: {dist_to_import.get(re.split(r'[<>=!~\[ ]', d)[0], re.split(r'[<>=!~\[ ]', d)[0])
                     for d in deps} for name, deps in project['optional-dependencies'].items() if name != 'dev'}
    optional = set().union(*extras.values())
    assert optional <= OPTIONAL, optional - OPTIONAL
    top = {(str(p.relative_to(PACKAGE)), n.lineno) for p in _modules() for n in ast.parse(p.read_text()).body
           if isinstance(n, (ast.Import, ast.ImportFrom)) and
           ((n.names[0].name if isinstance(n, ast.Import) else n.module or '').split('.')[0] in optional)}
    assert not top, top
    hard = {re.split(r'[<>=!~\[ ]', d)[0].lower() for d in project['dependencies']}
    assert not hard & {d.lower() for deps in project['optional-dependencies'].values() if deps for d in
                       (re.split(r'[<>=!~\[ ]', x)[0] for x in deps)} - {'pytest', 'pytest-timeout'}


# ---- size ---------------------------------------------------------------------------------------------------------
def _functions() -> Iterator[Tuple[str, int]]:
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f'{path.relative_to(PACKAGE)}:{node.name}', node.end_lineno - node.lineno + 1


def test_train_reads_in_one_pass_and_no_function_is_long():
    """``train()`` is Accelerate's one readable training function (<= 60 lines); no function exceeds 80 lines."""
    lengths = dict(_functions())
    assert lengths['train/__init__.py:train'] <= 60
    assert {k: n for k, n in lengths.items() if n > 80} == {}


# ---- words --------------------------------------------------------------------------------------------------------
def test_results_and_docs_speak_of_the_project_only():
    """What users read names the project's own work, not how it was organized while being built."""
    texts = [ROOT / 'benchmarks' / 'RESULTS.md', ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]
    found = {str(p.relative_to(ROOT)): re.findall(r'\bsessions?\b|\bissue \d+|\blent\b|\bborrowed\b', p.read_text(),
                                                 re.I) for p in texts}
    assert not any(found.values()), found


def test_python_versions_agree():
    """``requires-python`` admits the interpreter the suite runs on."""
    spec = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['requires-python']
    assert spec.startswith('>=') and sys.version_info[:2] >= tuple(int(v) for v in spec[2:].split('.'))
