"""Models registered with timm on import (timm has no plugin entry points, so importing is the registration)."""
import timm

from .cifar_resnet import (CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, BasicBlock, CifarResNet, PreActBasicBlock,
                           ShortcutA, blocks_per_stage)
from .lipnet import LIPSCHITZ_NAMES, CifarLipResNet, LipConvNet, LipMLP, to_plain
from .mnist_convnet import MNIST_MEAN, MNIST_STD, MnistConvNet
from .robustbench import RobustBenchModel  # registers the RobustBench exports listed in the exports index

__all__ = ['CifarResNet', 'BasicBlock', 'PreActBasicBlock', 'ShortcutA', 'MnistConvNet', 'blocks_per_stage',
           'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR10_LABELS', 'MNIST_MEAN', 'MNIST_STD', 'list_registered',
           'RobustBenchModel', 'LipConvNet', 'CifarLipResNet', 'LIPSCHITZ_NAMES', 'to_plain', 'LipMLP']


def list_registered() -> list[str]:
    """Names of the architectures this package registers with timm."""
    return sorted(timm.list_models(module='cifar_resnet') + timm.list_models(module='mnist_convnet')
                  + timm.list_models(module='lipnet'))
