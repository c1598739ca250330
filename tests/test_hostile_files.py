"""Hostile files: small images and checkpoints made to take gigabytes, and paths that are not files.

Each case goes through the real CLI. A hostile file gets one ``crnnfw: error:`` line naming it
and what it is, the other files are still predicted (exit 1), and where memory is the point it
is measured in a subprocess (its peak RSS), so a regression fails here instead of swapping.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from crnnfw import Decoded, checkpoint, predict
from crnnfw.images import read_image
from crnnfw.trained import load_trained

from .conftest import ROOT

CTC_CONFIG = ROOT / "configs" / "multidigit_ctc.yaml"
TINY = ["data.line_height_min=0.6", "data.line_height_max=0.6", "data.train_size=64", "data.val_size=64", "data.test_size=64", "trainer.epochs=1", "trainer.precision=32-true"]
#: Runs the CLI and reports its peak RSS (KiB) and the seconds main() took, after importing.
#: The peak is the process's own VmHWM: ru_maxrss would count the RSS of pytest, which it
#: keeps across fork and exec.
PROBE = (
    "import re, sys, time\nfrom pathlib import Path\nfrom crnnfw.cli import main\nstart = time.monotonic()\n"
    "code = main(sys.argv[1:])\npeak = re.search(r'VmHWM:\\s*(\\d+) kB', Path('/proc/self/status').read_text()).group(1)\n"
    "print(f'PROBE {peak} {time.monotonic() - start:.1f}', file=sys.stderr)\nsys.exit(code)\n"
)
GiB = 2**30
measured = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained multi-digit CTC model (variable width, ink_height, too_wide: keep)."""
    from crnnfw.cli import main

    out = tmp_path_factory.mktemp("hostile")
    assert main(["run", str(CTC_CONFIG), *TINY, f"output_dir={out}", "name=ctc"]) == 0
    (found,) = (out / "ctc").iterdir()
    return found


def _png(path: Path, width: int, height: int, value: int = 255) -> Path:
    """A one-colour 8-bit grey PNG written row by row: a 20000 x 20000 file costs no memory."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, deflate = b"\0" + bytes([value]) * width, zlib.compressobj(1)
    data = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _good(path: Path, width: int = 80) -> Path:
    """A white digit-like bar on black, the model's polarity."""
    image = Image.new("L", (width, 32), 0)
    image.paste(255, (8, 6, width - 8, 26))
    image.save(path)
    return path


def _probe(*args: object) -> tuple[subprocess.CompletedProcess, float, float]:
    """The CLI in a fresh process: its result, peak RSS in GiB and seconds."""
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=300)
    probe = [line for line in done.stderr.splitlines() if line.startswith("PROBE ")]
    assert probe, done.stderr
    _, rss_kib, seconds = probe[-1].split()
    return done, int(rss_kib) / 2**20, float(seconds)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("crnnfw: error:")]


@measured
def test_oversize_images_are_refused_from_their_headers(run_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    good = [_good(folder / "a_good.png"), _good(folder / "z_good.png", 120)]
    wide = _png(folder / "m_wide.png", 100_000, 1)  # 178 bytes; 1.92 million px wide at the model's height
    big = _png(folder / "n_big.png", 13_000, 13_000)  # Pillow warns (over MAX_IMAGE_PIXELS): our limit decides
    bomb = _png(folder / "o_bomb.png", 20_000, 20_000)  # Pillow's DecompressionBombError
    assert wide.stat().st_size < 1000 and big.stat().st_size < 2**20
    done, rss, seconds = _probe("predict", run_dir, folder, "--json")
    assert done.returncode == 1, done.stderr
    assert _errors(done.stderr) == [
        f"crnnfw: error: {wide}: refused, 1,920,000 px wide at the model's height of 32 px, more than the limit of 4,096; crop or split the image (crnnfw predict --max-width N raises the limit)",
        f"crnnfw: error: {big}: refused, too many pixels (13000 x 13000 = 169,000,000, more than the limit of 50,000,000); give a smaller image (crnnfw predict --max-pixels N raises the limit)",
        f"crnnfw: error: {bomb}: refused, too many pixels (400,000,000, more than the limit of 50,000,000); give a smaller image (crnnfw predict --max-pixels N raises the limit)",
    ]
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["file"] for row in rows] == [str(p) for p in (good[0], wide, big, bomb, good[1])]
    assert all(isinstance(rows[i]["text"], str) and 0 <= rows[i]["confidence"] <= 1 for i in (0, 4))
    assert rss < 1.0, f"peak RSS {rss:.2f} GiB"  # the import takes about 0.5; unchecked, the wide file asks for 8 GB, the big one 8.6
    assert seconds < 10, seconds  # unchecked: 32 s for the big one alone


def test_pillow_bomb_limits_never_warn_and_stop_one_file(run_dir, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # Pillow warns above 4000 pixels, refuses above 8000
    folder = tmp_path / "images"
    folder.mkdir()
    _good(folder / "a_small.png", 60)
    _png(folder / "b_warned.png", 100, 50, 0)
    bomb = _png(folder / "c_bomb.png", 100, 100, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("predict", run_dir, folder, "--json")
        limited = cli("predict", run_dir, folder / "b_warned.png", "--max-pixels", "3000")
    assert [w.category.__name__ for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []
    assert result.code == 1
    assert _errors(result.err) == [
        f"crnnfw: error: {bomb}: refused, too many pixels for Pillow (Image size (10000 pixels) exceeds limit of 8000 pixels, could be decompression bomb DOS attack.); give a smaller image"
    ]
    rows = {Path(row["file"]).name: row for row in map(json.loads, result.out.splitlines())}
    assert "text" in rows["a_small.png"] and "text" in rows["b_warned.png"] and "error" in rows["c_bomb.png"]
    assert limited.code == 1 and _errors(limited.err) == [
        f"crnnfw: error: {folder / 'b_warned.png'}: refused, too many pixels (100 x 50 = 5,000, more than the limit of 3,000); give a smaller image (crnnfw predict --max-pixels N raises the limit)"
    ]


def test_max_width_option_and_default(run_dir, tmp_path, cli):
    wide = _png(tmp_path / "wide.png", 400, 32, 0)  # blank: 240 px wide at the model's height
    assert cli("predict", run_dir, wide).code == 0  # default limit: 4096 (the model's max_width is 339)
    refused = cli("predict", run_dir, wide, "--max-width", "200")
    assert refused.code == 1 and _errors(refused.err) == [
        f"crnnfw: error: {wide}: refused, 240 px wide at the model's height of 32 px, more than the limit of 200; crop or split the image (crnnfw predict --max-width N raises the limit)"
    ]
    assert cli("predict", run_dir, wide, "--max-width", "244").code == 0
    with pytest.raises(SystemExit):
        cli("predict", run_dir, wide, "--max-pixels", "0")


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs named pipes and /dev/zero")
def test_paths_that_are_not_regular_files(run_dir, tmp_path, cli):
    good = _good(tmp_path / "good.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    broken = tmp_path / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    _good(folder / "fine.png")
    os.mkfifo(folder / "queue.png")
    (folder / "sub.png").mkdir()  # a folder with an image's name: not read, as any subfolder

    def unblock() -> None:  # had anything opened the pipe for reading, it would get EOF instead of hanging
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    guard = threading.Timer(30, unblock)
    guard.start()
    try:
        result = cli("predict", run_dir, fifo, "/dev/zero", tmp_path / "loop_a", broken, good, folder, "--json")
    finally:
        guard.cancel()
    assert result.code == 1
    not_a_file = "not an image file; give image files or folders"
    assert _errors(result.err) == [
        f"crnnfw: error: {fifo}: a named pipe (FIFO), {not_a_file}",
        f"crnnfw: error: /dev/zero: a character device, {not_a_file}",
        f"crnnfw: error: {tmp_path / 'loop_a'}: a symbolic link loop (its links point at each other and never reach a file); fix or remove the link",
        f"crnnfw: error: {broken}: a broken symbolic link (to {tmp_path / 'gone.png'}, which does not exist); fix or remove the link",
        f"crnnfw: error: {folder / 'queue.png'}: a named pipe (FIFO), {not_a_file}",
    ]
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [row["file"] for row in rows] == [str(p) for p in (fifo, "/dev/zero", tmp_path / "loop_a", broken, good, folder / "fine.png", folder / "queue.png")]
    assert "text" in rows[4] and "text" in rows[5]


def test_folders_are_read_a_window_at_a_time_in_order(run_dir, tmp_path, cli, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    files = [_png(folder / f"{i:02d}.png", 40 + 37 * (i % 5) * (i % 3), 32, 0) for i in range(11)]
    spec = load_trained(run_dir).spec
    expected = {str(path): str(read_image(path, spec).shape[-1]) for path in files}
    reads: list[int] = []
    seen_at_batch: list[int] = []
    real_read = predict.read_image

    def counting_read(*args, **kwargs):
        reads.append(1)
        return real_read(*args, **kwargs)

    def fake_recognise(trained, images, beam=1):  # the text is the image's width: shows which result went where
        seen_at_batch.append(len(reads))
        return Decoded([str(image.shape[-1]) for image in images], torch.ones(len(images)))

    monkeypatch.setattr(predict, "read_image", counting_read)
    monkeypatch.setattr(predict, "recognise", fake_recognise)
    result = cli("predict", run_dir, folder, "--json", "--batch-size", "2")
    assert result.code == 0, result.err
    rows = [json.loads(line) for line in result.out.splitlines()]
    assert [(row["file"], row["text"]) for row in rows] == [(str(p), expected[str(p)]) for p in files]
    assert predict.WINDOW_BATCHES == 4  # a window of 8 files at --batch-size 2: 4 batches of the first 8, then 2 of the other 3
    assert seen_at_batch == [8, 8, 8, 8, 11, 11]


def _hostile_checkpoint(good: Path, path: Path, inflated: int) -> str:
    """``good``'s records, deflated, its largest weights record swapped for ``inflated`` zero
    bytes (about ``inflated / 1000`` on disk): loaded unchecked, it takes all of them in memory."""
    with zipfile.ZipFile(good) as source:
        records = source.infolist()
        largest = max(records, key=lambda r: r.file_size).filename
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as target:
            for record in records:
                if record.filename != largest:
                    target.writestr(record.filename, source.read(record))
                    continue
                with target.open(largest, "w", force_zip64=True) as stream:
                    zeros = bytes(16 * 2**20)
                    for _ in range(inflated // len(zeros)):
                        stream.write(zeros)
    return largest


@measured
def test_compressed_checkpoint_record_is_refused_before_it_inflates(run_dir, tmp_path):
    hostile = tmp_path / "hostile.ckpt"
    record = _hostile_checkpoint(run_dir / "checkpoints" / "last.ckpt", hostile, GiB // 2)
    assert hostile.stat().st_size < 16 * 2**20
    done, rss, seconds = _probe("predict", hostile, _good(tmp_path / "good.png"))
    assert done.returncode == 2, done.stderr
    ratio = zipfile.ZipFile(hostile).getinfo(record)
    assert _errors(done.stderr) == [
        f"crnnfw: error: {hostile}: refused: its record {record} would inflate {ratio.file_size / ratio.compress_size:,.0f}-fold "
        f"to {GiB // 2:,} bytes (a zip bomb; torch.save never compresses); give a .ckpt file a crnnfw run wrote"
    ]
    assert "Traceback" not in done.stderr
    assert rss < 0.8, f"peak RSS {rss:.2f} GiB"  # the import alone takes about 0.5; unchecked, torch.load inflates 0.5 more
    assert seconds < 5, seconds  # unchecked: 8 s


def test_checkpoint_over_the_size_limit_or_with_a_damaged_directory(run_dir, tmp_path, cli, monkeypatch):
    good = run_dir / "checkpoints" / "last.ckpt"
    data = good.read_bytes()
    damaged = tmp_path / "damaged.ckpt"
    start = zipfile.ZipFile(good).start_dir  # the first entry of the zip's directory
    assert data[start : start + 4] == b"PK\x01\x02"
    damaged.write_bytes(data[:start] + b"XX" + data[start + 2 :])
    result = cli("eval", damaged)
    assert result.code == 2 and _errors(result.err) == [
        f"crnnfw: error: {damaged}: not a readable checkpoint (truncated or damaged: its zip directory is unreadable, Bad magic number for central directory); give a .ckpt file a crnnfw run wrote"
    ]
    legacy = tmp_path / "legacy.ckpt"
    torch.save(checkpoint.load(good), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80" and checkpoint.load(legacy)["format_version"] == checkpoint.FORMAT_VERSION
    monkeypatch.setattr(checkpoint, "MAX_BYTES", 2**20)
    total = sum(r.file_size for r in zipfile.ZipFile(good).infolist())
    result = cli("predict", good, _good(tmp_path / "good.png"))
    assert result.code == 2 and _errors(result.err) == [
        f"crnnfw: error: {good}: refused: its records would take {total:,} bytes in memory, more than the 1,048,576 a checkpoint may (crnnfw.checkpoint.MAX_BYTES)"
    ]
