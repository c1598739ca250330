"""MNIST offline, IDX files, and batching as tensors."""

from __future__ import annotations

import gzip
import struct

import pytest
import torch

import crnnfw
from crnnfw import DataError
from crnnfw_plugins.mnist import MNISTConfig, load_mnist, mnist_data


def test_mnist_is_complete_and_uint8():
    arrays = load_mnist()
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["test_images"].shape == (10000, 28, 28)
    assert arrays["train_images"].dtype == torch.uint8
    assert torch.bincount(arrays["test_labels"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert arrays["train_labels"][:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3]  # the original order
    assert int(arrays["train_images"].max()) == 255


def write_idx(path, tensor: torch.Tensor, compress: bool) -> None:
    header = bytes([0, 0, 0x08, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    payload = header + bytes(tensor.to(torch.uint8).flatten().tolist())
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_files_in_root_are_read(tmp_path):
    arrays = load_mnist()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    subset = {
        "train-images-idx3-ubyte": arrays["train_images"][:50],
        "train-labels-idx1-ubyte": arrays["train_labels"][:50],
        "t10k-images-idx3-ubyte": arrays["test_images"][:20],
        "t10k-labels-idx1-ubyte": arrays["test_labels"][:20],
    }
    for i, (name, tensor) in enumerate(subset.items()):
        write_idx(raw / (name + (".gz" if i % 2 else "")), tensor, compress=bool(i % 2))
    with pytest.raises(DataError, match="data.val_size: 5000 is not below the 50 training images"):
        mnist_data(MNISTConfig(root=str(tmp_path)))
    data = mnist_data(MNISTConfig(root=str(tmp_path), val_size=10))
    assert len(data.train) == 40 and len(data.val) == 10 and len(data.test) == 20
    assert torch.equal(data.test.images[:, 0], arrays["test_images"][:20])
    assert torch.equal(data.train.targets, arrays["train_labels"][:40])
    assert torch.equal(data.val.targets, arrays["train_labels"][40:50])  # the last of the training set, as MNIST's usual cut


def test_missing_or_broken_idx_gives_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        mnist_data(MNISTConfig(root=str(tmp_path)))
    with pytest.raises(DataError, match="is not a folder"):
        mnist_data(MNISTConfig(root=str(tmp_path / "absent")))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    load_mnist.cache_clear()
    with pytest.raises(DataError, match="is 11 bytes; its header promises 17"):
        mnist_data(MNISTConfig(root=str(tmp_path)))


def test_batches_cover_the_split_once_and_augment_as_a_batch():
    arrays = load_mnist()
    augment = crnnfw.RandomAffine(crnnfw.AugmentConfig(enabled=True, degrees=15, translate=0.1))
    split = crnnfw.TensorSplit(arrays["train_images"][:1000].unsqueeze(1), arrays["train_labels"][:1000], transform=augment)
    generator = torch.Generator().manual_seed(1)
    batches = list(split.batches(300, shuffle=True, generator=generator))
    assert [len(b) for b in batches] == [300, 300, 300, 100]
    labels = torch.cat([b.targets for b in batches])
    assert sorted(labels.tolist()) == sorted(arrays["train_labels"][:1000].tolist())
    first = batches[0]
    assert first.images.dtype == torch.float32 and first.images.shape == (300, 1, 28, 28)
    assert 0.0 <= float(first.images.min()) and float(first.images.max()) <= 1.0
    assert first.widths.tolist() == [28] * 300

    plain = crnnfw.TensorSplit(arrays["train_images"][:10].unsqueeze(1), arrays["train_labels"][:10])
    unaugmented = next(plain.batches(10, shuffle=False)).images
    assert torch.equal(unaugmented, arrays["train_images"][:10].unsqueeze(1).float() / 255)
    warped = augment(unaugmented, torch.Generator().manual_seed(0))
    assert warped.shape == unaugmented.shape and not torch.allclose(warped, unaugmented)


def test_empty_split_is_refused():
    with pytest.raises(DataError, match="empty"):
        crnnfw.TensorSplit(torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("size", [(28, 28), (32, 97), (1, 5)])
def test_the_augmentation_grid_is_affine_grids(size):
    from crnnfw.augment import sampling_grid

    theta = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.affine_grid(theta, [6, 1, *size], align_corners=False)
    assert torch.allclose(sampling_grid(theta, *size), expected, atol=1e-5)


def test_text_augmentation_keeps_widths_range_and_background_padding():
    from crnnfw import TextAugment, TextAugmentConfig

    images = torch.zeros(16, 1, 32, 120)
    widths = torch.randint(40, 121, (16,), generator=torch.Generator().manual_seed(0))
    for i, width in enumerate(widths.tolist()):
        images[i, :, 10:22, 4 : width - 4] = 0.9  # a bar of ink inside each sample's own width
    augment = TextAugment(TextAugmentConfig(enabled=True, invert=0.5, thickness=1.0, blur=1.0))
    out = augment(images, torch.Generator().manual_seed(1), widths=widths)
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    for i, width in enumerate(widths.tolist()):
        assert float(out[i, ..., width:].abs().sum()) == 0  # padding stays background
        assert float(out[i, ..., :width].sum()) > 0
    assert not torch.allclose(out, images)
    same = TextAugment(TextAugmentConfig(enabled=True, rotate=0, shear=0, perspective=0, scale_x=0, scale_y=0, thickness=0, blur=0, noise=0, contrast=0, gamma=0, invert=0))
    assert torch.allclose(same(images, torch.Generator().manual_seed(1), widths=widths), images, atol=1e-5)  # every part off-able
    again = augment(images, torch.Generator().manual_seed(1), widths=widths)
    assert torch.equal(out, again)  # drawn from the generator alone: resumable


def test_jpeg_like_loss_blocks_detail_and_quantises():
    from crnnfw import TextAugment, TextAugmentConfig

    images = torch.rand(4, 1, 32, 90, generator=torch.Generator().manual_seed(0))
    widths = torch.tensor([90, 70, 50, 33])
    only_jpeg = TextAugmentConfig(enabled=True, rotate=0, shear=0, perspective=0, scale_x=0, scale_y=0, thickness=0, blur=0, noise=0, contrast=0, gamma=0, jpeg=1.0)
    out = TextAugment(only_jpeg)(images, torch.Generator().manual_seed(1), widths=widths)
    assert out.shape == images.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    for i, width in enumerate(widths.tolist()):
        assert float(out[i, ..., width:].abs().sum()) == 0  # padding stays background
        assert len(torch.unique(out[i, ..., :width])) <= 64  # intensities quantised

    def block(x: torch.Tensor) -> float:
        return float(x[..., :8, :8].var())

    assert all(block(out[i]) < block(images[i]) for i in range(4))  # detail within a block averaged away
