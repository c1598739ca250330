"""``crnnfw data render``: a dataset's samples written out as image files plus a label file.

So a user can look at generated data, hand it to another tool, or train on it through the
``lines`` dataset (and compare that with the in-memory original). Images are written as a
scan would be: dark ink on light paper, as PNG; the labels as ``path<TAB>text`` lines.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from PIL import Image

from .data import DataModule
from .errors import CrnnfwError


def render_split(data: DataModule, out: Path, count: int, split: str = "train") -> int:
    """Write ``count`` samples of ``split`` (all of them, or a seeded subset spread over it) to
    ``out`` (which must not exist yet):
    ``images/NNNNNN.png`` and ``labels.txt``. The folder appears whole or not at all."""
    if out.exists():
        raise CrnnfwError(f"data render: {out} already exists; give a new folder")
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        (tmp / "images").mkdir()
        lines, written, position = [], 0, 0
        source = getattr(data, split)
        generator = torch.Generator().manual_seed(0)
        # Batches come grouped by width (held splits in width order): a subset is drawn over the
        # whole split, so it has the split's mix of widths and lengths, not the narrowest first.
        chosen = set(torch.randperm(len(source), generator=generator)[:count].tolist()) if count < len(source) else None
        for batch in source.batches(256, shuffle=split == "train", generator=generator):
            for image, width, text in zip(batch.images, batch.widths.tolist(), batch.target_texts(data.classes)):
                if written == count:
                    break
                position += 1
                if chosen is not None and position - 1 not in chosen:
                    continue
                pixels = image[..., :width].clamp(0, 1)
                if data.polarity == "light-on-dark":
                    pixels = 1 - pixels  # written as a scan: dark ink on light paper
                array = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                name = f"images/{written:06d}.png"
                Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp / name)
                lines.append(f"{name}\t{text}")
                written += 1
            if written == count:
                break
        (tmp / "labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
