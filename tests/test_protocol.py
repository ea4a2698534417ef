"""The one-home modules: the evaluation protocol (grids, presets, lookup, mean ± std) and the seed-mixing rule."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from timm_lipschitz.protocol import (PAPER_SIGMAS, PRESETS, format_cell, index_on_grid, mean_std, parse_sigmas,
                                     resolve_protocol, summarize, value_at)
from timm_lipschitz.seeding import STREAMS, stream_seed

ROOT = Path(__file__).resolve().parent.parent


def test_presets_bring_their_clipping_and_rounding():
    p = resolve_protocol('cifar10c_gaussian')
    assert p.sigmas == (0.04, 0.06, 0.08, 0.09, 0.10) and p.clip and p.quantize
    assert resolve_protocol('0:0.5:0.01').sigmas == PAPER_SIGMAS and not resolve_protocol('0,0.1').clip
    assert resolve_protocol('0,0.1', clip=True).clip
    assert len(parse_sigmas('mnist')) == 101 and set(PRESETS) == {'paper', 'mnist', 'cifar10c_gaussian'}


def test_lookup_summary_and_mean_std_convention():
    grid = [0.0, 0.1, 0.30000000000000004, 0.5]
    assert index_on_grid(grid, 0.3) == 2 and value_at(grid, 'abcd', 0.3) == 'c' and value_at(grid, 'abcd', 0.2) is None
    assert summarize(grid, [90, 80, 60, 30]) == {'acc@0': 90, 'acc@0.3': 60, 'acc@0.5': 30, 'grid_mean': 65.0}
    m, sd, n = mean_std([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and sd == pytest.approx(1.0)  # sample std: n - 1 in the denominator
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert format_cell((88.02, 0.03, 2)) == '88.02 ± 0.03' and format_cell((88.0, 0.0, 1)) == '88.00'


def test_a_recipe_preset_means_what_the_eval_command_means(tmp_path):
    """eval.sigmas: cifar10c_gaussian in a recipe clips and rounds like timm-lipschitz eval --sigmas
    cifar10c_gaussian, and both measure the same accuracies."""
    from timm_lipschitz.cli import main
    from timm_lipschitz.evaluate import read_eval
    from timm_lipschitz.train import train
    s = train({'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'}, 'steps': 5, 'batch_size': 32,
               'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True}, 'log_with': [],
               'eval': {'sigmas': 'cifar10c_gaussian', 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run'),
               'optimizer': {'name': 'sgd', 'lr': 0.05}}, progress=False)
    rob = json.loads((Path(s['output_dir']) / 'robustness.json').read_text())['robustness']
    assert rob['clip'] and rob['quantize'] and rob['sigmas'] == [0.04, 0.06, 0.08, 0.09, 0.10]
    assert main(['eval', s['output_dir'], '--sigmas', 'cifar10c_gaussian', '--out', str(tmp_path / 'ev'),
                 '--device', 'cpu', '--no-progress']) == 0
    sweep = read_eval(tmp_path / 'ev' / 'eval.json')[s['name']]['sweep']
    assert sweep['clip'] and sweep['quantize'] and sweep['accuracy'] == rob['accuracy']


def test_every_stream_follows_the_one_rule_with_the_constants_of_0_1_0():
    assert stream_seed('evaluation_noise', 3, 5, 1) == (3 * 1_000_003 + 5) * 1_009 + 1
    assert stream_seed('augmentation', 3, 2, 1) == (3 * 1_000_003 + 2) * 1_009 + 1
    assert stream_seed('data_order', 3, 7) == 3 * 100_003 + 7
    assert stream_seed('objective_noise', 3) == 3 * 7919 + 17
    assert stream_seed('synthetic_data', 3, 2) == 5 and stream_seed('train_fraction', 3) == 3
    assert stream_seed('global', 4) == 4
    with pytest.raises(ValueError, match="takes keys \\('epoch',\\)"):
        stream_seed('data_order', 1)
    with pytest.raises(ValueError, match='unknown random stream'):
        stream_seed('nope', 1)
    assert all(len(s.multipliers) == len(s.keys) + len(s.fixed) for s in STREAMS.values())


def test_the_command_line_checks_a_recipe_without_loading_torch(tmp_path):
    """--help and recipe mistakes must answer fast: neither may import torch or timm (their time is measured in
    benchmarks/cli_speed.py)."""
    bad = tmp_path / 'bad.yaml'
    bad.write_text('epochs: 1\nloss: {name: lipschitz_hinge, sigma: -0.5}\n')
    code = ('import sys\nfrom timm_lipschitz.cli import main\n'
            f'rc = main(["train", "--recipe", {str(bad)!r}])\n'
            'assert rc == 2, rc\n'
            'assert "torch" not in sys.modules and "timm" not in sys.modules, "torch or timm was imported"\n'
            'try:\n    main(["--help"])\nexcept SystemExit:\n    pass\n'
            'assert "torch" not in sys.modules\n')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'loss.sigma=-0.5 is not allowed; sigma must be a finite number > 0' in r.stderr


def test_the_derived_grids_are_the_paper_grids():
    from timm_lipschitz import protocol as P
    assert P.PAPER_SIGMAS == tuple(round(0.01 * i, 2) for i in range(51))
    assert P.MNIST_SIGMAS == tuple(round(0.01 * i, 2) for i in range(101))
    assert [P.summary_label(k) for k in P.SUMMARY_KEYS] == ['clean', 'sigma 0.3', 'sigma 0.5', 'grid mean']


def test_radius_keys_are_the_ones_hub_list_reads():
    """The metadata keys certified accuracy by radius as ``hub list`` reads them ('1', not '1.0')."""
    from timm_lipschitz.listing import DETERMINISTIC_RADII
    from timm_lipschitz.protocol import CERT_RADII, by_radius
    keys = by_radius(CERT_RADII, range(len(CERT_RADII)))
    assert list(keys) == ['0', '0.25', '0.5', '0.75', '1'] and set(DETERMINISTIC_RADII) <= set(keys)
