"""Every third-party package the code imports is declared in pyproject.toml (not only pulled in by another one)."""
import ast
import json
import re
import sys
from pathlib import Path

import timm_lipschitz  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
# import name -> distribution name, where they differ
DIST = {'yaml': 'pyyaml', 'PIL': 'pillow', 'sklearn': 'scikit-learn', 'huggingface_hub': 'huggingface-hub',
        'art': 'adversarial-robustness-toolbox'}


def _imported_top_level() -> set:
    names = set()
    for path in list((ROOT / 'timm_lipschitz').rglob('*.py')) + [ROOT / 'hubconf.py']:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return names - set(sys.stdlib_module_names) - {'timm_lipschitz', '__future__'}


def test_every_direct_import_is_declared():
    """In the dependencies, or (for an optional feature, imported where it is used) in an optional extra."""
    import tomllib
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    specs = project['dependencies'] + [d for extra in project['optional-dependencies'].values() for d in extra]
    declared = {re.split(r'[<>=!~\[ ]', d.strip())[0].lower().replace('_', '-') for d in specs}
    missing = {n for n in _imported_top_level() if DIST.get(n, n).lower().replace('_', '-') not in declared}
    assert not missing, f'imported but not declared in pyproject.toml: {sorted(missing)}'


def test_the_license_file_is_the_declared_license():
    """A LICENSE file at the root (setuptools puts it into the wheel's dist-info), the license pyproject declares."""
    text = (ROOT / 'LICENSE').read_text()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text
    assert 'Apache-2.0' in (ROOT / 'pyproject.toml').read_text()


_BLOCK_EXTRAS = '''
import importlib.machinery, sys
class _Hidden:
    """The path finder, blind to the extras' packages: find_spec says None (not installed), imports fail."""
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split('.')[0] in {'datasets', 'mlxtend', 'tensorboard', 'tensorboardX', 'art'}:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
    invalidate_caches = staticmethod(importlib.machinery.PathFinder.invalidate_caches)
    find_distributions = staticmethod(importlib.machinery.PathFinder.find_distributions)
sys.meta_path[:] = [_Hidden if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
for name in list(sys.modules):
    if name.split('.')[0] in {'datasets', 'mlxtend', 'tensorboard', 'tensorboardX', 'art'}:
        del sys.modules[name]
'''


def test_the_main_job_runs_without_the_extras_and_each_extra_says_how_to_install_it(tmp_path):
    """The README's digits job (shortened) in a process where datasets, mlxtend, tensorboard and ART cannot be
    imported; the sources that need them answer with the extra to install; ``--threads`` reaches torch."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    script = _BLOCK_EXTRAS + f'''
from timm_lipschitz.cli import main
from timm_lipschitz.data import create_dataset
from timm_lipschitz.data.base import DataError
rc = main(['train', '--recipe', {str(root / 'recipes/digits_lipschitz.yaml')!r}, '--set', 'epochs=null',
           '--set', 'steps=3', '--set', 'eval.sigmas=[0.0, 0.3]', '--output-dir', {str(tmp_path / 'run')!r},
           '--no-progress', '--threads', '1'])
assert rc == 0, rc
for name, extra in (('mnist_5k', 'mnist5k'), ('hf:some/dataset', 'hf')):
    try:
        create_dataset(name, 'test')
    except DataError as e:
        assert f"pip install 'timm-lipschitz[{{extra}}]'" in str(e), str(e)
    else:
        raise AssertionError(name)
print('OK')
'''
    r = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**__import__('os').environ, 'OMP_NUM_THREADS': ''})
    assert r.returncode == 0 and 'OK' in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
    final = json.loads((tmp_path / 'run' / 'final.json').read_text())
    assert final['threads'] == 1 and final['steps'] == 3
    # 8 px digits zero-padded to 16 px: the cfg lets timm's eval transform pad the same way (crop_pct 16 / 8)
    assert json.loads((tmp_path / 'run' / 'config.json').read_text())['pretrained_cfg']['crop_pct'] == 2.0
    assert 'threads=1' in r.stdout
