"""The checks timm runs on its own models (tests/test_models.py upstream), for every registered name here,
plus the exact parameter counts of He et al.'s CIFAR family."""
import pytest
import timm
import torch
from timm_lipschitz.models import LIPSCHITZ_NAMES, CifarResNet, ShortcutA

import timm_lipschitz

SLOW = {'cifar_resnet1202'}
ALL = timm_lipschitz.list_registered()
FAST = [n for n in ALL if n not in SLOW]
CIFAR = [n for n in ALL if n.startswith('cifar_') and n not in LIPSCHITZ_NAMES]  # He et al.'s family
# orthogonium's reparametrizers (the AOL rescaling, the QR orthogonalization) do not compile with TorchScript; the
# 1-Lipschitz models export with torch.export instead (tests/test_lipschitz_models.py)
NOT_SCRIPTABLE = set(LIPSCHITZ_NAMES)
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


def _names(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _input(model, batch=2):
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


def test_all_names_listed():
    expected = {f'cifar_resnet{d}' for d in PARAMS} | {f'cifar_preresnet{d}' for d in (20, 32, 44, 56, 110)}
    assert expected | {'mnist_convnet'} <= set(ALL)
    assert set(timm.list_models('cifar_*')) >= expected


@pytest.mark.parametrize('depth', [pytest.param(d, marks=pytest.mark.slow) if d == 1202 else d for d in PARAMS])
@pytest.mark.parametrize('kind', ['resnet', 'preresnet'])
def test_exact_param_counts(kind, depth):
    name = f'cifar_{kind}{depth}'
    if name not in ALL:
        pytest.skip(f'{name} is not part of the family')
    model = timm.create_model(name, num_classes=10, in_chans=3)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[depth]


@pytest.mark.parametrize('name', _names(ALL))
def test_forward_no_nan_and_grad_checkpointing(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), out)


@pytest.mark.parametrize('name', _names(ALL))
def test_backward_every_param_gets_grad(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(model))
    assert out.shape[-1] == 42
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f'no gradient for {n}'
    assert not torch.isnan(out).any()


@pytest.mark.parametrize('name', _names(ALL))
def test_default_cfg_contract(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    state = model.state_dict()
    x = _input(model, 1)
    pool = cfg['pool_size']
    feats = model.forward_features(x)
    assert feats.shape[-2:] == pool and feats.shape[1] == model.num_features  # timm: channels of forward_features
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    assert cfg['classifier'] + '.weight' in state
    assert cfg['first_conv'] + '.weight' in state
    assert cfg['num_classes'] == 10 and cfg['crop_pct'] == 1.0 and len(cfg['label_names']) == 10
    assert model.get_classifier() is model.fc
    model.reset_classifier(0)
    assert model(x).shape == (1, model.head_hidden_size)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)
    unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
    out = unpooled(x)
    assert out.ndim == 4 and out.shape[-2:] == pool


@pytest.mark.parametrize('name', CIFAR)
def test_cifar_cfg_values(name):
    cfg = timm.create_model(name).pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32)
    assert cfg['mean'] == pytest.approx((0.4914, 0.4822, 0.4465))
    assert cfg['std'] == pytest.approx((0.2470, 0.2435, 0.2616))
    assert cfg['label_names'][0] == 'airplane'


@pytest.mark.parametrize('name', _names(ALL))
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    if name in CIFAR:
        assert len(channels) >= 3
        assert channels[-3:] == [16, 32, 64] and reductions[-3:] == [1, 2, 4]
    x = torch.randn(1, *timm.create_model(name).pretrained_cfg['input_size'])
    outs = model(x)
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[1] == c
        assert o.shape[-1] == x.shape[-1] // r
        assert torch.isfinite(o).all()


@pytest.mark.parametrize('name', _names([n for n in ALL if n not in NOT_SCRIPTABLE]))
def test_torchscript(name):
    with timm.layers.set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model, 1)
    torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize('shape', [(1, 28, 28), (1, 32, 32), (3, 96, 96), (3, 40, 24)])
def test_any_in_chans_and_size(shape):
    model = timm.create_model('cifar_preresnet20', in_chans=shape[0]).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 10)


def test_mnist_convnet_img_size_from_cfg():
    model = timm.create_model('mnist_convnet', pretrained_cfg_overlay=dict(input_size=(1, 32, 32)))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_drop_rate_and_kwargs_reach_model():
    model = timm.create_model('cifar_resnet20', drop_rate=0.5, num_classes=7, in_chans=1, global_pool='max')
    assert model.drop_rate == 0.5 and model.num_classes == 7 and model.conv1.in_channels == 1
    assert model.global_pool.pool_type == 'max'


def test_option_a_is_parameter_free_and_option_b_projects():
    a = timm.create_model('cifar_resnet20')
    b = timm.create_model('cifar_resnet20', shortcut='B')
    assert isinstance(a.layer2[0].downsample, ShortcutA)
    assert isinstance(b.layer2[0].downsample, torch.nn.Sequential)
    extra = sum(p.numel() for p in b.parameters()) - PARAMS[20]
    assert extra == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)  # two 1x1 convs + their BNs


def test_option_a_shortcut_pads_channels_symmetrically():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = ShortcutA(2, 6, 2)(x)
    assert y.shape == (1, 6, 2, 2)
    assert (y[:, :2] == 0).all() and (y[:, 4:] == 0).all()
    torch.testing.assert_close(y[:, 2:4], x[:, :, ::2, ::2])


@pytest.mark.parametrize('depth', [0, 19, 21, 'x'])
def test_bad_depth_raises(depth):
    with pytest.raises(ValueError, match='6n\\+2'):
        CifarResNet(depth=depth)


def test_bad_shortcut_raises():
    with pytest.raises(ValueError, match="shortcut='C'.*'A', 'B'"):
        timm.create_model('cifar_resnet20', shortcut='C')


def test_local_file_via_pretrained_cfg_overlay(tmp_path):
    from safetensors.torch import save_file
    src = timm.create_model('cifar_resnet20').eval()
    path = tmp_path / 'w.safetensors'
    save_file(src.state_dict(), str(path))
    dst = timm.create_model('cifar_resnet20', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(dst(x), src(x))


@pytest.mark.parametrize('name', _names(ALL))
def test_every_depth_is_finite_at_init_in_eval_mode(name):
    """Freshly built and in eval mode (BatchNorm running statistics still 0/1), every depth gives finite logits:
    the deep ones (110, 1202) start with zero-initialized residual branches, so they stay small."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(_input(model))
    assert torch.isfinite(out).all()
    if getattr(model, 'depth', 0) >= 110:
        assert out.abs().max() < 100


def test_paper_depths_keep_their_initialization():
    """Depths the paper trains (20, 32) keep He et al.'s initialization; zero_init_last is on from depth 110 and can
    be set either way explicitly."""
    for name in ('cifar_resnet20', 'cifar_resnet32', 'cifar_preresnet20', 'cifar_preresnet32', 'cifar_resnet56'):
        model = timm.create_model(name)
        last = [m.bn2.weight if hasattr(m, 'bn2') and not model.preact else m.conv2.weight
                for m in model.modules() if hasattr(m, 'zero_init_last')]
        assert last and all(w.abs().sum() > 0 for w in last), name
    deep = timm.create_model('cifar_resnet110')
    assert all(m.bn2.weight.abs().sum() == 0 for m in deep.modules() if hasattr(m, 'zero_init_last'))
    off = timm.create_model('cifar_resnet110', zero_init_last=False)
    assert all(m.bn2.weight.abs().sum() > 0 for m in off.modules() if hasattr(m, 'zero_init_last'))


@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_preresnet20', 'mnist_convnet'])
def test_forward_intermediates_stops_early_at_every_level(name):
    """Each level alone, with stop_early, equals the same level of the full pass, and the full pass ends where
    forward_features does (a PreResNet's closing BN + ReLU belongs to the last level only)."""
    model = timm.create_model(name).eval()
    x = torch.rand(2, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        for i, level in enumerate(every):
            last, (alone,) = model.forward_intermediates(x, indices=[i], stop_early=True)
            assert torch.equal(alone, level) and torch.equal(last, level), (name, i)


def test_mnist_convnet_follows_timms_feature_conventions():
    model = timm.create_model('mnist_convnet', hidden_dim=64).eval()
    x = torch.rand(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 14, 14) and model.num_features == 32
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size) == (2, 64)
    final, inter = model.forward_intermediates(x)
    assert [t.shape[-1] for t in inter] == [28, 28, 14] and torch.equal(final, feats)
    assert len(model.forward_intermediates(x, indices=1, intermediates_only=True)) == 1
    extractor = timm.create_model('mnist_convnet', features_only=True)
    assert extractor.feature_info.channels() == [32, 32, 32] and extractor.feature_info.reduction() == [1, 1, 2]
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)
    model.reset_classifier(0, '')
    assert model(x).shape == (2, 32, 14, 14)


def _tags():
    from timm_lipschitz.zoo import shipped
    return sorted(shipped())


@pytest.mark.parametrize('name', ['cifar_resnet20', 'cifar_preresnet20', 'mnist_convnet'])
def test_prune_intermediate_layers_keeps_the_intermediates(name):
    kwargs = {'in_chans': 1, 'img_size': 28} if name == 'mnist_convnet' else {}
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.rand(2, 1, 28, 28) if name == 'mnist_convnet' else torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    kept = model.prune_intermediate_layers(indices=[1])
    with torch.no_grad():
        pruned = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert kept == [1] and len(full) == len(pruned) == 1 and torch.allclose(full[0], pruned[0])
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in timm.create_model(name, num_classes=10, **kwargs).parameters())


@pytest.mark.parametrize('tag', _tags())
def test_timms_transform_gives_every_tag_its_training_inputs(tag):
    """``resolve_data_config`` + ``create_transform`` on the native test images (as PIL images, how a timm user
    holds them) give the tensors the project's pipeline gives, hence the same predictions and accuracy."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from timm_lipschitz.data import DataError, create_dataset
    from timm_lipschitz.zoo import WEIGHTS_DIR, header_metadata, shipped
    dataset = header_metadata(WEIGHTS_DIR / shipped()[tag]['file'])['dataset']
    model = timm.create_model(tag, pretrained=True).eval()
    cfg = model.pretrained_cfg
    try:
        ours, info = create_dataset(dataset, 'test', input_size=cfg['input_size'])
    except DataError as e:
        pytest.skip(f'{dataset} is not on this machine: {e}')
    native, _ = create_dataset(dataset, 'test', input_size=info.native_size)
    transform = create_transform(**resolve_data_config({}, model=model))
    n = 64
    mean, std = torch.tensor(cfg['mean']).view(-1, 1, 1), torch.tensor(cfg['std']).view(-1, 1, 1)
    expected = torch.stack([(ours[i][0] - mean) / std for i in range(n)])
    pixels = [(native[i][0][0] * 255).round().to(torch.uint8).numpy() for i in range(n)]
    got = torch.stack([transform(Image.fromarray(p, mode='L')) for p in pixels])
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        assert torch.equal(model(got).argmax(1), model(expected).argmax(1))
