"""Data layer: ``create_dataset(name, split, ...)`` for every dataset of the paper, loaders in one shared order.

Loaders hand out float images in [0, 1] (never normalized: noise is added in pixel space first).
"""
from timm.data import resolve_data_config

from ..normalization import unwrap_model
from .base import (DataError, DatasetInfo, TensorImageDataset, adapt_images, check_labels, evaluated_fingerprint,
                   split_fingerprint, timm_crop_pct, to_float)
from .idx import read_idx, write_idx
from .lazy import LazyImageDataset
from .loader import DeviceLoader, SeededSampler, epoch_permutation, standard_loader
from .sources import DEBIAN_FASHION_MNIST, LoadedDataset, create_dataset, default_root, list_datasets, register_dataset
from .transforms import AUGMENTATIONS, batch_augment, train_transform

__all__ = ['timm_crop_pct', 'create_dataset', 'list_datasets', 'register_dataset', 'default_root', 'LoadedDataset',
           'DatasetInfo', 'DataError', 'TensorImageDataset', 'LazyImageDataset', 'adapt_images', 'check_labels',
           'to_float', 'read_idx', 'write_idx', 'DeviceLoader', 'SeededSampler', 'epoch_permutation', 'standard_loader',
           'AUGMENTATIONS', 'batch_augment', 'train_transform', 'DEBIAN_FASHION_MNIST', 'resolve_input_size',
           'split_fingerprint', 'evaluated_fingerprint']


def resolve_input_size(model, input_size=None):
    """(C, H, W) for a model: the recipe's ``input_size`` if given, else timm's ``resolve_data_config``."""
    if input_size is not None:
        return tuple(int(s) for s in input_size)
    return tuple(resolve_data_config({}, model=unwrap_model(model))['input_size'])
