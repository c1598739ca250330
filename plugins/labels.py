"""Read the labelled-image formats OCR users already have into one list of entries.

Formats (``Source.format``; ``auto`` picks one from the path):

* ``tsv``: one ``path<delimiter>label`` per line (PaddleOCR, clovaai ``gt.txt``; MMOCR and
  trdg use a space). The line is split on the first delimiter only, so labels may contain it.
* ``csv``: EasyOCR's ``filename,words`` with a header row, read with the csv module.
* ``json``: docTR's ``{"name.png": "label", ...}``.
* ``jsonl``: MMOCR's one object per line, ``{"filename": ..., "text": ...}`` or the newer
  ``{"img_path": ..., "instances": [{"text": ...}]}``.
* ``folder``: images whose names are their labels (Keras captcha), ``7H3K_0042.png`` -> ``7H3K``.
* ``lmdb``: clovaai's ``create_lmdb_dataset.py`` layout (``num-samples``, ``image-%09d``,
  ``label-%09d``), which ``write_lmdb`` also writes.

Bad user data never raises a traceback: each problem comes back as a ``Problem`` with its
place (``file:line``) so all of them can be shown at once; only failures of the whole source
(no such file, a FIFO, an LMDB without ``num-samples``) raise ``LabelError``.
Images are not opened here, and labels are returned exactly as written.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import crnnfw

KINDS = ("unreadable file", "not UTF-8", "malformed line", "missing delimiter", "path escapes root", "missing image", "empty label", "duplicate", "empty source", "not a label file")
FORMATS = ("auto", "tsv", "folder", "csv", "json", "jsonl", "lmdb")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
MAX_LABEL_BYTES = 512 << 20  # a label file this large is almost surely not one
LMDB_MAP_SIZE = 1 << 30  # write_lmdb's first map size; doubled whenever it fills
LMDB_BATCH = 1000  # records per write transaction
_LMDB_IMAGE = re.compile(r"image-\d{9}")
_CSV_FILE_COLUMNS = ("filename", "image", "path")
_CSV_TEXT_COLUMNS = ("words", "text", "label")


class LabelError(crnnfw.DataError):
    """A whole label source cannot be read (missing, a FIFO, not an LMDB, ...)."""


@dataclass(frozen=True)
class Entry:
    image: str  # absolute image path, or "<lmdb dir>::image-%09d"
    text: str  # the label exactly as written
    where: str  # place for messages: "labels.txt:12", "imgs/7H3K.png", "train.lmdb:label-000000012"


@dataclass(frozen=True)
class Problem:
    kind: str  # one of KINDS
    where: str  # as Entry.where
    detail: str  # one line: what is wrong and what to do


@dataclass
class Source:
    path: str  # label file, folder of images, or LMDB folder
    format: str = "auto"  # one of FORMATS
    root: str | None = None  # folder image paths are relative to; unset: the label file's folder
    delimiter: str = "\t"  # tsv: split on its first occurrence only
    name_separator: str = "_"  # folder: "7H3K_0042.png" -> "7H3K"
    image_key: str = "filename"  # jsonl: key of the image path ("img_path" is the fallback)
    text_key: str = "text"  # jsonl: key of the label


def _stat(path: Path) -> os.stat_result:
    """Stat without opening, so a FIFO is refused instead of blocking the reader."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LabelError(f"{path}: no such label file or folder") from None
    except OSError as exc:
        raise LabelError(f"{path}: cannot read it: {exc.strerror}") from None
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    for test, what in kinds:
        if test(st.st_mode):
            raise LabelError(f"{path}: is {what}, not a label file or folder; give a regular file")
    return st


def detect_format(path: Path) -> str:
    """The format ``auto`` means for this path, from whether it is a folder and its suffix."""
    path = Path(path)
    return _format_of(path, _stat(path))


def _format_of(path: Path, st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "lmdb" if (path / "data.mdb").is_file() else "folder"
    suffix = path.suffix.lower()
    return {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "tsv")


def read_source(source: Source) -> tuple[list[Entry], list[Problem]]:
    """Every entry of one source in file order, and every problem found, each with its place."""
    path = Path(source.path)
    if source.format not in FORMATS:
        raise LabelError(f"{path}: format {source.format!r} is not one of {', '.join(FORMATS)}")
    st = _stat(path)
    fmt = _format_of(path, st) if source.format == "auto" else source.format
    is_dir = stat.S_ISDIR(st.st_mode)
    if fmt in ("folder", "lmdb"):
        if not is_dir:
            raise LabelError(f"{path}: is a file; format: {fmt} needs a folder")
        return _read_folder(path, source) if fmt == "folder" else _read_lmdb(path, os.fspath(source.path))
    if is_dir:
        raise LabelError(f"{path}: is a folder; give the label file inside it, or format: folder")
    if fmt == "tsv" and not source.delimiter:
        raise LabelError(f"{path}: the tsv delimiter must not be empty")
    if st.st_size > MAX_LABEL_BYTES:
        raise LabelError(f"{path}: {st.st_size >> 20} MiB is too large for a label file (limit {MAX_LABEL_BYTES >> 20} MiB)")
    reader = _Reader(path, source)
    text = reader.read_text()
    if text is not None:
        {"tsv": reader.tsv, "csv": reader.csv, "json": reader.json, "jsonl": reader.jsonl}[fmt](text)
    if not reader.entries and not reader.problems:
        reader.problem("empty source", reader.name, "the file holds no labelled images; add lines or give another file")
    return reader.entries, reader.problems


class _Reader:
    """Collects the entries and problems of one label file; one method per text format."""

    def __init__(self, path: Path, source: Source):
        self.path, self.source = path, source
        self.name = os.fspath(source.path)  # the path as given, for messages
        root = Path(source.root) if source.root is not None else path.parent
        if not root.is_dir():
            raise LabelError(f"{root}: the image root is not a folder; fix root")
        self.root = root
        self.real_root = root.resolve()
        self.root_text = str(root)
        self.inside = os.path.join(str(self.real_root), "")  # a real path under the root starts with this
        self.real_folders: dict[str, str] = {}  # folder as written -> its real path, resolved once per folder
        self.entries: list[Entry] = []
        self.problems: list[Problem] = []
        self.seen: dict[str, Entry] = {}

    def problem(self, kind: str, where: str, detail: str) -> None:
        self.problems.append(Problem(kind, where, detail))

    def at(self, line: int) -> str:
        return f"{self.name}:{line}"

    def read_text(self) -> str | None:
        """The file as text without BOM, or None after reporting why it cannot be read."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self.problem("unreadable file", self.name, f"cannot read it: {exc.strerror}; check its permissions")
            return None
        data = data.removeprefix(b"\xef\xbb\xbf")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            head = data[: exc.start]
            line = head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
            self.problem("not UTF-8", self.at(line), f"byte {data[exc.start]:#04x} is not UTF-8; re-save the file as UTF-8")
            return None

    def add(self, where: str, image: str, text: str) -> None:
        """Check the image path and label, then keep the entry unless it has a problem."""
        image = image.strip()
        if not image:
            return self.problem("malformed line", where, "the image path is empty")
        try:
            real = self._real(image)
            is_file = os.path.isfile(real)
        except (OSError, RuntimeError, ValueError) as exc:
            return self.problem("malformed line", where, f"image path {image!r} is not usable: {exc}")
        if not real.startswith(self.inside):
            return self.problem("path escapes root", where, f"{image!r} resolves to {real}, outside {self.real_root}; move the image or set root")
        if not is_file:
            return self.problem("missing image", where, f"{real} is not a file; fix the path or add the image")
        if not text:
            return self.problem("empty label", where, f"{image!r} has an empty label; give its text or drop the line")
        first = self.seen.get(real)
        if first is not None:
            labels = "the same label" if first.text == text else f"a different label ({first.text!r} there, {text!r} here)"
            return self.problem("duplicate", where, f"{image!r} is already listed at {first.where}, with {labels}; keep one")
        entry = Entry(real, text, where)
        self.seen[real] = entry
        self.entries.append(entry)

    def _real(self, image: str) -> str:
        """The image's real path: its folder resolved once (a set of 100,000 images sits in a few
        folders), then the file itself only when it is a symlink. realpath on every path would
        cost a system call per path component per image."""
        folder, name = os.path.split(os.path.join(self.root_text, image))
        real_folder = self.real_folders.get(folder)
        if real_folder is None:
            real_folder = self.real_folders[folder] = os.path.realpath(folder)
        candidate = os.path.join(real_folder, name)
        return os.path.realpath(candidate) if os.path.islink(candidate) else candidate

    def tsv(self, text: str) -> None:
        delimiter = self.source.delimiter
        for number, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            image, found, label = line.partition(delimiter)
            if not found:
                self.problem("missing delimiter", self.at(number), f"no {delimiter!r} between image path and label; set delimiter if the file uses another")
            else:
                self.add(self.at(number), image, label)

    def csv(self, text: str) -> None:
        reader = csv.reader(io.StringIO(_normalise_newlines(text), newline=""), strict=True)
        header: list[str] | None = None
        columns = (0, 0)
        while True:
            number = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                self.problem("malformed line", self.at(number), f"bad CSV: {exc}; check its quotes")
                continue
            if not row or (header is None and not any(cell.strip() for cell in row)):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                found = [_first_of(names, header) for names in (_CSV_FILE_COLUMNS, _CSV_TEXT_COLUMNS)]
                if None in found:
                    self.problem("not a label file", self.at(number), f"header {row!r} lacks a filename and a words column; EasyOCR's header is filename,words")
                    return
                columns = (found[0], found[1])
            elif len(row) != len(header):
                self.problem("malformed line", self.at(number), f"{len(row)} fields where the header has {len(header)}; quote fields that hold commas")
            else:
                self.add(self.at(number), row[columns[0]], row[columns[1]])

    def json(self, text: str) -> None:
        try:
            data = json.loads(text, object_pairs_hook=_Pairs)
        except json.JSONDecodeError as exc:
            return self.problem("malformed line", self.at(exc.lineno), f"invalid JSON: {exc.msg}")
        except RecursionError:
            return self.problem("malformed line", self.name, "JSON nested too deeply; docTR labels are one flat object")
        if not isinstance(data, _Pairs):
            return self.problem("not a label file", self.name, 'expected an object {"name.png": "label", ...} (docTR)')
        for key, value in data:
            where = f"{self.name}:{json.dumps(key, ensure_ascii=False)}"
            if isinstance(value, str):
                self.add(where, key, value)
            else:
                self.problem("malformed line", where, f"the label is {_json_type(value)}, not a string")

    def jsonl(self, text: str) -> None:
        for number, line in enumerate(_lines(text), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self.problem("malformed line", self.at(number), f"invalid JSON: {exc.msg}")
                continue
            except RecursionError:
                self.problem("malformed line", self.at(number), "JSON nested too deeply")
                continue
            found = self._jsonl_record(record)
            if isinstance(found, str):
                self.problem("malformed line", self.at(number), found)
            else:
                self.add(self.at(number), *found)

    def _jsonl_record(self, record: Any) -> tuple[str, str] | str:
        """(image, text) of one MMOCR record, or what is wrong with it."""
        if not isinstance(record, dict):
            return f"a record is a JSON object, not {_json_type(record)}"
        keys = [key for key in (self.source.image_key, "img_path") if key in record]
        image = record[keys[0]] if keys else None
        if not isinstance(image, str):
            return f"no string {self.source.image_key!r} (or 'img_path') key; set image_key"
        key = self.source.text_key
        if key not in record and isinstance(record.get("instances"), list):
            instances = record["instances"]
            if len(instances) != 1:
                return f"{len(instances)} instances; a recognition record holds exactly one"
            record = instances[0] if isinstance(instances[0], dict) else {}
        if not isinstance(record.get(key), str):
            return f"no string {key!r} key; set text_key"
        return image, record[key]


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so repeated keys are reported, not dropped."""


def _json_type(value: Any) -> str:
    names = {_Pairs: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _first_of(names: tuple[str, ...], header: list[str]) -> int | None:
    return next((header.index(name) for name in names if name in header), None)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _lines(text: str) -> list[str]:
    """Lines split on \\n, \\r\\n and \\r only (str.splitlines would also split labels on \\x1c, \\u2028, ...)."""
    return _normalise_newlines(text).split("\n")


def _read_folder(folder: Path, source: Source) -> tuple[list[Entry], list[Problem]]:
    """Images directly in the folder, labelled by their names (a trailing ``_0042`` counter dropped)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        return [], [Problem("unreadable file", str(folder), f"cannot list it: {exc.strerror}; check its permissions")]
    entries, problems = [], []
    sep = source.name_separator
    for name in names:
        path = folder / name
        if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        where = os.path.join(source.path, name)
        label, found, counter = path.stem.rpartition(sep) if sep else ("", "", "")
        if not (found and counter.isascii() and counter.isdigit()):
            label = path.stem
        if label:
            entries.append(Entry(str(path.resolve()), label, where))
        else:
            problems.append(Problem("empty label", where, f"the name {name!r} holds no label; rename the file"))
    if not entries and not problems:
        problems.append(Problem("empty source", os.fspath(source.path), f"no {'/'.join(sorted(IMAGE_SUFFIXES))} files directly inside; give the folder that holds the images"))
    return entries, problems


def _lmdb(path: Path) -> Any:
    """The lmdb module, imported only when an LMDB is used since it is an optional dependency."""
    try:
        import lmdb
    except ImportError:
        raise LabelError(f"{path}: reading LMDB needs the lmdb package: pip install 'crnnfw[lmdb]'") from None
    return lmdb


def _open_lmdb(path: Path) -> Any:
    lmdb = _lmdb(path)
    if not (path / "data.mdb").is_file():
        raise LabelError(f"{path}: not an LMDB folder (no data.mdb)")
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=8)
    except lmdb.Error as exc:
        raise LabelError(f"{path}: cannot open the LMDB: {exc}") from None


def _read_lmdb(path: Path, name: str) -> tuple[list[Entry], list[Problem]]:
    """Entries of a clovaai LMDB; image records are checked for presence without being read."""
    env = _open_lmdb(path)
    entries, problems = [], []
    try:
        with env.begin(buffers=True) as txn:
            raw = txn.get(b"num-samples")
            if raw is None:
                raise LabelError(f"{path}: not a clovaai LMDB (no num-samples key)")
            count = bytes(raw).decode("ascii", "replace").strip()
            if not count.isascii() or not count.isdigit():
                raise LabelError(f"{path}: num-samples is {count!r}, not a non-negative integer")
            if int(count) > env.stat()["entries"]:
                raise LabelError(f"{path}: num-samples says {count} but the LMDB holds only {env.stat()['entries']} records")
            cursor = txn.cursor()
            for i in range(1, int(count) + 1):
                where = f"{name}:label-{i:09d}"
                label = txn.get(f"label-{i:09d}".encode())
                if label is None:
                    problems.append(Problem("malformed line", where, f"no label-{i:09d} record although num-samples is {count}"))
                    continue
                try:
                    text = bytes(label).decode("utf-8")
                except UnicodeDecodeError:
                    problems.append(Problem("not UTF-8", where, "the label is not UTF-8; rebuild the LMDB with UTF-8 labels"))
                    continue
                if not cursor.set_key(f"image-{i:09d}".encode()):
                    problems.append(Problem("missing image", where, f"no image-{i:09d} record; rebuild the LMDB"))
                elif not text:
                    problems.append(Problem("empty label", where, "the label is empty; rebuild the LMDB without it"))
                else:
                    entries.append(Entry(f"{os.path.abspath(path)}::image-{i:09d}", text, where))
    finally:
        env.close()
    if not entries and not problems:
        problems.append(Problem("empty source", name, "num-samples is 0; the LMDB holds no samples"))
    return entries, problems


_ENVS: dict[tuple[int, str], Any] = {}


def read_image_bytes(entry: Entry) -> bytes:
    """The encoded image of an entry: the file's bytes or its LMDB record (envs cached per process)."""
    lmdb_dir, sep, key = entry.image.rpartition("::")
    if not (sep and _LMDB_IMAGE.fullmatch(key)):
        try:
            return Path(entry.image).read_bytes()
        except OSError as exc:
            raise LabelError(f"{entry.where}: cannot read {entry.image}: {exc.strerror}") from None
    lmdb = _lmdb(Path(lmdb_dir))
    cache_key = (os.getpid(), lmdb_dir)
    if cache_key not in _ENVS:
        _ENVS[cache_key] = _open_lmdb(Path(lmdb_dir))
    try:
        with _ENVS[cache_key].begin() as txn:
            data = txn.get(key.encode())
    except lmdb.Error as exc:
        raise LabelError(f"{entry.where}: cannot read {key} from {lmdb_dir}: {exc}") from None
    if data is None:
        raise LabelError(f"{entry.where}: {lmdb_dir} has no {key} record; rebuild the LMDB")
    return data


def write_lmdb(entries: Iterable[tuple[bytes, str]], out_dir: Path) -> int:
    """Write (image bytes, label) pairs as a clovaai LMDB; built aside and renamed, so never half-written."""
    out_dir = Path(out_dir)
    lmdb = _lmdb(out_dir)
    if out_dir.exists():
        raise LabelError(f"{out_dir}: already exists; remove it or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        env = lmdb.open(str(tmp), map_size=LMDB_MAP_SIZE, meminit=False)
        try:
            count = 0
            for batch in _batches(entries):
                records = []
                for image, label in batch:
                    count += 1
                    records += [(f"image-{count:09d}".encode(), bytes(image)), (f"label-{count:09d}".encode(), label.encode("utf-8"))]
                _put(env, records)
            _put(env, [(b"num-samples", str(count).encode("ascii"))])
        finally:
            env.close()
        if out_dir.exists():
            raise LabelError(f"{out_dir}: appeared while writing; remove it or choose another folder")
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def _batches(items: Iterable[tuple[bytes, str]]) -> Iterator[list[tuple[bytes, str]]]:
    items = iter(items)
    while batch := list(itertools.islice(items, LMDB_BATCH)):
        yield batch


def _put(env: Any, records: list[tuple[bytes, bytes]]) -> None:
    """Write the records in one transaction, doubling the map size each time it is full."""
    import lmdb

    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in records:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)
