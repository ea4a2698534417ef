"""The reader's path: every code block of the README and of the topic pages in ``docs/`` runs as written or is checked
against what it shows (python blocks run, in order, one namespace per page; each command line of a bash block is
parsed by the command line it names and its recipe or grid is validated; YAML blocks validate as recipes), the zoo
table is what ``hub list`` prints, the citation is the cards', and the README stays a short front page."""
from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import List, Tuple

import pytest
import timm
import yaml
from timm_lipschitz.cli import build_parser
from timm_lipschitz.hub.card import CITATION
from timm_lipschitz.listing import tag_rows, tag_table
from timm_lipschitz.recipes import resolve_recipe
from timm_lipschitz.sweep import load_grid

import timm_lipschitz  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / 'README.md', *sorted(p for p in (ROOT / 'docs').glob('*.md') if p.name != 'DESIGN.md')]
BLOCK = re.compile(r'^```(\w*)\n(.*?)^```', re.S | re.M)


def _blocks(page: Path) -> List[Tuple[str, str, int]]:
    text = page.read_text()
    return [(m.group(1), m.group(2), text[:m.start()].count('\n') + 1) for m in BLOCK.finditer(text)]


# ---- bash: every command line is one the package accepts ----------------------------------------------------------
def _extras() -> set:
    return set(tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['optional-dependencies'])


def _check_train(argv: List[str]) -> None:
    args = build_parser().parse_args(['train', *argv])
    resolve_recipe(str(ROOT / args.recipe), args.overrides)


def _check_command(line: str) -> None:
    """One command of a bash block: the package's own command lines are parsed (and their recipe or grid
    validated); pip installs name existing extras; scripts and files exist."""
    words = shlex.split(line, comments=True)
    if not words:
        return
    if words[0] == 'timm-lipschitz':
        args = build_parser().parse_args(words[1:])
        if args.command == 'train':
            resolve_recipe(str(ROOT / args.recipe), args.overrides)
        elif args.command == 'sweep':
            load_grid(ROOT / args.grid)
        return
    if '-m' in words and words[words.index('-m') + 1] == 'timm_lipschitz.train':   # python -m, accelerate, torchrun
        i = words.index('-m')
        if words[0] == 'accelerate':
            config = words[words.index('--config_file') + 1] if '--config_file' in words else None
            assert config is None or (ROOT / config).is_file(), config
        _check_train(words[i + 2:])
        return
    if words[:2] == ['pip', 'install']:
        for extra in re.findall(r'\[([\w,]+)\]', line):
            assert set(extra.split(',')) <= _extras(), extra
        return
    if words[0] in ('python', 'python3') and words[1].endswith('.py'):
        assert (ROOT / words[1]).is_file(), words[1]
        return
    raise AssertionError(f'a command the docs test cannot check: {line!r}')


def _bash_cases():
    for page in PAGES:
        for i, (lang, code, line) in enumerate(_blocks(page)):
            if lang == 'bash' and not (page.name == 'README.md' and i == 0):  # the set-up block: readme-check runs it
                yield pytest.param(page, code, id=f'{page.name}:{line}')


@pytest.mark.parametrize('page,code', list(_bash_cases()))
def test_every_command_in_the_docs_is_one_the_package_accepts(page, code, monkeypatch):
    monkeypatch.chdir(ROOT)
    for line in code.replace('\\\n', ' ').splitlines():
        _check_command(line)


def test_the_readme_set_up_block_is_two_commands_and_the_second_is_ci_s_test_command():
    lang, code, _ = _blocks(ROOT / 'README.md')[0]
    lines = code.strip().splitlines()
    assert lang == 'bash' and len(lines) == 2
    assert 'timm-lipschitz train --recipe recipes/digits_lipschitz.yaml' in lines[0]
    assert lines[1].endswith('.venv/bin/python -m pytest -q')
    assert '.venv/bin/python -m pytest -q' in (ROOT / '.ci' / 'run').read_text()


# ---- python: every block runs ------------------------------------------------------------------------------------
@pytest.mark.parametrize('page', [p for p in PAGES if any(lang == 'python' for lang, _, _ in _blocks(p))],
                         ids=lambda p: p.name)
def test_every_python_block_runs_as_written(page, tmp_path, monkeypatch, capsys):
    """In order, one namespace per page (a later block may use an earlier one's names), in an empty folder. The
    ``my_objectives.py`` example is also imported as the plugin it says it is (below)."""
    from timm_lipschitz.losses import registry
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(registry, '_LOSSES', dict(registry._LOSSES))  # the page's example registers a loss
    namespace: dict = {}
    for lang, code, line in _blocks(page):
        if lang == 'python':
            exec(compile(code, f'{page.name}:{line}', 'exec'), namespace)
    out = capsys.readouterr().out
    if page.name == 'README.md':  # the quickstart printed a class name, then the certificates of 4 images
        first = out.splitlines()[0]
        assert first in timm.create_model('cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist',
                                          pretrained=True).pretrained_cfg['label_names']
        cert = namespace['cert']
        assert cert.certified.shape == (4, 2) and (cert.radius >= 0).all()


def test_every_yaml_block_is_a_valid_recipe_or_grid(tmp_path):
    found = 0
    for page in PAGES:
        for lang, code, line in _blocks(page):
            if lang != 'yaml':
                continue
            data = yaml.safe_load(code)
            path = tmp_path / f'{page.stem}_{line}.yaml'
            path.write_text(code.replace('extends: ', f'extends: {ROOT}/recipes/'))
            load_grid(path) if 'base' in data else resolve_recipe(str(path))
            found += 1
    assert found >= 0


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    text = (ROOT / 'README.md').read_text()
    assert len(text.splitlines()) <= 250
    for section in ('## Install', '## Quickstart', '## Model zoo', '## Where to read on', '## Cite', '## License'):
        assert f'\n{section}' in text, section
    for page in [ROOT / 'README.md', *PAGES[1:]]:
        for link in re.findall(r'\]\(((?!https?:)[^)#]+)\)', page.read_text()):
            assert (page.parent / link).exists(), (page.name, link)
    assert {p.name for p in PAGES[1:]} == {'training.md', 'objectives.md', 'evaluation.md', 'sweeps.md', 'hub.md'}


def test_the_readme_zoo_table_is_what_hub_list_prints_and_the_citation_is_the_cards():
    readme = (ROOT / 'README.md').read_text()
    zoo = re.search(r'<!-- zoo:[^\n]*-->\n(.*?)\n<!-- /zoo -->', readme, re.S).group(1)
    assert zoo.strip() == tag_table(tag_rows()).strip()
    cited = re.search(r'<!-- citation:[^\n]*-->\n```bibtex\n(.*?)\n```', readme, re.S).group(1)
    assert cited == CITATION


def test_the_design_notes_name_modules_that_exist():
    """DESIGN.md's layout block names each module; a renamed or removed one makes the notes stale."""
    text = (ROOT / 'docs' / 'DESIGN.md').read_text()
    layout = re.search(r'```\n(.*?)```', text, re.S).group(1)
    named = set(re.findall(r'([\w/]+\.py)', layout))
    missing = [n for n in named if not any((ROOT / 'timm_lipschitz').rglob(Path(n).name))]
    assert named and not missing, missing
    for heading in ('## Layout', '## One home for each guarantee', '## The record pipeline', '## Shipping a tag',
                    '## Adding a model', '## Imports', '## Tests'):
        assert f'\n{heading}' in text, heading


# ---- the objective example: a plugin in one file ----------------------------------------------------------------
@pytest.fixture(scope='module')
def my_objectives(tmp_path_factory):
    text = (ROOT / 'docs' / 'objectives.md').read_text()
    code = re.search(r'<!-- example: my_objectives\.py -->\n```python\n(.*?)```', text, re.S).group(1)
    folder = tmp_path_factory.mktemp('plugin')
    (folder / 'my_objectives.py').write_text(code)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop('my_objectives', None)


def test_the_objective_example_trains_and_declares_itself(my_objectives, tmp_path):
    from timm_lipschitz.hub import parse_tag, read_metadata
    from timm_lipschitz.recipes import RecipeError
    from timm_lipschitz.sweep import point_name
    from timm_lipschitz.sweep.tables import _loss_label
    from timm_lipschitz.train import train
    recipe = {'name': 'mine', 'plugins': ['my_objectives'], 'model': {'name': 'mnist_convnet'},
              'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
              'loss': {'name': 'noisy_cross_entropy', 'sigma': 0.5, 'weight': 2},
              'optimizer': {'name': 'sgd', 'lr': 0.05}, 'steps': 10, 'batch_size': 32, 'log_with': [],
              'eval': {'sigmas': [0.0, 0.5], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run')}
    summary = train(recipe, progress=False)
    assert summary['steps'] == 10 and summary['clean_accuracy'] > 10
    meta = read_metadata(tmp_path / 'run')
    assert meta['tag'] == 'noisy_cross_entropy_s050_w2_digits'
    assert parse_tag(meta['tag']).hparams == {'sigma': 0.5, 'weight': 2.0}
    assert point_name({'loss.sigma': 0.5, 'loss.weight': 2}) == 's0.5_w2'
    row = {'recipe': {'loss': recipe['loss']}}
    assert _loss_label(row) == 'noisy CE sigma 0.5, weight 2'
    with pytest.raises(RecipeError, match=r'loss\.weight=-1 is not allowed; weight must be a finite number >= 0'):
        resolve_recipe({**recipe, 'loss': {'name': 'noisy_cross_entropy', 'weight': -1}})
    assert os.path.isdir(my_objectives)
