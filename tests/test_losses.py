"""Tests that would catch a wrong loss: hand computations on linear models, gradcheck, equivalences."""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from timm_lipschitz.losses import LossOutput, create_loss, lipschitz_ratio, list_losses

import timm_lipschitz  # noqa: F401

ALL_OBJECTIVES = ['cross_entropy', 'binary_cross_entropy', 'lipschitz_hinge', 'gaussian_augmentation',
                  'stability', 'consistency']


class Linear(nn.Module):
    """f(x) = W x on flattened pixels (no bias), with an explicit pretrained_cfg like a timm model."""

    def __init__(self, d: int, classes: int = 3, mean=(0.0,), std=(1.0,), dtype=torch.float32):
        super().__init__()
        self.fc = nn.Linear(d, classes, bias=False, dtype=dtype)
        self.pretrained_cfg = {'mean': mean, 'std': std}

    def forward(self, x):
        return self.fc(x.flatten(1))


def _unit_noise(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


def test_registry_lists_every_objective():
    assert set(ALL_OBJECTIVES) <= set(list_losses())


def test_unknown_name_and_kwargs_list_what_is_allowed():
    with pytest.raises(ValueError, match='unknown loss .nope.*lipschitz_hinge'):
        create_loss('nope')
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['gamma'\].*lipschitz_target"):
        create_loss('lipschitz_hinge', gamma=1)


@pytest.mark.parametrize('name,kwargs,bad', [
    ('lipschitz_hinge', dict(sigma=0), 'sigma=0'),
    ('lipschitz_hinge', dict(sigma=-0.1), 'sigma=-0.1'),
    ('lipschitz_hinge', dict(beta=-1), 'beta=-1'),
    ('lipschitz_hinge', dict(lipschitz_target=0), 'lipschitz_target=0'),
    ('lipschitz_hinge', dict(output='prob'), "output='prob'"),
    ('lipschitz_hinge', dict(task_loss='lipschitz_hinge'), "task_loss='lipschitz_hinge'"),
    ('gaussian_augmentation', dict(sigma=0), 'sigma=0'),
    ('stability', dict(alpha=-1), 'alpha=-1'),
    ('consistency', dict(num_noise=0), 'num_noise=0'),
    ('consistency', dict(consistency_weight=-1), 'consistency_weight=-1'),
    ('cross_entropy', dict(label_smoothing=1.5), 'label_smoothing=1.5'),
])
def test_invalid_hyperparameters_name_the_value(name, kwargs, bad):
    with pytest.raises(ValueError, match=bad.replace('(', r'\(')):
        create_loss(name, **kwargs)


def test_linear_model_k_and_loss_match_hand_computation():
    torch.manual_seed(0)
    d, b, sigma, beta, ln, seed = 12, 5, 0.3, 2.0, 0.05, 123
    model = Linear(d)
    x = torch.rand(b, 1, 3, 4)
    y = torch.randint(0, 3, (b,))
    obj = create_loss('lipschitz_hinge', sigma=sigma, beta=beta, lipschitz_target=ln, seed=seed)
    out = obj(model, x, y)
    n = (_unit_noise(x.shape, seed) * sigma).flatten(1)
    W = model.fc.weight.detach()
    k = (n @ W.T).norm(dim=1) / n.norm(dim=1)
    expected = F.cross_entropy(x.flatten(1) @ W.T, y) + beta * torch.relu(k - ln).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.parts['k_mean'], k.mean())
    torch.testing.assert_close(out.parts['k_max'], k.max())
    torch.testing.assert_close(out.parts['hinge_active_fraction'], (k > ln).float().mean())
    torch.testing.assert_close(out.logits, x.flatten(1) @ W.T)
    # the sampled k lies between the smallest and largest singular value of W
    s = torch.linalg.svdvals(W)
    assert (k <= s.max() + 1e-5).all()


def test_probs_output_measures_softmax_distance():
    torch.manual_seed(0)
    model = Linear(8)
    x, y = torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))
    obj = create_loss('lipschitz_hinge', sigma=0.2, output='probs', seed=5, beta=1.0, lipschitz_target=1e-4)
    out = obj(model, x, y)
    n = _unit_noise(x.shape, 5) * 0.2
    p0 = F.softmax(model(x), 1)
    p1 = F.softmax(model(x + n), 1)
    k = (p1 - p0).norm(dim=1) / n.flatten(1).norm(dim=1)
    torch.testing.assert_close(out.parts['k_mean'], k.mean().detach())


def test_noise_is_in_pixel_space_before_normalization():
    d, sigma, std = 3 * 16 * 16, 0.25, 0.5
    model = nn.Flatten()  # f(normalized x) = normalized x, so k = 1/std if the noise is added before normalizing
    obj = create_loss('lipschitz_hinge', sigma=sigma, mean=(0.5, 0.5, 0.5), std=(std, std, std), seed=0)
    x = torch.rand(64, 3, 16, 16)
    delta = obj.perturb(x) - x
    assert delta.flatten(1).norm(dim=1).mean().item() == pytest.approx(sigma * math.sqrt(d), rel=0.02)
    out = obj(model, x, torch.zeros(64, dtype=torch.long))
    assert out.parts['k_mean'].item() == pytest.approx(1 / std, rel=1e-5)
    assert out.parts['k_max'].item() == pytest.approx(1 / std, rel=1e-5)


def test_clip_keeps_pixels_in_range_and_measures_after_clipping():
    obj = create_loss('lipschitz_hinge', sigma=0.5, clip=True, seed=1, mean=(0.0,), std=(1.0,))
    x = torch.rand(8, 1, 8, 8)
    noisy = obj.perturb(x)
    assert noisy.min() >= 0 and noisy.max() <= 1
    obj2 = create_loss('lipschitz_hinge', sigma=0.5, seed=1)
    assert (obj2.perturb(x) > 1).any()
    # k(x) divides by the clipped difference ||x_bar - x||, not by the drawn noise ||n||
    torch.manual_seed(0)
    model = Linear(64)
    obj = create_loss('lipschitz_hinge', sigma=0.5, clip=True, seed=1, beta=1.0, lipschitz_target=1e-6)
    out = obj(model, x, torch.zeros(8, dtype=torch.long))
    n = _unit_noise(x.shape, 1) * 0.5
    delta = ((x + n).clamp(0, 1) - x).flatten(1)
    W = model.fc.weight.detach()
    k = (delta @ W.T).norm(dim=1) / delta.norm(dim=1)
    k_unclipped = (delta @ W.T).norm(dim=1) / n.flatten(1).norm(dim=1)
    torch.testing.assert_close(out.parts['k_mean'], k.mean())
    assert not torch.allclose(k.mean(), k_unclipped.mean())


def test_gradcheck_float64_hinge_active_on_every_sample():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4, dtype=torch.float64), nn.Tanh(),
                          nn.Linear(4, 3, dtype=torch.float64))
    model.pretrained_cfg = {'mean': (0.1,), 'std': (0.7,)}
    x = torch.rand(3, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    obj = create_loss('lipschitz_hinge', sigma=0.1, beta=3.0, lipschitz_target=1e-3, seed=7)
    state = obj.state_dict()
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in model.parameters())

    def loss_fn(*ps):
        obj.load_state_dict(state)  # the same noise on every evaluation
        wrapped = lambda inp: torch.func.functional_call(model, dict(zip(names, ps)), (inp,))  # noqa: E731
        wrapped.pretrained_cfg = model.pretrained_cfg
        return obj(_Callable(wrapped), x, y).loss

    obj.load_state_dict(state)
    first = obj(model, x, y)
    assert first.parts['hinge_active_fraction'].item() == 1.0
    assert torch.autograd.gradcheck(loss_fn, params, eps=1e-6, atol=1e-5)


class _Callable(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.pretrained_cfg = fn.pretrained_cfg

    def forward(self, x):
        return self.fn(x)


def test_noisy_branch_alone_carries_gradient():
    torch.manual_seed(0)
    model = Linear(8)
    grads = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = model, 0
            self.pretrained_cfg = model.pretrained_cfg

        def forward(self, x):
            out = self.inner(x)
            self.calls += 1
            if self.calls == 2:  # the noisy forward
                out.register_hook(lambda g: grads.append(g))
            return out

    obj = create_loss('lipschitz_hinge', sigma=0.2, beta=1.0, lipschitz_target=1e-4, joint_forward=False, seed=0)
    out = obj(Recorder(), torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,)))
    out.loss.backward()
    assert grads and grads[0].abs().sum() > 0
    # the noisy branch gets gradient only from the hinge: with beta = 0 it would be zero
    obj0 = create_loss('lipschitz_hinge', sigma=0.2, beta=0.0, lipschitz_target=1e-4, joint_forward=False, seed=0)
    grads.clear()
    obj0(Recorder(), torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))).loss.backward()
    assert grads[0].abs().sum() == 0


def test_beta_zero_equals_cross_entropy_loss_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20').eval()  # eval: BN stats identical for both objectives
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out_ce = create_loss('cross_entropy')(model, x, y)
    g_ce = torch.autograd.grad(out_ce.loss, list(model.parameters()))
    out_h = create_loss('lipschitz_hinge', beta=0.0, sigma=0.25, lipschitz_target=0.01)(model, x, y)
    g_h = torch.autograd.grad(out_h.loss, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(out_h.loss, out_ce.loss)
    for a, b in zip(g_ce, g_h):
        torch.testing.assert_close(b, a)


def test_hinge_zero_when_k_below_target():
    model = Linear(8)
    obj = create_loss('lipschitz_hinge', sigma=0.1, beta=10.0, lipschitz_target=1e6)
    out = obj(model, torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,)))
    assert out.parts['hinge'].item() == 0 and out.parts['hinge_active_fraction'].item() == 0
    torch.testing.assert_close(out.loss, out.parts['ce'])


def test_tiny_noise_gives_finite_ratio():
    model = Linear(8)
    obj = create_loss('lipschitz_hinge', sigma=1e-30, beta=1.0, lipschitz_target=0.01)
    out = obj(model, torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,)))
    assert torch.isfinite(out.loss) and torch.isfinite(out.parts['k_max'])
    k = lipschitz_ratio(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 5))
    assert torch.equal(k, torch.zeros(2))


@pytest.mark.parametrize('name', ['lipschitz_hinge', 'gaussian_augmentation', 'stability', 'consistency'])
def test_same_generator_state_gives_same_loss_and_resumes_stream(name):
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20').eval()
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 10, (2,))
    a = create_loss(name, seed=3)
    b = create_loss(name, seed=3)
    torch.testing.assert_close(a(model, x, y).loss, b(model, x, y).loss)
    state = a.state_dict()
    next_a = a(model, x, y).loss
    c = create_loss(name, seed=99)
    c.load_state_dict(state)
    torch.testing.assert_close(c(model, x, y).loss, next_a)
    assert not torch.equal(a(model, x, y).loss, next_a)  # the stream moves on


def test_stability_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    model = Linear(8)
    x, y = torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))
    out = create_loss('stability', alpha=0.0)(model, x, y)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(x), y))
    assert out.parts['kl'] > 0


def test_consistency_matches_hand_computation():
    torch.manual_seed(0)
    model = Linear(8)
    x, y = torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))
    sigma, m, lam, eta, seed = 0.3, 3, 2.0, 0.5, 11
    out = create_loss('consistency', sigma=sigma, num_noise=m, consistency_weight=lam, entropy_weight=eta,
                      seed=seed)(model, x, y)
    g = torch.Generator().manual_seed(seed)
    logits = [model(x + sigma * torch.randn(x.shape, generator=g)) for _ in range(m)]
    ce = sum(F.cross_entropy(lg, y) for lg in logits) / m
    ps = [F.softmax(lg, 1) for lg in logits]
    p_bar = sum(ps) / m
    kl = sum((p_bar * (p_bar.log() - p.log())).sum(1).mean() for p in ps) / m
    ent = -(p_bar * p_bar.log()).sum(1).mean()
    torch.testing.assert_close(out.loss, ce + lam * kl + eta * ent)
    torch.testing.assert_close(out.logits, model(x))


def test_gaussian_augmentation_is_ce_on_noisy_and_reports_clean_logits():
    torch.manual_seed(0)
    model = Linear(8)
    x, y = torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))
    out = create_loss('gaussian_augmentation', sigma=0.4, seed=2)(model, x, y)
    noisy = x + 0.4 * _unit_noise(x.shape, 2)
    torch.testing.assert_close(out.loss, F.cross_entropy(model(noisy), y))
    torch.testing.assert_close(out.logits, model(x))


def test_missing_mean_std_is_a_clear_error():
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ValueError, match='no pretrained_cfg mean/std; pass mean=... and std='):
        create_loss('cross_entropy')(model, torch.rand(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))


def _one_step(model, objective, channels=3):
    torch.manual_seed(0)
    x, y = torch.rand(4, channels, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    out = objective(model, x, y)
    assert isinstance(out, LossOutput) and out.logits.shape == (4, 10)
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.parts.values())
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert changed > 0.9 * len(before)


@pytest.mark.parametrize('name', ALL_OBJECTIVES)
def test_every_objective_trains_torchvision_resnet18(name):
    model = torchvision.models.resnet18(num_classes=10)
    _one_step(model, create_loss(name, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)))


@pytest.mark.parametrize('name', ALL_OBJECTIVES)
def test_every_objective_trains_stock_timm_and_registered_models(name):
    _one_step(timm.create_model('resnet10t', num_classes=10, zero_init_last=False), create_loss(name))
    _one_step(timm.create_model('cifar_preresnet20', in_chans=1), create_loss(name), channels=1)


def test_done_when_example_trains_registered_model():
    obj = create_loss('lipschitz_hinge', sigma=0.25, beta=5, lipschitz_target=0.01)
    _one_step(timm.create_model('cifar_resnet20'), obj)
    assert set(obj(timm.create_model('cifar_resnet20'), torch.rand(2, 3, 32, 32),
                   torch.zeros(2, dtype=torch.long)).parts) == {'ce', 'k_mean', 'k_max', 'hinge',
                                                                'hinge_active_fraction'}


@pytest.mark.parametrize('name', ALL_OBJECTIVES)
def test_objectives_check_their_images(name):
    """0.1.0: uint8 images gave a NaN loss (mean/std built in uint8, std 0) and 0-255 floats passed silently."""
    import warnings
    from timm_lipschitz.normalization import PixelRangeWarning
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20', in_chans=1).eval()
    x = torch.rand(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    with pytest.raises(ValueError, match=r'torch\.uint8; objectives and evaluation take float pixels in \[0, 1\] '
                                         r'\(convert uint8 images with images\.float\(\) / 255'):
        create_loss(name, seed=0)(model, (x * 255).to(torch.uint8), y)
    ref = create_loss(name, seed=0)(model, x, y).loss
    as64 = create_loss(name, seed=0)(model, x.double(), y).loss  # float64 pixels work (cast for the model)
    assert torch.isfinite(as64) and as64.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    objective = create_loss(name, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        objective(model, x * 255, y)
        objective(model, x * 255, y)
    ranges = [w for w in caught if issubclass(w.category, PixelRangeWarning)]
    assert len(ranges) == 1 and 'expected [0,1] pixels' in str(ranges[0].message)


def test_the_evaluation_checks_its_images():
    import warnings
    from timm_lipschitz.normalization import PixelRangeWarning
    from timm_lipschitz.robustness import noise_sweep
    model = timm.create_model('cifar_resnet20', in_chans=1).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter('error', PixelRangeWarning)  # the refusal comes alone, not after a range warning
        with pytest.raises(ValueError, match='torch.uint8'):
            noise_sweep(model, ((x * 255).to(torch.uint8), y), [0.0])
    with pytest.warns(PixelRangeWarning, match=r'the evaluation images range over'):
        noise_sweep(model, (x * 255, y), [0.0, 0.1])
    with warnings.catch_warnings():
        warnings.simplefilter('error', PixelRangeWarning)
        r64 = noise_sweep(model, (x.double(), y), [0.0, 0.5])
    assert r64.accuracy == noise_sweep(model, (x, y), [0.0, 0.5]).accuracy


def test_the_task_part_is_named_after_the_task_loss():
    model = Linear(8, classes=3)
    x, y = torch.rand(4, 1, 2, 4), torch.randint(0, 3, (4,))
    parts = create_loss('lipschitz_hinge', task_loss='binary_cross_entropy', seed=0)(model, x, y).parts
    assert 'bce' in parts and 'ce' not in parts
    assert 'ce' in create_loss('lipschitz_hinge', seed=0)(model, x, y).parts
    assert set(create_loss('binary_cross_entropy')(model, x, y).parts) == {'bce'}


@pytest.mark.parametrize('name', ALL_OBJECTIVES)
def test_every_objective_under_bf16_autocast(name):
    """bf16 autocast (the CPU's mixed precision; on a GPU, Accelerate's bf16): the loss stays float32 and close to the
    fp32 loss, and k(x) and every norm are computed in float32 (lipschitz_ratio upcasts)."""
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20', in_chans=1).train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    obj = create_loss(name, seed=0)
    state = obj.state_dict()
    ref = obj(model, x, y)
    obj.load_state_dict(state)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = obj(model, x, y)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=0.05)
    for key, value in out.parts.items():
        assert value.dtype == torch.float32, key
    if 'k_mean' in out.parts:
        assert out.parts['k_mean'].item() == pytest.approx(ref.parts['k_mean'].item(), rel=0.1)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
