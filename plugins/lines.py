"""The ``lines`` dataset: labelled image files from disk, in the formats OCR users already have.

Each split (``train``, ``val``, ``test``) takes one or more sources: a ``path<TAB>text`` label
file, a folder whose file names are the labels, EasyOCR CSV, docTR JSON, MMOCR JSON lines or a
clovaai LMDB (see :mod:`crnnfw_plugins.labels`). Without a ``val`` source a seeded fraction of
``train`` is held out, chosen by a hash of each sample's relative path and label, so every
machine holds out the same samples and none is also trained on.

Labels are NFC-normalised (and case-folded when asked); the charset comes from the training
labels, ``charset`` or a ``dictionary`` file, and every label is checked against it. Images
go through crnnfw's one preprocessing function (the one ``crnnfw predict`` uses), decoded in
worker processes, and are held in memory as one packed uint8 tensor; the decoded result is
cached on disk, keyed by the label files' content, the images' sizes and modification times
and the preprocessing options, so a second run starts in seconds.

Every problem is collected with its place (``file:line``) before anything trains; the run
stops with one line per kind of problem, and ``crnnfw data CONFIG`` lists them all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

import crnnfw
from crnnfw.charset import CASES, UNKNOWN_POLICIES, apply_charset, build_charset, normalise, read_dictionary
from crnnfw.data import InputSpec, apply_transform, encode_labels
from crnnfw.images import load_pixels, prepare, scaled_width

from . import labels
from .mnist import cache_dir

TOO_WIDE = ("squeeze", "drop", "error")
POLARITY = ("auto", "dark-on-light", "light-on-dark")
#: Kinds of problem that stop a run (unless ``bad_samples: skip``); the rest are warnings.
WARNINGS = ("narrower than min_width", "too wide (dropped)")


@dataclass
class LinesConfig:
    train: Any = None  # label file, image folder or LMDB folder; or a list of them; each may be {path, format, root, delimiter}
    val: Any = None  # as train; unset: val_fraction of train is held out
    test: Any = None  # as train (required: the split every figure is reported on)
    format: str = "auto"  # auto | tsv | folder | csv | json | jsonl | lmdb (a source's own `format` wins)
    root: Optional[str] = None  # folder image paths are relative to (default: each label file's folder)
    delimiter: str = "\t"  # tsv: between path and label, split on its first occurrence (MMOCR, trdg: " ")
    name_separator: str = "_"  # folder: "7H3K_0042.png" is labelled "7H3K"
    val_fraction: float = 0.1  # without val: this share of train is held out, chosen by a hash of each sample's path and label
    val_seed: int = 0  # changes which samples the hash holds out
    charset: Optional[str] = None  # the characters the model reads (unset: every character of the training labels)
    dictionary: Optional[str] = None  # or a file of one character per line (<space> for a space)
    case: str = "keep"  # keep | lower | upper, applied to every label (after Unicode NFC)
    unknown: str = "error"  # a character outside the charset: error | drop (the sample) | skip (the character)
    bad_samples: str = "error"  # a missing or unreadable image, empty label, duplicate, malformed line: error | skip
    height: int = 32  # images are scaled to this height keeping their aspect ratio
    channels: int = 1  # 1: grey | 3: colour
    min_width: int = 8  # narrower images are padded to this width
    max_width: int = 1024  # wider images: see too_wide
    too_wide: str = "squeeze"  # squeeze (to max_width) | drop (counted) | error
    polarity: str = "auto"  # how the files are drawn: auto (per image, from its border) | dark-on-light | light-on-dark
    ink_height: Optional[float] = None  # unset: each image fills the height; else cropped to its ink, which fills this share of it (as a multidigit model reads files; eval takes the model's)
    cache: str = "auto"  # auto (memory when the decoded set fits a quarter of RAM, else stream) | memory | stream | off (memory, no disk cache)
    cache_dir: Optional[str] = None  # where decoded sets are cached (default: $CRNNFW_CACHE_DIR or ~/.cache/crnnfw)
    workers: int = 0  # decoding processes (0: one per core)
    augment: crnnfw.TextAugmentConfig = field(default_factory=crnnfw.TextAugmentConfig)  # text-line augmentation of training batches (off by default)

    def __post_init__(self) -> None:
        self.cache = {"False": "off", "True": "memory"}.get(str(self.cache), self.cache)  # YAML reads a bare off as false
        choices = {
            "case": CASES,
            "unknown": UNKNOWN_POLICIES,
            "bad_samples": ("error", "skip"),
            "too_wide": TOO_WIDE,
            "polarity": POLARITY,
            "cache": ("auto", "memory", "stream", "off"),
            "format": labels.FORMATS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: '{getattr(self, key)}' is not one of {', '.join(allowed)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 8 <= self.height <= 512 or not 1 <= self.min_width <= self.max_width:
            raise ValueError("need 8 <= height <= 512 and 1 <= min_width <= max_width")
        if self.ink_height is not None and not 0 < self.ink_height <= 1:
            raise ValueError(f"ink_height must lie in (0, 1], got {self.ink_height}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.charset is not None and self.dictionary is not None:
            raise ValueError("give charset or dictionary, not both")
        if self.train is None or self.test is None:
            missing = " and ".join(k for k in ("train", "test") if getattr(self, k) is None)
            raise ValueError(f"{missing}: give a label file, an image folder or an LMDB folder (e.g. data.{missing.split()[0]}=labels.txt)")


@dataclass(frozen=True)
class Sample:
    """One labelled image as found: where it comes from and its label as trained on."""

    entry: labels.Entry
    text: str
    key: str  # stable across machines: the path relative to its source, and the label


@dataclass
class Report:
    """Every problem reading a dataset found, with its place, and the changes it counted."""

    problems: list[crnnfw.Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # counted changes (drop, skip)

    def add(self, split: str, kind: str, where: str, detail: str) -> None:
        self.problems.append(crnnfw.Problem(split, kind, where, detail))

    def errors(self) -> list[crnnfw.Problem]:
        return [p for p in self.problems if p.kind not in WARNINGS]


def _sources(value: Any, key: str, config: LinesConfig) -> list[labels.Source]:
    """A split's sources, from a path, a list of paths or mappings with per-source options."""
    items = value if isinstance(value, (list, tuple)) else [value]
    sources = []
    for item in items:
        options = dict(item) if isinstance(item, dict) else {"path": item}
        allowed = ("path", "format", "root", "delimiter", "name_separator", "image_key", "text_key")
        if set(options) - set(allowed) or not isinstance(options.get("path"), str):
            raise crnnfw.DataError(f"data.{key}: each source is a path or a mapping with path (and {', '.join(allowed[1:])}); got {item!r}")
        options.setdefault("format", config.format)
        options.setdefault("root", config.root)
        options.setdefault("delimiter", config.delimiter)
        options.setdefault("name_separator", config.name_separator)
        if options["format"] not in labels.FORMATS:
            raise crnnfw.DataError(f"data.{key}: format '{options['format']}' is not one of {', '.join(labels.FORMATS)}")
        sources.append(labels.Source(**options))
    return sources


def _source_folder(source: labels.Source) -> str:
    """The folder a source's image paths are relative to, resolved, with a trailing separator."""
    folder = source.root or (source.path if Path(source.path).is_dir() else os.path.dirname(source.path) or ".")
    return os.path.join(os.path.realpath(folder), "")


def _stable_key(folder: str, entry: labels.Entry) -> str:
    """The sample's path relative to its source's folder (or its LMDB record) and its label:
    the same on every machine, wherever the data sits."""
    if "::" in entry.image:
        return f"{Path(entry.image.split('::')[0]).name}::{entry.image.split('::')[1]}\0{entry.text}"
    relative = entry.image[len(folder) :] if entry.image.startswith(folder) else os.path.basename(entry.image)
    return f"{relative}\0{entry.text}"


def _read_split(split: str, value: Any, config: LinesConfig, report: Report) -> tuple[list[Sample], list[labels.Source]]:
    sources = _sources(value, split, config)
    samples = []
    for source in sources:
        entries, problems = labels.read_source(source)
        folder = _source_folder(source)
        for problem in problems:
            report.add(split, problem.kind, problem.where, problem.detail)
        for entry in entries:
            text = normalise(entry.text, config.case)
            if not text:
                report.add(split, "empty label", entry.where, "the label is empty after Unicode normalisation")
                continue
            samples.append(Sample(entry, text, _stable_key(folder, entry)))
    return samples, sources


def _held_out(key: str, seed: int, fraction: float) -> bool:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class _Decoder(torch.utils.data.Dataset):
    """Decodes samples with the shared preprocessing, in DataLoader worker processes."""

    def __init__(self, samples: list[Sample], spec: InputSpec, polarity: str) -> None:
        self.samples, self.spec, self.polarity = samples, spec, polarity

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, int, str | None]:
        entry = self.samples[index].entry
        try:
            array = load_pixels(labels.read_image_bytes(entry), entry.where)
            natural = scaled_width(array.shape[0], array.shape[1], self.spec)
            image = prepare(array, self.spec, self.polarity)
        except crnnfw.CrnnfwError as exc:
            return index, None, 0, str(exc)
        return index, image.mul(255).round_().to(torch.uint8), natural, None


def _decode(samples: list[Sample], spec: InputSpec, config: LinesConfig) -> list[tuple[Tensor | None, int, str | None]]:
    """Every sample's image as uint8 ``(C, H, W)``, its width before any squeeze, or its error."""
    workers = config.workers or os.cpu_count() or 1
    decoder = _Decoder(samples, spec, config.polarity)
    if workers == 1 or len(samples) < 256:
        return [decoder[i][1:] for i in range(len(samples))]
    loader = torch.utils.data.DataLoader(decoder, batch_size=64, num_workers=workers, collate_fn=_by_value)
    out: list[Any] = [None] * len(samples)
    for chunk in loader:
        for index, image, natural, error in chunk:
            out[index] = (torch.from_numpy(image) if image is not None else None, natural, error)
    return out


def _by_value(rows: list[tuple[int, Tensor | None, int, str | None]]) -> list[tuple[int, Any, int, str | None]]:
    """Worker results with images as numpy arrays: pickled by value. Tensors would travel as
    shared memory, one file descriptor each, and a set of 100,000 kept images runs out of them."""
    return [(i, image.numpy() if image is not None else None, natural, error) for i, image, natural, error in rows]


def _cache_key(config: LinesConfig, sources: dict[str, list[labels.Source]], samples: dict[str, list[Sample]]) -> str:
    """A digest of everything the decoded images depend on: the label files' bytes, each
    image's path, size and modification time, and the preprocessing options."""
    digest = hashlib.sha256()
    options = {k: v for k, v in asdict(config).items() if k in ("height", "channels", "min_width", "max_width", "too_wide", "polarity", "ink_height")}
    digest.update(json.dumps(options, sort_keys=True).encode())
    for split in ("train", "val", "test"):
        for source in sources.get(split, []):
            path = Path(source.path)
            digest.update(f"{split}\0{path.resolve()}\0{source}".encode())
            if path.is_file():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        for sample in samples.get(split, []):
            image = sample.entry.image.split("::")[0]
            try:
                stat = os.stat(image)
                digest.update(f"{sample.entry.image}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:  # gone since it was listed: decoding reports it
                digest.update(f"{sample.entry.image}\0missing\n".encode())
    return digest.hexdigest()[:24]


Decoded = dict[str, list[tuple[Tensor | None, int, str | None]]]


def _cache_file(config: LinesConfig, sources: dict[str, list[labels.Source]], samples: dict[str, list[Sample]]) -> Path | None:
    if config.cache == "off":
        return None
    folder = Path(config.cache_dir).expanduser() if config.cache_dir else cache_dir()
    return folder / f"lines-{_cache_key(config, sources, samples)}.pt"


def _decode_all(config: LinesConfig, spec: InputSpec, samples: dict[str, list[Sample]], cached: Path | None) -> tuple[Decoded, bool]:
    """Decoded images per split (image, width before any squeeze, error), from the on-disk
    cache when nothing they depend on changed; and whether they came from it."""
    if cached is not None and cached.is_file():
        try:
            stored = torch.load(cached, weights_only=True)
            return {split: _unpack_rows(stored[split]) for split in samples}, True
        except Exception:  # a damaged or stale cache is decoded again
            pass
    return {split: _decode(found, spec, config) for split, found in samples.items()}, False


def _unpack_rows(stored: dict[str, Any]) -> list[tuple[Tensor | None, int, str | None]]:
    """A split's decoded rows from the cache's packed form (views into one tensor)."""
    good = iter(zip(stored["pixels"].split(stored["widths"].tolist(), dim=-1), stored["naturals"].tolist()))
    errors = dict(zip(stored["failed"].tolist(), stored["errors"]))
    return [(None, 0, errors[i]) if i in errors else (*next(good), None) for i in range(len(stored["widths"]) + len(errors))]


def _save_cache(decoded: Decoded, cached: Path) -> None:
    """Keep decoded images for the next run, packed side by side per split (a few tensors load
    in a blink; a tensor per image would not), written whole and then renamed into place."""
    stored = {}
    for split, rows in decoded.items():
        images = [image for image, _, _ in rows if image is not None]
        stored[split] = {
            "pixels": torch.cat(images, dim=-1) if images else torch.zeros(0, 0, 0, dtype=torch.uint8),
            "widths": torch.tensor([image.shape[-1] for image in images], dtype=torch.long),
            "naturals": torch.tensor([natural for image, natural, _ in rows if image is not None], dtype=torch.long),
            "failed": torch.tensor([i for i, (image, _, _) in enumerate(rows) if image is None], dtype=torch.long),
            "errors": [error or "" for image, _, error in rows if image is None],
        }
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.save(stored, tmp)
        os.replace(tmp, cached)
    except OSError:
        tmp.unlink(missing_ok=True)  # no writable cache: the next run decodes again


def _labelled(config: LinesConfig, report: Report) -> tuple[dict[str, list[Sample]], dict[str, list[labels.Source]], str] | None:
    """Every split's samples with their labels checked against the charset (None when no
    training label could be read)."""
    samples: dict[str, list[Sample]] = {}
    sources: dict[str, list[labels.Source]] = {}
    for split in ("train", "val", "test"):
        if split == "val" and config.val is None:
            continue
        samples[split], sources[split] = _read_split(split, getattr(config, split), config, report)
    if config.val is None:
        held = [_held_out(s.key, config.val_seed, config.val_fraction) for s in samples["train"]]
        samples["val"] = [s for s, h in zip(samples["train"], held) if h]
        samples["train"] = [s for s, h in zip(samples["train"], held) if not h]
        report.notes.append(f"val: {len(samples['val']):,} samples held out of train (val_fraction {config.val_fraction}, seed {config.val_seed})")
    if not samples["train"] and report.errors():
        return None  # no charset can come from labels that could not be read
    if config.dictionary:
        charset = read_dictionary(config.dictionary)
    elif config.charset is not None:
        charset = normalise(config.charset, config.case)
    else:
        charset = build_charset(s.text for s in samples["train"])
    if not charset:
        raise crnnfw.DataError("data.train: no usable training labels, so there is no charset; check the train sources")
    for split, found in samples.items():
        filtered = apply_charset([(s.entry.where, s.text) for s in found], charset, config.unknown)
        if filtered.unknown and config.unknown == "error":
            for _, where, chars in filtered.unknown_at:
                report.add(split, "unknown character", where, f"{chars!r} not in the charset")
        elif filtered.unknown:
            report.notes.append(f"{split}: {filtered.summary()}")
        samples[split] = [Sample(found[i].entry, text, found[i].key) for i, text in filtered.kept]
    return samples, sources, charset


def _in_memory(config: LinesConfig, spec: InputSpec, charset: str, samples: dict[str, list[Sample]], sources: dict[str, list[labels.Source]], report: Report) -> dict[str, crnnfw.PackedSplit] | None:
    """Every image decoded (or read from the cache) and packed; None when errors remain."""
    splits: dict[str, tuple[list[Tensor], list[str], list[str]]] = {}
    cached = _cache_file(config, sources, samples)
    decoded, from_cache = _decode_all(config, spec, samples, cached)
    for split, rows in decoded.items():
        images, texts, places = [], [], []
        for sample, (image, natural, error) in zip(samples[split], rows):
            if not _fits(split, sample, natural if image is not None else None, error, config, report):
                continue
            images.append(image)
            texts.append(sample.text)
            places.append(sample.entry.where)
        splits[split] = (images, texts, places)
    _note_warnings(report)
    if report.errors() and config.bad_samples == "error":
        return None  # nothing is cached for data that cannot train
    if cached is not None and not from_cache:
        _save_cache(decoded, cached)
    for split, (images, _, _) in splits.items():
        if not images:
            raise crnnfw.DataError(f"data.{split}: no usable samples; check its sources (`crnnfw data CONFIG` lists the problems)")
    transform = crnnfw.TextAugment(config.augment) if config.augment.enabled else None
    return {split: crnnfw.PackedSplit.from_images(images, texts, charset, transform=transform if split == "train" else None, places=places) for split, (images, texts, places) in splits.items()}


def _fits(split: str, sample: Sample, natural: int | None, error: str | None, config: LinesConfig, report: Report) -> bool:
    """Whether a sample whose image is ``natural`` px wide at the model's height (None: it
    could not be read) is kept; what is wrong with it goes into the report."""
    where = sample.entry.where
    if natural is None:
        report.add(split, "undecodable image", where, error.split(": ", 1)[-1] if error else "cannot read it")
        return False
    if natural > config.max_width and config.too_wide != "squeeze":
        kind = "too wide" if config.too_wide == "error" else "too wide (dropped)"
        report.add(split, kind, where, f"{natural} px at height {config.height}, over max_width {config.max_width}")
        return False
    if natural < config.min_width:
        report.add(split, "narrower than min_width", where, f"{natural} px, padded to {config.min_width}")
    return True


def _note_warnings(report: Report) -> None:
    """A counted note for each kind of warning (they do not stop a run)."""
    for kind in WARNINGS:
        found = [p for p in report.problems if p.kind == kind]
        if found:
            report.notes.append(f"{len(found)} x {kind}, first at {', '.join(p.where for p in found[:3])}")


class _Sizes(torch.utils.data.Dataset):
    """Each image's width at the model's height, from its header alone (EXIF rotation counted)."""

    def __init__(self, samples: list[Sample], spec: InputSpec) -> None:
        self.samples, self.spec = samples, spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int | None, str | None]:
        entry = self.samples[index].entry
        try:
            with Image.open(io.BytesIO(labels.read_image_bytes(entry))) as image:
                width, height = image.size
                if image.getexif().get(0x0112) in (5, 6, 7, 8):  # turned a quarter: upright it is the other way round
                    width, height = height, width
        except UnidentifiedImageError:
            return None, f"{entry.where}: cannot read it as an image (not a format Pillow reads)"
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, crnnfw.CrnnfwError) as exc:
            return None, f"{entry.where}: cannot read it as an image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        return scaled_width(height, width, self.spec), None


def _measured(split: str, samples: list[Sample], spec: InputSpec, config: LinesConfig, report: Report) -> tuple[list[Sample], Tensor]:
    """The samples a streamed split keeps and their widths as training will see them, read from
    the images' headers in worker processes: so width policies, batching by width and the
    label-fit check work as for a set held in memory."""
    workers = config.workers or os.cpu_count() or 1
    sizes = _Sizes(samples, spec)
    rows = (
        [sizes[i] for i in range(len(samples))]
        if workers == 1 or len(samples) < 256
        else [row for chunk in torch.utils.data.DataLoader(sizes, batch_size=256, num_workers=workers, collate_fn=list) for row in chunk]
    )
    kept, widths = [], []
    for sample, (natural, error) in zip(samples, rows):
        if _fits(split, sample, natural, error, config, report):
            kept.append(sample)
            widths.append(min(max(natural, config.min_width), config.max_width) if config.too_wide == "squeeze" else max(natural, config.min_width))
    return kept, torch.tensor(widths, dtype=torch.long)


def _estimated_bytes(samples: list[Sample], config: LinesConfig) -> int:
    """What the decoded set would take in memory, from the sizes of up to 64 images' headers."""
    rng = random.Random(0)
    probe = rng.sample(samples, min(64, len(samples)))
    widths = []
    for sample in probe:
        try:
            with Image.open(io.BytesIO(labels.read_image_bytes(sample.entry))) as image:
                width, height = image.size
            widths.append(min(config.max_width, max(config.min_width, width * config.height / max(height, 1))))
        except (OSError, crnnfw.CrnnfwError, ValueError):
            continue
    mean = sum(widths) / len(widths) if widths else config.max_width
    return int(len(samples) * config.channels * config.height * mean)


def _memory_budget() -> int:
    """A quarter of this machine's memory: what ``cache: auto`` lets a decoded set take."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def read_lines(config: LinesConfig) -> tuple[crnnfw.DataModule | None, Report]:
    """The dataset and everything reading it found; the DataModule is None when errors remain
    (and ``bad_samples`` is ``error``), so a check can list them all before anything trains."""
    report = Report()
    found = _labelled(config, report)
    if found is None:
        return None, report
    samples, sources, charset = found
    spec = InputSpec(config.channels, config.height, config.min_width, config.max_width, "light-on-dark", config.ink_height, "squeeze" if config.too_wide == "squeeze" else "keep")
    mode = config.cache
    if mode == "auto":
        size = sum(_estimated_bytes(s, config) for s in samples.values())
        mode = "memory" if size <= _memory_budget() else "stream"
        if mode == "stream":
            report.notes.append(f"cache auto -> stream: the decoded set would take about {size / 2**30:.1f} GiB, over a quarter of this machine's memory")
    if mode == "stream":
        transform = crnnfw.TextAugment(config.augment) if config.augment.enabled else None
        splits = {}
        for split, found in samples.items():
            kept, widths = _measured(split, found, spec, config, report)
            if not kept:
                raise crnnfw.DataError(f"data.{split}: no usable samples; check its sources (`crnnfw data CONFIG` lists the problems)")
            splits[split] = StreamSplit(kept, widths, charset, spec, config, transform if split == "train" else None)
        _note_warnings(report)
        if report.errors() and config.bad_samples == "error":
            return None, report
        report.notes.append("streamed: images are decoded as batches need them (their sizes were read up front); an image that cannot be decoded then is left out of its batch and counted")
    else:
        splits = _in_memory(config, spec, charset, samples, sources, report)
        if splits is None:
            return None, report
    if report.errors():
        report.notes.append(f"{len(report.errors())} problem samples skipped (bad_samples: skip)")
    data = crnnfw.DataModule(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classes=tuple(charset),
        channels=config.channels,
        height=config.height,
        min_width=config.min_width,
        max_width=config.max_width,
        polarity="light-on-dark",
        ink_height=config.ink_height,
        too_wide=spec.too_wide,
        notes=report.notes,
    )
    return data, report


class StreamSplit:
    """Samples decoded as batches need them, in DataLoader worker processes: for sets larger
    than memory. Each image's width was read from its header when the data was built
    (``widths``), so batches group images of similar width, and ``widths``, ``targets``,
    ``target_lengths`` and ``places`` let the engine check every label against its width as for
    a set in memory. Under torchrun each process decodes only its own share of every training
    batch (``shards_by_rank``). An image that cannot be decoded when its batch is made is left
    out of it and counted in ``failures`` (see :meth:`epoch_report`)."""

    chunk_batches = 16
    shards_by_rank = True

    def __init__(self, samples: list[Sample], widths: Tensor, charset: str, spec: InputSpec, config: LinesConfig, transform) -> None:
        if not samples:
            raise crnnfw.DataError("the dataset split is empty")
        self.samples, self.widths, self.spec, self.config, self.transform = samples, widths, spec, config, transform
        self.targets, self.target_lengths = encode_labels([s.text for s in samples], charset)
        self.places = [s.entry.where for s in samples]
        self.failures = 0
        self.reported = 0

    def __len__(self) -> int:
        return len(self.samples)

    def epoch_report(self) -> str | None:
        """How many images could not be read since the last report (the trainer logs it)."""
        new, self.reported = self.failures - self.reported, self.failures
        if not new:
            return None
        return f"{new} images could not be decoded and were left out of their batches" if new > 1 else "1 image could not be decoded and was left out of its batch"

    def _groups(self, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> list[Tensor]:
        if not shuffle:
            return list(self.widths.argsort(stable=True).split(batch_size))
        order = torch.randperm(len(self), generator=generator)
        chunk = batch_size * self.chunk_batches
        groups = []
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            groups += list(part[self.widths[part].argsort(stable=True)].split(batch_size))
        return [groups[g] for g in torch.randperm(len(groups), generator=generator).tolist()]

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None):
        groups = self._groups(batch_size, shuffle, generator)
        if shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
            groups = [g[rank * -(-len(g) // world) : (rank + 1) * -(-len(g) // world)] for g in groups]
            groups = [g for g in groups if len(g)]
        loader = torch.utils.data.DataLoader(
            _Decoder(self.samples, self.spec, self.config.polarity), batch_sampler=[g.tolist() for g in groups], collate_fn=self._collate, num_workers=self.config.workers or os.cpu_count() or 1
        )
        for batch, failures in loader:
            self.failures += failures
            if batch is None:
                continue
            batch = replace(batch, images=batch.images.float().div_(255.0))
            yield replace(batch, images=apply_transform(self.transform, batch, generator)) if self.transform is not None else batch

    def _collate(self, rows: list[tuple[int, Tensor | None, int, str | None]]) -> tuple[crnnfw.Batch | None, int]:
        """Decoded samples as one uint8 batch, right-padded; and how many failed to decode."""
        good = [(i, image) for i, image, _, error in rows if image is not None]
        if not good:
            return None, len(rows)
        widths = torch.tensor([image.shape[-1] for _, image in good])
        images = torch.zeros(len(good), self.spec.channels, self.spec.height, int(widths.max()), dtype=torch.uint8)
        for row, (_, image) in enumerate(good):
            images[row, ..., : image.shape[-1]] = image
        index = torch.tensor([i for i, _ in good])
        lengths = self.target_lengths[index]
        return crnnfw.Batch(images, widths, self.targets[index, : int(lengths.max())], lengths), len(rows) - len(good)


def lines_data(config: LinesConfig) -> crnnfw.DataModule:
    """The ``lines`` dataset factory: stops with one line per kind of problem found."""
    data, report = read_lines(config)
    if data is None:
        raise crnnfw.DataProblems(report.errors(), hint="data.bad_samples=skip leaves such samples out")
    return data
