"""Common corruptions (CIFAR-10-C) computed on the fly: each against a reference computation, determinism, range,
identities, the shared Gaussian-noise path, and the eval command's outputs read back."""
import json

import numpy as np
import pytest
import timm
import torch
from scipy import ndimage
from timm_lipschitz.robustness import corruptions as C
from timm_lipschitz.robustness.corruptions import (CORRUPTIONS, MISSING, corrupt_batch, corruption_sweep,
                                                   resolve_corruptions)

import timm_lipschitz  # noqa: F401

AVAILABLE = [n for n in CORRUPTIONS if n not in MISSING]


def _images(n=6, shape=(3, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


class Constant(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.pretrained_cfg = {'mean': (0.5,), 'std': (0.5,)}

    def forward(self, x):
        out = torch.zeros(x.shape[0], 3) + self.w
        out[:, 1] = 1
        return out


def test_the_table_holds_the_benchmark_and_its_extras():
    assert len(C.BENCHMARK) == 15 and C.EXTRA == ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
    assert CORRUPTIONS['gaussian_noise'][2] == (0.04, 0.06, .08, .09, .10)       # make_cifar_c's, not ImageNet-C's
    assert CORRUPTIONS['shot_noise'][2] == (500, 250, 100, 75, 50)
    assert CORRUPTIONS['jpeg_compression'][2] == (80, 65, 58, 50, 40)
    assert set(MISSING) == {'frost'} and 'frost' not in resolve_corruptions('all')
    assert resolve_corruptions('blur') == ['defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur', 'gaussian_blur']


@pytest.mark.parametrize('shape', [(3, 32, 32), (1, 16, 16), (1, 28, 28)])
@pytest.mark.parametrize('name', AVAILABLE)
def test_every_corruption_is_deterministic_in_range_and_stored_as_uint8(name, shape):
    x = _images(5, shape)
    a = corrupt_batch(x, name, 3, seed=7, indices=[10, 11, 12, 13, 14])
    b = torch.cat([corrupt_batch(x[i:i + 1], name, 3, seed=7, indices=[10 + i]) for i in (0, 1, 2, 3, 4)])
    assert torch.equal(a, b)  # per image: the same whatever the batch
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-3)
    assert torch.equal(corrupt_batch(x, name, 0, 7, range(5)), x)  # severity 0: clean
    assert not torch.equal(corrupt_batch(x, name, 5, 7, range(5)), x)  # (saturating a gray image at 3 is a no-op)


@pytest.mark.parametrize('name', ['shot_noise', 'impulse_noise', 'speckle_noise', 'glass_blur', 'fog', 'snow',
                                  'motion_blur', 'elastic_transform', 'spatter'])
def test_random_corruptions_depend_on_seed_and_index(name):
    x = _images(2)
    assert not torch.equal(corrupt_batch(x, name, 5, 0, [0, 1]), corrupt_batch(x, name, 5, 1, [0, 1]))
    assert not torch.equal(corrupt_batch(x, name, 5, 0, [0, 1]), corrupt_batch(x, name, 5, 0, [2, 3]))


def test_noise_family_moments():
    rng = np.random.default_rng(0)
    x = np.full((1, 200, 200), 0.4)
    shot = C.shot_noise(x, 100, rng)
    assert shot.mean() == pytest.approx(0.4, abs=0.005) and shot.var() == pytest.approx(0.4 / 100, rel=0.05)
    imp = C.impulse_noise(x, 0.07, rng)
    assert (imp != 0.4).mean() == pytest.approx(0.07, abs=0.005) and (imp == 1).mean() == pytest.approx(0.035, abs=0.004)
    sp = C.speckle_noise(x, 0.2, rng)
    assert sp.std() == pytest.approx(0.4 * 0.2, rel=0.03) and sp.mean() == pytest.approx(0.4, abs=0.003)


def test_gaussian_noise_is_the_cifar10c_gaussian_preset():
    """One code path: severity s of gaussian_noise is the noise sweep's cifar10c_gaussian level s."""
    from timm_lipschitz.robustness.noise import batch_unit_noise, noisy_images
    x = _images(4)
    for s, sigma in enumerate((0.04, 0.06, .08, .09, .10), start=1):
        z = batch_unit_noise(x.shape[1:], 3, [5, 6, 7, 8], 0)
        assert torch.equal(corrupt_batch(x, 'gaussian_noise', s, 3, [5, 6, 7, 8]),
                           noisy_images(x, z, sigma, clip=True, quantize=True))


def test_blur_kernels_match_reference_computations():
    x = np.random.default_rng(1).random((1, 3, 20, 24))
    for sigma in (0.4, 1.0, 2.5):
        ref = np.stack([ndimage.gaussian_filter(p, sigma, mode='nearest', truncate=4.0) for p in x[0]])
        np.testing.assert_allclose(C.gaussian_blur_planes(x, sigma)[0], ref, atol=1e-12)
    # defocus: make_cifar_c's aliased disk, then OpenCV's 3x3 Gaussian (sigma alias_blur), border reflect-101
    r, a = 1.5, 0.1
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    d = (xx ** 2 + yy ** 2 <= r ** 2).astype(float)
    d /= d.sum()
    g = np.exp(-0.5 * np.arange(-1, 2) ** 2 / a ** 2)
    g /= g.sum()
    np.testing.assert_allclose(C.disk_kernel(r, a), ndimage.correlate(d, np.outer(g, g), mode='mirror'), atol=1e-12)
    assert C.disk_kernel(0.3, 0.4).sum() == pytest.approx(1.0)
    # motion blur: ImageMagick's one-sided Gaussian line of 2 ceil(r) + 1 taps
    w, offsets = C.motion_kernel(6, 2, 0.0)
    assert len(w) == 13 and w.sum() == pytest.approx(1.0) and (np.diff(w) < 0).all()
    assert offsets[:, 0].tolist() == [0] * 13 and offsets[:, 1].tolist() == list(range(13))
    delta = np.zeros((9, 30))
    delta[4, 20] = 1.0
    out = C._motion_blur(delta, 6, 2, 0.0)
    np.testing.assert_allclose(out[4, 8:21][::-1], w, atol=1e-12)  # spread along the line, weights in order
    assert out.sum() == pytest.approx(1.0)
    # zoom blur of a constant image is the constant; contrast is its closed form
    flat = np.full((1, 32, 32), 0.3)
    np.testing.assert_allclose(C.zoom_blur(flat, CORRUPTIONS['zoom_blur'][2][4], None), flat, atol=1e-6)
    img = np.random.default_rng(2).random((3, 8, 8))
    m = img.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(C.contrast(img, 0.4, None), np.clip((img - m) * 0.4 + m, 0, 1))


def test_identity_constants_change_nothing():
    x = (_images(2).numpy().astype(np.float64))[0]
    np.testing.assert_allclose(C.contrast(x, 1.0, None), x)
    np.testing.assert_allclose(C.brightness(x, 0.0, None), x, atol=1e-12)
    np.testing.assert_allclose(C.saturate(x, (1.0, 0.0), None), x, atol=1e-12)
    np.testing.assert_allclose(C.zoom_blur(x, [1.0], None), x, atol=1e-6)
    np.testing.assert_allclose(C.shot_noise(np.zeros((1, 4, 4)), 50, np.random.default_rng(0)), 0)
    gray = x[:1]
    np.testing.assert_allclose(C.brightness(gray, 0.1, None), np.clip(gray + 0.1, 0, 1), atol=1e-12)


def test_bad_names_and_severities_list_what_is_allowed():
    x = _images(1)
    with pytest.raises(ValueError, match=r"corruptions \['fogg'\] are not allowed; give all, benchmark.*fog"):
        resolve_corruptions('fog,fogg')
    with pytest.raises(ValueError, match='frost is not available: it needs'):
        resolve_corruptions('frost')
    with pytest.raises(ValueError, match='severity=6 is not allowed; give an integer from 0'):
        corrupt_batch(x, 'fog', 6, 0, [0])
    with pytest.raises(ValueError, match="unknown corruption 'rain'"):
        corrupt_batch(x, 'rain', 1, 0, [0])


def test_a_model_that_ignores_its_input_is_unaffected_and_severity_0_is_clean():
    x, y = _images(20, (1, 16, 16)), torch.randint(0, 3, (20,))
    r = corruption_sweep(Constant(), (x, y), 'all', severities=(1, 5))
    clean = 100 * (y == 1).float().mean().item()
    assert r['clean'] == pytest.approx(clean) and r['mean'] == pytest.approx(clean)
    assert all(r[n][s] == pytest.approx(clean) for n in resolve_corruptions('all') for s in ('1', '5'))
    model = timm.create_model('cifar_resnet20', in_chans=1).eval()
    r0 = corruption_sweep(model, (x, y), 'blur,contrast', severities=(0,))
    assert all(r0[n]['0'] == r0['clean'] for n in ('defocus_blur', 'contrast'))


def test_eval_corruptions_on_a_run_folder_reports_everywhere(tmp_path, drawn):
    """eval.json layout, the markdown, the heatmap and family bars (read back from what was drawn), and the run
    folder's own robustness.json, metadata summary and model card."""
    from timm_lipschitz.cli import main
    from timm_lipschitz.evaluate import read_eval
    from timm_lipschitz.hub import load_robustness
    from timm_lipschitz.train import train
    s = train({'name': 'c', 'model': {'name': 'mnist_convnet'}, 'loss': {'name': 'cross_entropy'}, 'steps': 5,
               'batch_size': 32, 'data': {'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': True},
               'log_with': [], 'eval': {'sigmas': [0.0, 0.3], 'every_epochs': 0}, 'output_dir': str(tmp_path / 'run'),
               'optimizer': {'name': 'sgd', 'lr': 0.05}}, progress=False)
    run = tmp_path / 'run'
    card_before = (run / 'README.md').read_text()
    argv = ['eval', s['output_dir'], '--corruptions', 'noise,contrast', '--severities', '1,5', '--max-images', '30',
            '--sigmas', '0', '--out', str(tmp_path / 'ev'), '--device', 'cpu', '--no-progress']
    assert main(argv) == 0  # not the full protocol: measured and written to --out, the run's own record untouched
    assert 'corruptions' not in json.loads((run / 'robustness.json').read_text())
    assert (run / 'README.md').read_text() == card_before and 'corruption_mean' not in load_robustness(run)
    assert main(argv + ['--record']) == 0  # recorded on request, the departure stated
    c = read_eval(tmp_path / 'ev' / 'eval.json')['c']['corruptions']
    assert {'gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'contrast'} <= set(c)
    assert set(c['contrast']) == {'1', '5', 'mean'} and c['num_images'] == 30 and c['severities'] == [1, 5]
    assert c['contrast']['mean'] == pytest.approx((c['contrast']['1'] + c['contrast']['5']) / 2)
    names = [n for n in CORRUPTIONS if n in c]
    assert c['mean'] == pytest.approx(sum(c[n]['mean'] for n in names) / len(names))
    heat = drawn['corruptions_c.png']
    assert heat['yticks'] == names and heat['images'][0] == [[c[n]['1'], c[n]['5']] for n in names]
    bars = drawn['corruption_families.png']['bars']['c']
    assert bars == [c['clean'], c['by_family']['noise'], c['by_family']['digital']]
    assert '| contrast | digital |' in (tmp_path / 'ev' / 'eval.md').read_text()
    assert json.loads((run / 'robustness.json').read_text())['corruptions']['mean'] == c['mean']
    assert load_robustness(run)['corruption_mean'] == c['mean']
    card = (run / 'README.md').read_text()
    assert "## Common corruptions (CIFAR-10-C's recipes, computed on the fly)" in card and f"{c['mean']:.2f}" in card
    assert '**Not the full protocol:** --max-images 30 (the protocol: every image); severities [1, 5]' in card
    assert '30 of 360 (stratified prefix' in card and load_robustness(run)['corruption_full_protocol'] is False
    assert timm.create_model(f'local-dir:{run}', pretrained=True)  # the rewritten weights still load
