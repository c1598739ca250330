"""The ``captcha`` dataset: images from the ``captcha`` package (an optional extra,
``pip install 'crnnfw[captcha]'``), as in the Keras captcha_ocr example and ypwhs/captcha_break.

That package draws its randomness from Python's ``secrets`` module, which cannot be seeded. Each
image here is drawn with that module swapped, for the one call, for a ``random.Random`` seeded
by the split's seed and the image's index, so the val and test splits are the same images on
every machine and in every process, and training strings are fresh every epoch.
"""

from __future__ import annotations

import contextlib
import random
import string
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

import crnnfw
from crnnfw.data import InputSpec
from crnnfw.images import prepare

from .printed import rendered_data

CHARSET = string.digits + string.ascii_uppercase


@dataclass
class CaptchaConfig:
    charset: str = CHARSET  # characters drawn (the Keras example and captcha_break use 0-9 and A-Z)
    min_length: int = 4
    max_length: int = 6
    width: int = 160  # the captcha image, before scaling to the model's height
    image_height: int = 60
    height: int = 32  # the model's input height
    train_size: int = 20000  # images drawn afresh every epoch
    val_size: int = 1000
    test_size: int = 2000
    val_seed: int = 21
    test_seed: int = 22
    workers: int = 0  # drawing processes for training images (0: one per core)
    augment: crnnfw.TextAugmentConfig = field(default_factory=crnnfw.TextAugmentConfig)

    def __post_init__(self) -> None:
        if not self.charset or len(set(self.charset)) != len(self.charset):
            raise ValueError("charset must be non-empty without repeated characters")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        if min(self.train_size, self.val_size, self.test_size) < 1 or self.height < 8 or min(self.width, self.image_height) < 16:
            raise ValueError("train_size, val_size and test_size must be >= 1, height >= 8, width and image_height >= 16")


class _SeededSecrets:
    """The three functions of ``secrets`` the captcha package calls, from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def randbelow(self, n: int) -> int:
        return self.rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self.rng.getrandbits(k)

    def choice(self, seq: Any) -> Any:
        return self.rng.choice(seq)


@contextlib.contextmanager
def _seeded(module: Any, rng: random.Random) -> Iterator[None]:
    original = module.secrets
    module.secrets = _SeededSecrets(rng)
    try:
        yield
    finally:
        module.secrets = original


class CaptchaRenderer:
    """Draws image ``i`` of a stream from ``seed``: the same text and picture every time."""

    def __init__(self, config: CaptchaConfig) -> None:
        self.config = config
        self.spec = InputSpec(1, config.height, 8, 4096, "light-on-dark", None)
        self._drawer: Any = None  # made in each process that draws (fonts do not pickle)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_drawer": None}

    def render(self, seed: int, index: int) -> tuple[torch.Tensor, str]:
        """A uint8 ``(1, height, W)`` image, light ink on dark (the model's polarity), and its text."""
        from captcha import image as captcha_image

        if self._drawer is None:
            self._drawer = captcha_image.ImageCaptcha(width=self.config.width, height=self.config.image_height)
        rng = random.Random(seed * 1_000_003 + index)
        text = "".join(rng.choice(self.config.charset) for _ in range(rng.randint(self.config.min_length, self.config.max_length)))
        with _seeded(captcha_image, rng):
            picture = self._drawer.generate_image(text)
        array = np.asarray(picture.convert("L"), dtype=np.float32)[..., None] / 255.0
        return prepare(array, self.spec, "dark-on-light").mul(255).round_().to(torch.uint8), text


def captcha_data(config: CaptchaConfig) -> crnnfw.DataModule:
    """The ``captcha`` dataset factory."""
    try:
        import captcha.image  # noqa: F401  (only to say how to install it)
    except ImportError:
        raise crnnfw.DataError("data.name: captcha needs the captcha package: pip install 'crnnfw[captcha]'") from None
    classes = "".join(sorted(config.charset))
    notes = [f"captcha: {config.min_length}-{config.max_length} characters over {len(classes)}, drawn by the captcha package"]
    return rendered_data(CaptchaRenderer(config), classes, notes)
