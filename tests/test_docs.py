"""The reader's path: every code block of the README and of the topic pages in ``docs/`` runs as written (or is
checked against what it shows), the zoo table is what ``hub list`` prints, and the citation is the cards'."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import timm

import timm_lipschitz  # noqa: F401


ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_zoo_table_is_what_hub_list_prints_and_the_citation_is_the_cards():
    import re

    from timm_lipschitz.hub.card import CITATION
    from timm_lipschitz.listing import tag_rows, tag_table
    readme = (ROOT / 'README.md').read_text()
    zoo = re.search(r'<!-- zoo:[^\n]*-->\n(.*?)\n<!-- /zoo -->', readme, re.S).group(1)
    assert zoo.strip() == tag_table(tag_rows()).strip()
    cited = re.search(r'<!-- citation:[^\n]*-->\n```bibtex\n(.*?)\n```', readme, re.S).group(1)
    assert cited == CITATION
    for section in ('## Install', '## Quickstart', '## Model zoo', '## Training', '## Evaluation', '## Cite',
                    '## License'):
        assert f'\n{section}' in readme, section
    assert '## Design' not in readme and (ROOT / 'docs' / 'DESIGN.md').is_file()


def test_the_readme_quickstart_runs_as_written(capsys):
    import re
    readme = (ROOT / 'README.md').read_text()
    quick = readme.split('## Quickstart', 1)[1]
    code = re.search(r'```python\n(.*?)```', quick, re.S).group(1)
    exec(compile(code, 'README quickstart', 'exec'), {})
    assert capsys.readouterr().out.strip() in timm.create_model(
        'cifar_resnet20.lipschitz_hinge_s050_b1_l001_fmnist', pretrained=True).pretrained_cfg['label_names']


@pytest.fixture(scope='module')
def my_objectives(tmp_path_factory):
    text = (ROOT / 'README.md').read_text()
    code = re.search(r'<!-- example: my_objectives\.py -->\n```python\n(.*?)```', text, re.S).group(1)
    folder = tmp_path_factory.mktemp('plugin')
    (folder / 'my_objectives.py').write_text(code)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_readme_objective_trains_and_declares_itself(my_objectives, tmp_path):
    from timm_lipschitz.hub import parse_tag, read_metadata
    from timm_lipschitz.recipes import RecipeError, resolve_recipe
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
    with pytest.raises(RecipeError, match=r'loss\.weight=-1 is not allowed; weight must be a number >= 0'):
        resolve_recipe({**recipe, 'loss': {'name': 'noisy_cross_entropy', 'weight': -1}})
