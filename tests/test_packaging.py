"""Every third-party package the code imports is declared in pyproject.toml (not only pulled in by another one)."""
import ast
import re
import sys
from pathlib import Path

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
