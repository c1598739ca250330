"""Users' image files as model input: any size, colour, bit depth, alpha and polarity.

Each image becomes a float ``(C, height, W)`` tensor in [0, 1] with the polarity the model was
trained on: grey or colour as the model expects, alpha composited onto a background that
keeps the ink visible, 16-bit scaled, resized to the model's height keeping the aspect ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .data import POLARITIES, InputSpec
from .errors import ImageError, first_line

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def find_images(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files to read, in order: each path itself, or a folder's image files sorted by name.

    A path that does not exist, or a folder without images, comes back with an error text.
    """
    found: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
            found += [(p, None) for p in files] or [(path, f"no {', '.join(SUFFIXES)} files in this folder")]
        elif path.is_file():
            found.append((path, None))
        else:
            found.append((path, "no such file or folder"))
    return found


def _pixels(image: Image.Image) -> np.ndarray:
    """Float ``(H, W, C)`` in [0, 1] with C = 1 (grey), 2 (grey, alpha), 3 or 4 (RGB[A])."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(image, dtype=np.float32)[..., None] / 65535.0
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float32)
        return array[..., None] / (65535.0 if array.max() > 255 else 255.0)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return np.clip(array if array.max() <= 1.0 else array / 255.0, 0, 1)[..., None]
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array if array.ndim == 3 else array[..., None]


def _flatten_alpha(array: np.ndarray) -> np.ndarray:
    """Composite transparent pixels onto black or white, whichever the opaque ink is not."""
    if array.shape[-1] not in (2, 4):
        return array
    colour, alpha = array[..., :-1], array[..., -1:]
    opaque = alpha[..., 0] > 0.5
    ink = colour[opaque].mean() if opaque.any() else 0.0
    background = 0.0 if ink > 0.5 else 1.0
    return colour * alpha + background * (1 - alpha)


def _border_level(image: torch.Tensor) -> float:
    """Median brightness of the outermost pixels: the background, for nearly every scan."""
    edges = torch.cat([image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1)
    return float(edges.mean(0).median())


def read_image(path: str | Path, spec: InputSpec, polarity: str = "auto") -> torch.Tensor:
    """One file as model input ``(spec.channels, spec.height, W)``; ImageError names a bad file.

    ``polarity`` says how the file is drawn (``auto``: bright borders mean dark ink on a light
    background); the result always has the model's polarity. A model trained on one fixed
    width (MNIST) gets the image fitted inside that box and centred; others get it at the
    model's height, at least ``spec.min_width`` wide.
    """
    if polarity not in ("auto", *POLARITIES):
        raise ImageError(f"polarity '{polarity}' is not one of auto, {', '.join(POLARITIES)}")
    try:
        with Image.open(path) as image:
            image.load()
            array = _pixels(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: cannot read it as an image ({first_line(exc)})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{path}: the image is empty")
    array = _flatten_alpha(array)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    if spec.channels == 1 and tensor.shape[0] == 3:
        tensor = (0.299 * tensor[0] + 0.587 * tensor[1] + 0.114 * tensor[2]).unsqueeze(0)
    elif spec.channels == 3 and tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    drawn = polarity if polarity != "auto" else ("dark-on-light" if _border_level(tensor) > 0.5 else "light-on-dark")
    if drawn != spec.polarity:
        tensor = 1.0 - tensor
    return _fit(tensor, spec)


def _crop_to_ink(image: torch.Tensor, background: float) -> torch.Tensor:
    """The smallest box holding every pixel far from the background (the whole image when blank)."""
    ink = (image - background).abs().amax(0) > 0.3
    rows, columns = ink.any(1).nonzero(), ink.any(0).nonzero()
    if len(rows) == 0:
        return image
    return image[:, int(rows[0]) : int(rows[-1]) + 1, int(columns[0]) : int(columns[-1]) + 1]


def _fit(image: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Scale keeping the aspect ratio and pad with the background to the model's geometry.

    With ``spec.ink_height`` (the share of the height the ink filled in training, 20/28 for
    MNIST), the image is first cropped to its ink, then sized and centred like the training
    images; otherwise it fills the model's height.
    """
    if spec.ink_height:
        image = _crop_to_ink(image, spec.background)
    _, h, w = image.shape
    box = spec.height * (spec.ink_height or 1.0)
    fixed = spec.min_width == spec.max_width
    scale = min(box / h, (spec.max_width * box / spec.height) / w) if fixed else box / h
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    resized = F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    margin = (spec.height - size[0]) // 2 if spec.ink_height else 0
    width = spec.max_width if fixed else max(size[1] + 2 * margin, spec.min_width)
    canvas = torch.full((image.shape[0], spec.height, width), spec.background)
    top = (spec.height - size[0]) // 2
    left = (width - size[1]) // 2 if fixed else margin
    canvas[:, top : top + size[0], left : left + size[1]] = resized
    return canvas
