"""Users' image files as model input: any size, colour, bit depth, alpha, orientation and polarity.

One preprocessing serves training on image files, ``predict`` and the ONNX metadata's
description, so training and inference cannot drift apart. Each image becomes a float
``(C, height, W)`` tensor in [0, 1] with the polarity the model was trained on: EXIF
orientation applied, grey or colour as the model expects, alpha composited onto a background
that keeps the ink visible, 16-bit scaled, resized to the model's height keeping the aspect
ratio (at least ``min_width`` wide, and squeezed to ``max_width`` when the spec says so).

Users' files may be hostile: a 178-byte PNG can declare 1 x 100000 pixels (gigabytes once
scaled to the model's height), a named pipe would block a reader forever. Sizes are checked
from the header before decoding (:data:`MAX_PIXELS`, :data:`MAX_WIDTH`), and only regular
files are opened.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .data import POLARITIES, InputSpec
from .errors import ImageError, first_line

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Most pixels (width x height, read from the file's header before anything is decoded) an
#: image may have: 50 million holds a 600 dpi A4 scan (35 million) or a 48-megapixel photo.
#: Decoding and preparing one takes up to about 24 bytes a pixel (colour; 16 grey): 1.2 GB.
MAX_PIXELS = 50_000_000

#: Widest model input ``predict`` makes by default (unless the model was trained on wider
#: images): 4096 px at the model's height, some 200 characters of a text line. The model's
#: memory grows with the width; a 1 x 100000 px file would otherwise ask for gigabytes.
MAX_WIDTH = 4096

_NOT_FILES = {
    stat.S_IFIFO: "a named pipe (FIFO)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def find_images(paths: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files to read, in order: each path itself, or a folder's image files sorted by name.

    A path that is not a regular file or folder (missing, a broken link, a pipe, a device ...),
    and a folder without images, come back with an error text saying what it is; nothing here
    opens a file, so a named pipe cannot block and a device is never read.
    """
    found: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if not os.path.isdir(path):  # False, not an exception, for a path it cannot look at
            found.append((path, _not_a_file(path)))
            continue
        try:
            entries = sorted(path.iterdir())
        except OSError as exc:
            found.append((path, f"cannot list this folder ({exc.strerror or first_line(exc)})"))
            continue
        files = [(p, _not_a_file(p)) for p in entries if p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and not os.path.isdir(p)]
        found += files or [(path, f"no {', '.join(SUFFIXES)} files in this folder")]
    return found


def _not_a_file(path: Path) -> str | None:
    """None for a regular file (or a link to one); else what ``path`` is, in words, from
    ``stat`` alone."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop (its links point at each other and never reach a file); fix or remove the link"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)}, which does not exist); fix or remove the link"
        if isinstance(exc, FileNotFoundError):
            return "no such file or folder"
        return f"cannot look at it ({exc.strerror or first_line(exc)})"
    if stat.S_ISREG(mode):
        return None
    return f"{_NOT_FILES.get(stat.S_IFMT(mode), 'not a regular file')}, not an image file; give image files or folders"


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
    array = np.asarray(image, dtype=np.float32)
    array /= 255.0  # in place: a large image is not held twice
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


def load_pixels(
    source: str | Path | bytes,
    name: str | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    spec: InputSpec | None = None,
    max_width: int | None = None,
) -> np.ndarray:
    """A file (or its bytes) decoded to float ``(H, W, C)`` in [0, 1], upright as its EXIF
    orientation says; ImageError names ``name`` (default: the path) and what is wrong.

    Its size is checked from the header before anything is decoded, so a small hostile file
    cannot take gigabytes: at most ``max_pixels`` pixels, and (given ``spec`` and
    ``max_width``) at most ``max_width`` px wide once scaled to the model's height.
    """
    name = name or str(source)
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS; max_pixels decides instead, as this file's error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _opened(source, name) as stream, Image.open(stream) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(_too_many_pixels(name, f"{width} x {height} = {width * height:,}", max_pixels))
                if spec is not None and max_width is not None and spec.ink_height is None:  # else known once cropped to its ink
                    upright_width, upright_height = _upright(image)
                    _check_width(name, scaled_width(upright_height, upright_width, spec), spec, max_width)
                image.load()
                array = _pixels(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as exc:  # over twice Image.MAX_IMAGE_PIXELS, raised on opening
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found and int(found.group(1)) > max_pixels:
            raise ImageError(_too_many_pixels(name, f"{int(found.group(1)):,}", max_pixels)) from None
        raise ImageError(f"{name}: refused, too many pixels for Pillow ({first_line(exc)}); give a smaller image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: cannot read it as an image (not a format Pillow reads)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: cannot read it as an image ({first_line(exc)})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{name}: the image is empty")
    return array


def in_memory(image: Any, name: str = "the image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A PIL image, numpy array or tensor as :func:`load_pixels` gives a file: float
    ``(H, W, C)`` in [0, 1], upright. Arrays are ``(H, W)`` or ``(H, W, C)``, tensors ``(H, W)``
    or ``(C, H, W)``; integers are scaled by their type's range, floats must lie in [0, 1]."""
    if isinstance(image, Image.Image):
        if image.width * image.height > max_pixels:
            raise ImageError(_too_many_pixels(name, f"{image.width} x {image.height}", max_pixels))
        return _pixels(ImageOps.exif_transpose(image))
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        array = (tensor.permute(1, 2, 0) if tensor.ndim == 3 else tensor).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise ImageError(f"{name}: a {type(image).__name__}, not an image; give a path, a PIL image, a numpy array or a tensor")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or 0 in array.shape:
        layout = "(C, H, W)" if isinstance(image, torch.Tensor) else "(H, W, C)"
        raise ImageError(f"{name}: shape {tuple(image.shape)} is not an image; give (H, W) or {layout} with 1 to 4 channels")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ImageError(_too_many_pixels(name, f"{array.shape[1]} x {array.shape[0]}", max_pixels))
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / (65535.0 if array.dtype.itemsize > 1 else 255.0)
    values = array.astype(np.float32)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ImageError(f"{name}: float pixels must lie in [0, 1]; divide 8-bit values by 255")
    return values


@contextlib.contextmanager
def _opened(source: str | Path | bytes, name: str) -> Iterator[BinaryIO]:
    """The bytes, or the file opened without blocking (a named pipe has no writer to wait
    for) and refused unread when it is not a regular file (a device would never end)."""
    if isinstance(source, bytes):
        yield io.BytesIO(source)
        return
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as stream:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ImageError(f"{name}: {_NOT_FILES.get(stat.S_IFMT(mode), 'not a regular file')}, not an image file; give image files or folders")
        yield stream


def _upright(image: Image.Image) -> tuple[int, int]:
    """Width and height once the EXIF orientation is applied, from the header alone: the
    EXIF block Pillow read on opening (a PNG's later eXIf chunk counts only once decoded)."""
    width, height = image.size
    orientation = getattr(image, "tag_v2", {}).get(0x0112)
    if orientation is None and image.info.get("exif"):
        exif = Image.Exif()
        exif.load(image.info["exif"])
        orientation = exif.get(0x0112)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _too_many_pixels(name: str, count: str, max_pixels: int) -> str:
    """The one error line for an image over the pixel limit (``count``: its pixels, in words)."""
    return f"{name}: refused, too many pixels ({count}, more than the limit of {max_pixels:,}); give a smaller image (crnnfw predict --max-pixels N raises the limit)"


def _check_width(name: str, width: int, spec: InputSpec, max_width: int) -> None:
    """ImageError when the model input would be wider than ``max_width``; a fixed-width or a
    squeezing model never is."""
    if spec.min_width != spec.max_width and spec.too_wide != "squeeze" and width > max_width:
        raise ImageError(
            f"{name}: refused, {width:,} px wide at the model's height of {spec.height} px, more than the limit "
            f"of {max_width:,}; crop or split the image (crnnfw predict --max-width N raises the limit)"
        )


def read_image(path: str | Path, spec: InputSpec, polarity: str = "auto", *, max_pixels: int = MAX_PIXELS, max_width: int | None = None) -> torch.Tensor:
    """One file as model input ``(spec.channels, spec.height, W)``; ImageError names a bad file,
    or one that is over the limits (see :func:`load_pixels`; ``max_width`` None: no limit)."""
    array = load_pixels(path, max_pixels=max_pixels, spec=spec, max_width=max_width)
    return prepare(array, spec, polarity, max_width=max_width, name=str(path))


def prepare(array: np.ndarray, spec: InputSpec, polarity: str = "auto", *, max_width: int | None = None, name: str = "the image") -> torch.Tensor:
    """Decoded pixels (:func:`load_pixels`) as model input ``(spec.channels, spec.height, W)``.

    ``polarity`` says how the image is drawn (``auto``: bright borders mean dark ink on a light
    background); the result always has the model's polarity. A model trained on one fixed
    width (MNIST) gets the image fitted inside that box and centred; others get it at the
    model's height, at least ``spec.min_width`` wide (and at most ``spec.max_width`` when
    ``spec.too_wide`` is ``squeeze``). An image that would come out wider than ``max_width``
    is refused (ImageError naming ``name``) before it is scaled.
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
    return _fit(tensor, spec, max_width, name)


def _crop_to_ink(image: torch.Tensor, background: float) -> torch.Tensor:
    """The smallest box holding every pixel far from ``background``: over 0.3 of the way to the
    farthest pixel, so faint ink on grey paper is boxed as fully as black on white (the whole
    image when blank)."""
    far = (image - background).abs().amax(0)
    ink = far > 0.3 * max(float(far.max()), 0.1)
    rows, columns = ink.any(1).nonzero(), ink.any(0).nonzero()
    if len(rows) == 0:
        return image
    return image[:, int(rows[0]) : int(rows[-1]) + 1, int(columns[0]) : int(columns[-1]) + 1]


def _fit(image: torch.Tensor, spec: InputSpec, max_width: int | None = None, name: str = "the image") -> torch.Tensor:
    """Scale keeping the aspect ratio and pad with the background to the model's geometry.

    With ``spec.ink_height`` (the share of the height the ink filled in training, 20/28 for
    MNIST), the image is first cropped to its ink, then sized and centred like the training
    images, on its own paper level (its border's median: grey paper stays one even grey);
    otherwise it fills the model's height.
    """
    background = spec.background
    if spec.ink_height:
        background = _border_level(image)
        image = _crop_to_ink(image, background)
    _, h, w = image.shape
    box = spec.height * (spec.ink_height or 1.0)
    fixed = spec.min_width == spec.max_width
    scale = min(box / h, (spec.max_width * box / spec.height) / w) if fixed else box / h
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if max_width is not None:
        _check_width(name, size[1], spec, max_width)
    if not fixed and spec.too_wide == "squeeze" and size[1] > spec.max_width:
        size = (size[0], spec.max_width)
    resized = F.interpolate(image.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    margin = (spec.height - size[0]) // 2 if spec.ink_height else 0
    width = spec.max_width if fixed else max(size[1] + 2 * margin, spec.min_width)
    canvas = torch.full((image.shape[0], spec.height, width), background)
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
    fit = (
        f"cropped to its ink (pixels over 0.3 of the way from the border's median to the farthest pixel), scaled so the ink is {spec.ink_height:.3g} of the height, centred on the border's level"
        if spec.ink_height
        else "scaled to the height keeping the aspect ratio"
    )
    width = (
        f"fitted inside {spec.max_width} px and centred"
        if fixed
        else f"at least {spec.min_width} px wide (padded on the right)" + (f", squeezed to {spec.max_width} px when wider" if spec.too_wide == "squeeze" else "")
    )
    return (
        f"EXIF orientation applied; {'grey (0.299 R + 0.587 G + 0.114 B)' if spec.channels == 1 else 'RGB'}; "
        f"alpha composited onto the side the ink is not; scaled to [0, 1]; turned {spec.polarity} "
        f"(a file whose border is brighter than 0.5 counts as dark-on-light); {fit} to {spec.height} px high, "
        f"bilinear with antialiasing; {width}; background {spec.background:g}"
    )
