"""Data layer: every source on data that is real (digits, mnist_5k, Debian Fashion-MNIST) or written here in the
source's own format (CIFAR pickles, STL-10 binaries, idx files, image folders, a Hugging Face dataset)."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_recipe
from timm_lipschitz.data import (DEBIAN_FASHION_MNIST, DataError, DeviceLoader, adapt_images, batch_augment,
                                 check_labels, create_dataset, epoch_permutation, list_datasets, read_idx,
                                 standard_loader, train_transform, write_idx)
from timm_lipschitz.recipes import resolve_recipe

import timm_lipschitz  # noqa: F401  (registers the models)


def _images(n, c, h, w, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---- sources -----------------------------------------------------------------------------------------------
def test_synthetic_is_seeded_and_any_shape():
    a, info = create_dataset('synthetic', 'train', num_samples=20, num_classes=4, image_size=(2, 12, 9), seed=3)
    b, _ = create_dataset('synthetic', 'train', num_samples=20, num_classes=4, image_size=(2, 12, 9), seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert info.num_classes == 4 and info.input_size == (2, 12, 9) and len(a) == 20
    x, y = a[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and 0 <= y < 4


def test_digits_fixed_split_upscaled():
    train, info = create_dataset('digits', 'train', input_size=(1, 32, 32))
    test, _ = create_dataset('digits', 'test')
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert info.native_size == (1, 8, 8) and info.input_size == (1, 32, 32)
    assert train.images.shape[1:] == (1, 32, 32) and train.images.dtype == torch.uint8
    again, _ = create_dataset('digits', 'train', input_size=(1, 32, 32))
    assert torch.equal(again.images, train.images)
    assert set(train.labels.tolist()) == set(range(10))
    assert test.images.max() == 255  # 16/16 of the original scale


def test_mnist_5k_real_digits_fixed_split():
    train, info = create_dataset('mnist_5k', 'train')
    test, _ = create_dataset('mnist_5k', 'test', input_size=(1, 32, 32))
    assert len(train) == 4000 and len(test) == 1000 and info.native_size == (1, 28, 28)
    # zero padding, not resizing: the 2-pixel border is black and the centre is the original image
    native, _ = create_dataset('mnist_5k', 'test')
    assert torch.equal(test.images[:, :, 2:30, 2:30], native.images)
    assert test.images[:, :, :2].sum() == 0 and test.images[:, :, :, 30:].sum() == 0
    assert np.bincount(train.labels.numpy()).min() > 300  # stratified: every digit well represented


def test_grayscale_to_three_channels_replicates():
    ds, info = create_dataset('digits', 'test', input_size=(3, 8, 8))
    assert info.input_size == (3, 8, 8)
    assert torch.equal(ds.images[:, 0], ds.images[:, 1]) and torch.equal(ds.images[:, 0], ds.images[:, 2])


def test_shape_policy_pads_small_growth_and_resizes_otherwise():
    x = _images(2, 1, 28, 28)
    assert torch.equal(adapt_images(x, (1, 32, 32))[:, :, 2:30, 2:30], x)
    assert adapt_images(x, (1, 64, 64)).shape == (2, 1, 64, 64)
    assert adapt_images(x, (1, 14, 14)).shape == (2, 1, 14, 14)
    rgb = adapt_images(_images(2, 3, 8, 8), (1, 8, 8))
    assert rgb.shape == (2, 1, 8, 8) and rgb.dtype == torch.uint8
    with pytest.raises(ValueError, match='input_size=.*channels, height, width'):
        adapt_images(x, (32, 32))


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'.*cifar10.*fashion_mnist.*hf:"):
        create_dataset('cifar11')
    assert {'cifar10', 'cifar100', 'stl10', 'mnist', 'mnist_5k', 'fashion_mnist', 'digits', 'imagefolder',
            'synthetic'} <= set(list_datasets()) | {'imagefolder'}


def test_bad_split():
    with pytest.raises(ValueError, match="split='val'"):
        create_dataset('digits', 'val')


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'stl10', 'mnist', 'fashion_mnist'])
def test_missing_data_says_where_and_how(name, tmp_path, monkeypatch):
    monkeypatch.setattr('timm_lipschitz.data.sources.DEBIAN_FASHION_MNIST', tmp_path / 'no-debian')
    with pytest.raises(DataError, match=f'{name} data not found \\(looked in: {tmp_path}.*download=True'):
        create_dataset(name, 'train', root=tmp_path)


def _write_cifar(folder, n_per_batch=6, classes=10, hundred=False):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = ['train', 'test'] if hundred else [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
    key = b'fine_labels' if hundred else b'labels'
    for f in files:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / f, 'wb') as fh:
            pickle.dump({b'data': data, key: rng.integers(0, classes, n_per_batch).tolist()}, fh)
    meta, names_key = ('meta', b'fine_label_names') if hundred else ('batches.meta', b'label_names')
    with open(folder / meta, 'wb') as fh:
        pickle.dump({names_key: [f'c{i}'.encode() for i in range(classes)]}, fh)
    return data


def test_cifar10_format(tmp_path):
    last = _write_cifar(tmp_path / 'cifar-10-batches-py')
    train, info = create_dataset('cifar10', 'train', root=tmp_path)
    test, _ = create_dataset('cifar10', 'test', root=tmp_path)
    assert len(train) == 30 and len(test) == 6 and info.class_names[3] == 'c3'
    assert torch.equal(test.images[0], torch.from_numpy(last[0].reshape(3, 32, 32)))


def test_cifar100_format(tmp_path):
    _write_cifar(tmp_path / 'cifar-100-python', classes=100, hundred=True)
    train, info = create_dataset('cifar100', 'train', root=tmp_path)
    assert info.num_classes == 100 and train.images.shape == (6, 3, 32, 32)


def test_corrupt_cifar_file_is_named(tmp_path):
    _write_cifar(tmp_path / 'cifar-10-batches-py')
    (tmp_path / 'cifar-10-batches-py' / 'test_batch').write_bytes(b'garbage')
    with pytest.raises(DataError, match='test_batch'):
        create_dataset('cifar10', 'test', root=tmp_path)


def test_stl10_format_native_96(tmp_path):
    folder = tmp_path / 'stl10_binary'
    folder.mkdir()
    img = _images(3, 3, 96, 96).numpy()
    img.transpose(0, 1, 3, 2).tofile(folder / 'test_X.bin')  # STL-10 stores images column-major
    np.array([1, 10, 5], dtype=np.uint8).tofile(folder / 'test_y.bin')
    ds, info = create_dataset('stl10', 'test', root=tmp_path)
    assert info.input_size == (3, 96, 96) and ds.labels.tolist() == [0, 9, 4]
    assert torch.equal(ds.images, torch.from_numpy(img))
    (folder / 'test_y.bin').write_bytes(bytes([1, 2]))
    with pytest.raises(DataError, match='test_X.bin'):
        create_dataset('stl10', 'test', root=tmp_path)


def test_idx_round_trip_and_corruption(tmp_path):
    arr = _images(4, 1, 5, 6).numpy()[:, 0]
    for name in ('a.idx', 'a.idx.gz'):
        write_idx(tmp_path / name, arr)
        assert np.array_equal(read_idx(tmp_path / name), arr)
    raw = (tmp_path / 'a.idx').read_bytes()
    (tmp_path / 'trunc.idx').write_bytes(raw[:-3])
    with pytest.raises(ValueError, match='trunc.idx is truncated'):
        read_idx(tmp_path / 'trunc.idx')
    (tmp_path / 'bad.idx').write_bytes(b'\x01\x02\x03\x04rest')
    with pytest.raises(ValueError, match='bad.idx is not an idx file'):
        read_idx(tmp_path / 'bad.idx')


def _write_mnist_like(folder, n=7):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ('train', 't10k'):
        write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', _images(n, 1, 28, 28).numpy()[:, 0])
        write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n, dtype=np.uint8) % 10)


@pytest.mark.parametrize('name,sub', [('mnist', 'MNIST/raw'), ('fashion_mnist', 'FashionMNIST/raw'),
                                      ('fashion_mnist', '.')])
def test_idx_datasets_from_local_root(tmp_path, name, sub):
    _write_mnist_like(tmp_path / sub)
    ds, info = create_dataset(name, 'test', root=tmp_path, input_size=(1, 32, 32))
    assert len(ds) == 7 and info.native_size == (1, 28, 28) and ds.labels.tolist() == list(range(7))


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST / 't10k-images-idx3-ubyte.gz').is_file(),
                    reason='Debian package dataset-fashion-mnist is not installed (apt-get install '
                           'dataset-fashion-mnist)')
def test_real_fashion_mnist_from_debian_package(tmp_path):
    with pytest.raises(DataError, match=f'looked in: {tmp_path}'):  # an explicit root is used or refused
        create_dataset('fashion_mnist', 'test', root=tmp_path)
    test, info = create_dataset('fashion_mnist', 'test')  # no root: the Debian package's copy is found
    assert len(test) == 10_000 and info.class_names[9] == 'Ankle boot'
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert 60 < test.images.float().mean() < 80  # Fashion-MNIST's mean pixel is about 72.9


def test_imagefolder(tmp_path):
    from PIL import Image
    for split in ('train', 'test'):
        for ci, cls in enumerate(['cat', 'dog']):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((10, 12, 3), 40 * ci + i, np.uint8)).save(tmp_path / split / cls / f'{i}.png')
    ds, info = create_dataset('imagefolder', 'train', root=tmp_path, input_size=(3, 16, 16))
    assert info.class_names == ['cat', 'dog'] and info.native_size == (3, 10, 12) and len(ds) == 6
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and y == 1
    mem = ds.materialize()
    assert mem.images.shape == (6, 3, 16, 16) and mem.images.dtype == torch.uint8
    (tmp_path / 'train' / 'dog' / '2.png').write_bytes(b'not a png')
    ds, _ = create_dataset('imagefolder', 'train', root=tmp_path)
    with pytest.raises(DataError, match='2.png'):
        ds[5]


def test_hf_dataset_from_disk(tmp_path):
    import datasets
    from PIL import Image
    imgs = [Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)) for i in range(6)]
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=['a', 'b', 'c'])})
    d = datasets.Dataset.from_dict({'img': imgs, 'label': [0, 1, 2, 0, 1, 2]}, features=features)
    datasets.DatasetDict({'train': d, 'test': d}).save_to_disk(str(tmp_path / 'hf'))
    ds, info = create_dataset('hf:local/toy', 'test', root=tmp_path / 'hf', input_size=(3, 8, 8))
    assert info.class_names == ['a', 'b', 'c'] and len(ds) == 6
    x, y = ds[2]
    assert y == 2 and torch.allclose(x, torch.full((3, 8, 8), 40 / 255))
    d2 = datasets.Dataset.from_dict({'image': imgs[:2], 'label': [0, 1]},
                                    features=datasets.Features({'image': datasets.Image(),
                                                                'label': datasets.ClassLabel(names=['x', 'y'])}))
    d2.save_to_disk(str(tmp_path / 'hf2'))
    ds2, info2 = create_dataset('hf:local/toy2', 'train', root=tmp_path / 'hf2', input_size=(1, 8, 8))
    assert ds2[1][0].shape == (1, 8, 8) and info2.num_classes == 2


def test_hf_offline_error(tmp_path):
    with pytest.raises(DataError, match='hf:nobody/nothing data not found'):
        create_dataset('hf:nobody/nothing', 'train', root=tmp_path / 'cache')


def test_labels_out_of_range():
    ds, info = create_dataset('synthetic', num_classes=12, num_samples=50)
    with pytest.raises(DataError, match='labels span \\[0, 11\\] but the model has num_classes=10'):
        check_labels(ds.labels, 10, 'synthetic/train')
    check_labels(ds.labels, 12, 'ok')


# ---- loaders and augmentation ------------------------------------------------------------------------------
def test_fast_and_standard_paths_yield_same_batches_without_augmentation():
    ds, _ = create_dataset('digits', 'train', input_size=(1, 16, 16))
    std = standard_loader(ds, batch_size=64, shuffle=True, seed=5, drop_last=True)
    fast = DeviceLoader(ds, batch_size=64, shuffle=True, seed=5, augmentation='none')
    for epoch in (0, 1):
        std.sampler.set_epoch(epoch)
        fast.set_epoch(epoch)
        pairs = list(zip(std, fast))
        assert len(pairs) == len(ds) // 64
        for (xs, ys), (xf, yf) in pairs:
            assert torch.equal(xs, xf) and torch.equal(ys, yf)
    assert not torch.equal(epoch_permutation(100, 5, 0), epoch_permutation(100, 5, 1))


def test_fast_path_shards_like_accelerate():
    ds, _ = create_dataset('synthetic', num_samples=40)
    whole = list(DeviceLoader(ds, batch_size=8, seed=1))
    ranks = [list(DeviceLoader(ds, batch_size=4, seed=1, num_processes=2, process_index=r)) for r in (0, 1)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 5
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *ranks):
        assert torch.equal(torch.cat([y0, y1]), y) and torch.equal(torch.cat([x0, x1]), x)


def test_fast_path_skips_batches_for_resume():
    ds, _ = create_dataset('synthetic', num_samples=40)
    full = list(DeviceLoader(ds, batch_size=8, seed=1, augmentation='cifar'))
    resumed = DeviceLoader(ds, batch_size=8, seed=1, augmentation='cifar')
    resumed.skip_batches = 2
    rest = list(resumed)
    assert len(rest) == 3
    for (a, ya), (b, yb) in zip(full[2:], rest):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def _offset_histogram(crops, padded_ref, h, w):
    """How often each (dy, dx, flip) candidate of the padded reference image occurs among the crops."""
    keys = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)]
    cands = torch.stack([padded_ref[:, dy:dy + h, dx:dx + w].flip(2) if f else padded_ref[:, dy:dy + h, dx:dx + w]
                         for dy, dx, f in keys])
    match = (crops[:, None] == cands[None]).flatten(2).all(2)  # (n, candidates)
    assert match.any(1).all(), 'a crop that is no shift/flip of the padded image'
    first = match.float().argmax(1)
    return np.bincount(first.numpy(), minlength=len(keys))


def test_fast_augmentation_has_the_standard_distribution():
    img = _images(1, 1, 8, 8, seed=3)[0]
    padded = torch.nn.functional.pad(img, (4, 4, 4, 4))
    n = 4000
    g = torch.Generator().manual_seed(0)
    fast = batch_augment(img.expand(n, -1, -1, -1).contiguous(), 'cifar', g)
    torch.manual_seed(0)
    tf = train_transform('cifar', (1, 8, 8))
    std = torch.stack([tf(img) for _ in range(n)])
    cells = 9 * 9 * 2
    for counts in (_offset_histogram(fast, padded, 8, 8), _offset_histogram(std, padded, 8, 8)):
        assert (counts > 0).all()  # every offset and flip occurs
        expected = n / cells
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 240, chi2  # dof 161: the 99.99th percentile is about 240


def test_no_augmentation_for_none_and_bad_name():
    x = _images(3, 1, 8, 8)
    assert torch.equal(batch_augment(x, 'none', torch.Generator()), x)
    with pytest.raises(ValueError, match="augmentation='flip'"):
        train_transform('flip', (1, 8, 8))


def _image_folder(root, splits, classes=('cat', 'dog'), per_class=5, size=(10, 12)):
    from PIL import Image
    for split in splits:
        for ci, cls in enumerate(classes):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((*size, 3), 40 * ci + i, np.uint8)).save(folder / f'{i}.png')


@pytest.mark.parametrize('test_folder', ['val', 'test'])
def test_imagefolder_reads_its_splits_from_train_and_val_or_test(tmp_path, test_folder):
    """0.1.0 read root/ as the test split when there was no test/: two classes named 'train' and 'val'."""
    _image_folder(tmp_path, ['train', test_folder])
    train, info = create_dataset('imagefolder', 'train', root=tmp_path)
    test, test_info = create_dataset('imagefolder', 'test', root=tmp_path)
    assert info.class_names == test_info.class_names == ['cat', 'dog']
    assert len(train) == len(test) == 10 and test_info.source.endswith(f'{tmp_path / test_folder}')


def test_imagefolder_without_split_folders_holds_out_a_test_split(tmp_path):
    _image_folder(tmp_path, [''], per_class=40, size=(4, 4))
    train, info = create_dataset('imagefolder', 'train', root=tmp_path)
    test, test_info = create_dataset('imagefolder', 'test', root=tmp_path)
    assert len(train) + len(test) == 80 and 8 <= len(test) <= 24 and 'held out as the test split' in test_info.source
    pixels = lambda ds: {float(ds[i][0].mean()) for i in range(len(ds))}  # noqa: E731 (each image is unique)
    assert not pixels(train) & pixels(test)
    assert {int(test[i][1]) for i in range(len(test))} == {0, 1}  # both classes are held out


def test_adding_images_never_moves_an_image_across_the_hold_out(tmp_path):
    """0.2.0 held out a stratified 20% by rank: 3 more cat images moved 7 of 61 test images into training."""
    from PIL import Image
    from timm_lipschitz.data.sources import held_out_by_hash
    _image_folder(tmp_path, [''], per_class=40, size=(4, 4))

    def split_of():
        return {p.relative_to(tmp_path).as_posix(): held_out_by_hash(p.relative_to(tmp_path))
                for p in tmp_path.rglob('*.png')}
    before = split_of()
    for i in range(40, 43):
        Image.fromarray(np.full((4, 4, 3), 200 + i, np.uint8)).save(tmp_path / 'cat' / f'{i}.png')
    after = split_of()
    assert {k: after[k] for k in before} == before and len(after) == len(before) + 3
    test, _ = create_dataset('imagefolder', 'test', root=tmp_path)
    assert len(test) == sum(after.values())


def test_imagefolder_test_split_keeps_the_train_class_indices(tmp_path):
    _image_folder(tmp_path, ['train'], classes=('a', 'b', 'c'), per_class=2)
    _image_folder(tmp_path, ['val'], classes=('b', 'c'), per_class=2)
    test, info = create_dataset('imagefolder', 'test', root=tmp_path)
    assert info.class_names == ['a', 'b', 'c'] and sorted({int(test[i][1]) for i in range(len(test))}) == [1, 2]


@pytest.mark.parametrize('call,message', [
    (lambda: create_dataset(None), 'create_dataset needs a dataset name, got None'),
    (lambda: create_dataset('synthetic', num_classes=0), 'num_classes=0 is not allowed'),
    (lambda: create_dataset('synthetic', num_clases=3), r"synthetic does not take \['num_clases'\]"),
    (lambda: create_dataset('digits', image_size=(1, 8, 8)), r"digits does not take \['image_size'\]"),
])
def test_bad_create_dataset_calls_get_clear_errors(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_a_failed_download_says_so_and_how_to_place_the_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(*args, **kwargs):
        raise OSError('<urlopen error [Errno -3] Temporary failure in name resolution>')
    monkeypatch.setattr(tvd, 'CIFAR10', offline)
    with pytest.raises(DataError, match=r'the download of cifar10 into .* failed \(OSError: <urlopen error.*'
                                        r'place the files as .*cifar-10-batches-py'):
        create_dataset('cifar10', 'train', root=tmp_path, download=True)


def test_an_image_folder_knows_its_labels_without_decoding_an_image(tmp_path, monkeypatch):
    """Label checks and stratified evaluation subsets read ``labels``; they never open every image file."""
    from PIL import Image

    from timm_lipschitz.robustness.subsets import evaluation_subset, labels_of
    _image_folder(tmp_path, ['train', 'val'], classes=('a', 'b'), per_class=4)
    ds, _ = create_dataset('imagefolder', 'train', root=tmp_path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, 'open', lambda *a, **k: opened.append(a) or real_open(*a, **k))
    assert labels_of(ds).tolist() == [0] * 4 + [1] * 4
    assert sorted(labels_of(evaluation_subset(ds, 4)).tolist()) == [0, 0, 1, 1] and opened == []


def test_the_keyed_augmentation_differs_across_images_and_epochs_and_repeats_for_one_key():
    """An item's augmentation is a function of (seed, epoch, index): the same key gives the same crop, and the
    images of one epoch get their own crops (a stream that dropped the index gave all of them one crop)."""
    import torch
    from timm_lipschitz.data.transforms import train_transform
    t = train_transform('cifar', (1, 8, 8), seed=0)
    img = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    epoch0 = [t(img, i) for i in range(24)]
    assert len({bytes(x.numpy()) for x in epoch0}) > 8 and torch.equal(t(img, 3), epoch0[3])
    t.set_epoch(1)
    assert sum(not torch.equal(t(img, i), epoch0[i]) for i in range(24)) > 8
    before = torch.get_rng_state()
    t(img, 0)
    assert torch.equal(torch.get_rng_state(), before)  # torch's global generator is left alone


def test_the_trainers_dataloader_tells_the_keyed_augmentation_each_epoch():
    """The epoch reaches the keyed transform through the sampler Accelerate sets, also once prepared."""
    import accelerate
    from timm_lipschitz.train.build import build_train_loader
    from timm_lipschitz.data import create_dataset
    ds, _ = create_dataset('digits', 'train', input_size=(1, 8, 8))
    recipe = tiny_recipe('unused', data={'name': 'digits', 'input_size': [1, 8, 8], 'fast_path': False,
                                  'augmentation': 'crop', 'num_workers': 0})
    recipe = resolve_recipe(recipe)
    accelerator = accelerate.Accelerator(cpu=True)
    loader = accelerator.prepare(build_train_loader(recipe, ds, 32, (1, 8, 8), accelerator))
    loader.set_epoch(3)
    assert ds.transform.epoch == 3


def test_images_normalized_into_the_pixel_range_get_a_warning():
    """(x - 0.5) / 2 lies in [-0.25, 0.25]: inside the old [-0.5, 1.5] tolerance, and it scored 7.8% for 96.9%."""
    from timm_lipschitz.normalization import PixelRangeWarning, warn_if_not_pixels
    x = torch.rand(8, 1, 8, 8)
    with pytest.warns(PixelRangeWarning, match='a negative value is never a pixel'):
        warn_if_not_pixels((x - 0.5) / 2, 'the evaluation images')
    with warnings.catch_warnings():
        warnings.simplefilter('error', PixelRangeWarning)
        warn_if_not_pixels(x, 'the evaluation images')
        warn_if_not_pixels(x.clamp(0, 1) - 1e-5, 'the evaluation images')  # float error of a resize: no warning
