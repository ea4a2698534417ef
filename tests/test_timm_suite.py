"""timm's own model test suite (``tests/test_models.py`` of the installed timm release) run on this plugin's names
and pretrained tags, the way timm runs it: markers ``base or cfg or features or torchscript``, the plugin imported
before collection. Nothing of timm's is copied here: the suite comes from timm's source distribution on the package
index (fetched once into a cache); without the index the test skips and says why."""
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import timm

import timm_lipschitz

CACHE = Path(os.environ.get('TIMM_LIPSCHITZ_CACHE', Path.home() / '.cache' / 'timm_lipschitz')) / 'timm-src'
MARKERS = 'base or cfg or features or torchscript'


def timm_test_file() -> Path:
    """``tests/test_models.py`` of timm ``timm.__version__``, from its sdist (``pip download --no-binary``)."""
    version = timm.__version__
    target = CACHE / f'timm-{version}' / 'tests' / 'test_models.py'
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, '-m', 'pip', 'download', f'timm=={version}', '--no-binary', ':all:',
                            '--no-deps', '--quiet', '-d', tmp], capture_output=True, text=True, timeout=600)
        sdists = list(Path(tmp).glob('timm-*.tar.gz'))
        if r.returncode or not sdists:
            pytest.skip(f'cannot fetch the source distribution of timm {version} from the package index (needed '
                        f'for timm\'s own tests/test_models.py): {r.stderr.strip()[-300:]}')
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f'timm-{version}/tests/')]
            tar.extractall(CACHE, members=members, filter='data')
    return target


def run_timm_suite(selection: str) -> str:
    test_file = timm_test_file()
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    cmd = [sys.executable, '-m', 'pytest', str(test_file), '-p', 'timm_lipschitz', '-m', MARKERS, '-k', selection,
           '-q', '-p', 'no:cacheprovider', '-W', 'ignore', '--import-mode=importlib', '-c', os.devnull,
           '--rootdir', str(test_file.parent.parent)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    return out


def _passed(out: str) -> int:
    m = re.search(r'(\d+) passed', out)
    return int(m.group(1)) if m else 0


def test_timms_model_suite_passes_for_every_name_and_tag():
    # the 1-Lipschitz models do not script (orthogonium's reparametrizers are not TorchScript-able); they export with
    # torch.export instead (tests/test_lipschitz_models.py). lip_mlp has one feature level (the image map), where
    # timm's features_only test asks every model for at least three.
    out = run_timm_suite('(cifar_ or mnist_convnet or lip_convnet or lip_mlp) and not 1202 '
                         'and not (torchscript and (lip_convnet or lipresnet or lip_mlp)) '
                         'and not (forward_features and lip_mlp)')
    names = [n for n in timm_lipschitz.list_registered() if n != 'cifar_resnet1202']
    from timm_lipschitz.models import LIPSCHITZ_NAMES
    from timm_lipschitz.models._pretrained import shipped
    tags = list(shipped())
    # every name: default_cfgs, torchscript (not the 1-Lipschitz ones), forward_features (not lip_mlp); every tag:
    # default_cfgs
    assert 'lip_mlp' in names
    assert _passed(out) >= 3 * len(names) - len(LIPSCHITZ_NAMES) - 1 + len(tags), out[-2000:]


@pytest.mark.slow
def test_timms_model_suite_passes_for_resnet1202():
    assert _passed(run_timm_suite('1202')) >= 3
