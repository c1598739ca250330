"""Users' image files as model input: any size, colour, bit depth, alpha, orientation and polarity.

One preprocessing serves training on image files, ``predict`` and the ONNX metadata's
description, so training and inference cannot drift apart. Each image becomes a float
``(C, height, W)`` tensor in [0, 1] with the polarity the model was trained on: EXIF
orientation applied, grey or colour as the model expects, alpha composited onto a background
that keeps the ink visible, 16-bit scaled, resized to the model's height keeping the aspect
ratio (at least ``min_width`` wide, and squeezed to ``max_width`` when the spec says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import POLARITIES, InputSpec
from .errors import ImageError, first_line

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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


def load_pixels(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A file (or its bytes) decoded to float ``(H, W, C)`` in [0, 1], upright as its EXIF
    orientation says; ImageError names ``name`` (default: the path) and what is wrong."""
    name = name or str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a bomb is one file's error
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.load()
                array = _pixels(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: refused, too many pixels ({first_line(exc)})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: cannot read it as an image (not a format Pillow reads)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: cannot read it as an image ({first_line(exc)})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: the image is empty")
    return array


def read_image(path: str | Path, spec: InputSpec, polarity: str = "auto") -> torch.Tensor:
    """One file as model input ``(spec.channels, spec.height, W)``; ImageError names a bad file."""
    return prepare(load_pixels(path), spec, polarity)


def prepare(array: np.ndarray, spec: InputSpec, polarity: str = "auto") -> torch.Tensor:
    """Decoded pixels (:func:`load_pixels`) as model input ``(spec.channels, spec.height, W)``.

    ``polarity`` says how the image is drawn (``auto``: bright borders mean dark ink on a light
    background); the result always has the model's polarity. A model trained on one fixed
    width (MNIST) gets the image fitted inside that box and centred; others get it at the
    model's height, at least ``spec.min_width`` wide (and at most ``spec.max_width`` when
    ``spec.too_wide`` is ``squeeze``).
    """
    if polarity not in ("auto", *POLARITIES):
        raise ImageError(f"polarity '{polarity}' is not one of auto, {', '.join(POLARITIES)}")
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
    if not fixed and spec.too_wide == "squeeze" and size[1] > spec.max_width:
        size = (size[0], spec.max_width)
    resized = F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    margin = (spec.height - size[0]) // 2 if spec.ink_height else 0
    width = spec.max_width if fixed else max(size[1] + 2 * margin, spec.min_width)
    canvas = torch.full((image.shape[0], spec.height, width), spec.background)
    top = (spec.height - size[0]) // 2
    left = (width - size[1]) // 2 if fixed else margin
    canvas[:, top : top + size[0], left : left + size[1]] = resized
    return canvas


def scaled_width(height: int, width: int, spec: InputSpec) -> int:
    """How wide an image of ``height`` x ``width`` pixels comes out at the model's height,
    before any squeeze (a dataset's ``too_wide: drop | error`` decides with it)."""
    return max(1, round(width * spec.height * (spec.ink_height or 1.0) / height))


def describe(spec: InputSpec) -> str:
    """The preprocessing in words, for exported models' metadata."""
    fixed = spec.min_width == spec.max_width
    fit = (f"cropped to its ink, scaled so the ink is {spec.ink_height:.3g} of the height, centred" if spec.ink_height
           else "scaled to the height keeping the aspect ratio")
    width = (f"fitted inside {spec.max_width} px and centred" if fixed else
             f"at least {spec.min_width} px wide (padded on the right)"
             + (f", squeezed to {spec.max_width} px when wider" if spec.too_wide == "squeeze" else ""))
    return (f"EXIF orientation applied; {'grey (0.299 R + 0.587 G + 0.114 B)' if spec.channels == 1 else 'RGB'}; "
            f"alpha composited onto the side the ink is not; scaled to [0, 1]; turned {spec.polarity} "
            f"(a file whose border is brighter than 0.5 counts as dark-on-light); {fit} to {spec.height} px high, "
            f"bilinear with antialiasing; {width}; background {spec.background:g}")
