"""Backward compatibility: folders written by timm-lipschitz 0.1.0 (tests/fixtures/v0_1_0, made once by
tests/fixtures/make_v0_1_0.py) keep loading, reporting their scores and resuming, in this version and every later
one. Resuming the killed run must reproduce the finished run's weights: the training streams are bit-identical."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm_lipschitz.hub import load_robustness, read_metadata

import timm_lipschitz  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
V010 = ROOT / 'tests' / 'fixtures' / 'v0_1_0'


def test_v010_checkpoint_loads_through_timm_and_reports_its_scores():
    folder = V010 / 'finished'
    assert 'format_version' not in read_metadata(folder)  # written before format versions existed
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    weights = load_file(str(folder / 'model.safetensors'))
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    scores = load_robustness(folder)
    recorded = json.loads((folder / 'final.json').read_text())['robustness']
    assert scores['tag'] == 'lipschitz_hinge_s030_b1_l010_digits'
    assert {k: scores[k] for k in recorded} == recorded


def test_v010_scores_are_reproduced_by_todays_evaluation():
    """The evaluation noise stream of 0.1.0 is kept: re-evaluating the 0.1.0 weights gives its recorded numbers."""
    from timm_lipschitz.evaluate import load_model
    from timm_lipschitz.data import create_dataset
    from timm_lipschitz.robustness import noise_sweep
    model, _ = load_model(str(V010 / 'finished'))
    ds, _ = create_dataset('digits', 'test', input_size=(1, 8, 8))
    recorded = json.loads((V010 / 'finished' / 'robustness.json').read_text())['robustness']
    r = noise_sweep(model, ds, recorded['sigmas'])
    assert r.accuracy == pytest.approx(recorded['accuracy'], abs=1e-9)


def test_v010_killed_run_resumes_to_the_finished_weights(tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(V010 / 'unfinished', run)
    env = {'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin'}
    r = subprocess.run([sys.executable, '-m', 'timm_lipschitz.train', '--recipe', str(run / 'recipe.yaml'),
                        '--output-dir', str(run), '--resume', '--no-progress'], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert 'resumed from' in r.stdout and 'step 50' in r.stdout
    final = json.loads((run / 'final.json').read_text())
    assert final['steps'] == 60 and 'time_covers' in final and 'steps 50..60' in final['time_covers']
    a, b = load_file(str(run / 'model.safetensors')), load_file(str(V010 / 'finished' / 'model.safetensors'))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert read_metadata(run)['format_version'] == '2'


def test_v010_recipe_trains_to_the_same_weights_today(tmp_path):
    """Every training stream (model init, data order, objective noise) is drawn as 0.1.0 drew it: the fixture's
    recipe trained from scratch today gives 0.1.0's weights. 0.1.0 normalized with the model's default (MNIST)
    statistics where today's runs without mean/std use the data's own, so the test names them."""
    from timm_lipschitz.train import train
    s = train(str(V010 / 'recipe.yaml'), ['model.mean=[0.1307]', 'model.std=[0.3081]',
                                          f'output_dir={tmp_path / "again"}'], progress=False)
    a, b = load_file(str(Path(s['output_dir']) / 'model.safetensors')), load_file(
        str(V010 / 'finished' / 'model.safetensors'))
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


FIXTURES = Path(__file__).resolve().parent / 'fixtures'


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


def test_shipped_weights_are_bit_identical_to_the_files_released():
    """A shipped tag never changes what it loads: each weights file hashes as it did when it was shipped
    (``fixtures/shipped_sha256.json``; a new tag adds its line, an old one is never rewritten)."""
    import hashlib

    from timm_lipschitz.zoo import WEIGHTS_DIR, shipped
    pinned = json.loads((FIXTURES / 'shipped_sha256.json').read_text())
    index = shipped()
    assert set(pinned) <= set(index)
    for name, digest in pinned.items():
        assert hashlib.sha256((WEIGHTS_DIR / index[name]['file']).read_bytes()).hexdigest() == digest, name
