"""Each model declares its own Lipschitz constant (issue 30's interface): the evaluation's spectral bound reads it
from the model, the normalization is folded in, and it is never below what a PGD search finds."""
from __future__ import annotations

import pytest
import timm
import torch

import timm_lipschitz  # noqa: F401
from timm_lipschitz.models._bounds import DeclaresLipschitz
from timm_lipschitz.robustness.lipschitz import pgd_lower_bound, spectral_upper_bound


@pytest.mark.parametrize('tag', ['cifar_resnet20.lipschitz_hinge_s050_b1_l001_digits',
                                 'mnist_convnet.lipschitz_hinge_s075_b10_l0005_mnist5k'])
def test_the_declared_constant_bounds_what_pgd_finds_and_is_what_the_evaluation_reads(tag):
    model = timm.create_model(tag, pretrained=True).eval()
    assert isinstance(model, DeclaresLipschitz)
    declared = model.lipschitz_constant()
    assert spectral_upper_bound(model)['bound'] == declared
    size = model.pretrained_cfg['input_size']
    data = torch.utils.data.TensorDataset(torch.rand(16, *size), torch.zeros(16, dtype=torch.long))
    found = pgd_lower_bound(model, data, radius=0.5, steps=10, max_images=16)['max']
    assert 0 < found <= declared
    # dividing by a std half as large doubles the constant of the logits w.r.t. pixels
    std = model.pretrained_cfg['std']
    assert model.lipschitz_constant(std=[s / 2 for s in std]) == pytest.approx(2 * declared, rel=1e-12)


def test_a_model_scaled_up_declares_a_larger_constant_and_one_without_a_declaration_is_refused():
    model = timm.create_model('mnist_convnet', num_classes=10, img_size=8, in_chans=1,
                              pretrained_cfg_overlay={'input_size': (1, 8, 8)}).eval()
    before = model.lipschitz_constant()
    with torch.no_grad():
        model.fc.weight.mul_(2)
    assert model.lipschitz_constant() == pytest.approx(2 * before, rel=1e-9)  # read from the weights, never cached
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    plain.pretrained_cfg = {'input_size': (1, 8, 8), 'mean': (0.5,), 'std': (0.5,)}
    with pytest.raises(NotImplementedError, match='declares none'):
        spectral_upper_bound(plain)
