"""crnnfw_plugins.labels on real label files, image files and LMDBs written in tmp_path."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from PIL import Image

import crnnfw
from crnnfw_plugins.labels import (
    KINDS,
    Entry,
    LabelError,
    Problem,
    Source,
    detect_format,
    read_image_bytes,
    read_source,
    write_lmdb,
)

#: Non-ASCII labels, one with a comma and spaces, one holding the tsv delimiter.
SAMPLES = [("a.png", "Überprüfung"), ("b.png", "Привет, 数字 x"), ("c.png", "in\tside")]


def png(path: Path, shade: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (20, 10), shade).save(path)
    return path


def images(folder: Path) -> dict[str, Path]:
    return {name: png(folder / name, shade) for shade, (name, _) in enumerate(SAMPLES)}


def read(path: Path, **options) -> tuple[list[Entry], list[Problem]]:
    return read_source(Source(str(path), **options))


def only_problem(path: Path, **options) -> Problem:
    entries, problems = read(path, **options)
    assert len(problems) == 1, problems
    return problems[0]


def write_samples(fmt: str, folder: Path, files: dict[str, Path], samples: list[tuple[str, str]] = SAMPLES) -> Path:
    """``samples`` ((image name, label) pairs) as a label source of format ``fmt`` in ``folder``."""
    if fmt == "tsv":
        path = folder / "labels.txt"
        path.write_text("".join(f"{name}\t{text}\n" for name, text in samples), encoding="utf-8")
    elif fmt == "csv":
        path = folder / "labels.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("filename", "words"), *samples])
    elif fmt == "json":
        path = folder / "labels.json"
        path.write_text(json.dumps(dict(samples), ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path = folder / "labels.jsonl"
        lines = [json.dumps({"filename": name, "text": text}, ensure_ascii=False) for name, text in samples]
        path.write_text("\n".join(lines), encoding="utf-8")
    else:
        path = folder / "train.lmdb"
        write_lmdb(((files[name].read_bytes(), text) for name, text in samples), path)
    return path


@pytest.mark.parametrize("fmt", ["tsv", "csv", "json", "jsonl", "lmdb"])
def test_every_format_reads_the_same_samples(tmp_path, fmt):
    if fmt == "lmdb":
        pytest.importorskip("lmdb")
    files = images(tmp_path)
    path = write_samples(fmt, tmp_path, files)
    assert detect_format(path) == fmt
    entries, problems = read(path)
    assert problems == []
    assert [e.text for e in entries] == [text for _, text in SAMPLES]
    assert [read_image_bytes(e) for e in entries] == [files[name].read_bytes() for name, _ in SAMPLES]
    if fmt != "lmdb":
        assert [e.image for e in entries] == [str(files[name].resolve()) for name, _ in SAMPLES]


def test_bom_crlf_cr_and_blank_lines(tmp_path):
    images(tmp_path)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes("\ufeffa.png\tone\r\n\r\n   \r\n b.png \ttwo \r\n".encode())
    entries, problems = read(crlf)
    assert problems == []
    assert [(e.text, e.where) for e in entries] == [("one", f"{crlf}:1"), ("two ", f"{crlf}:4")]
    cr = tmp_path / "cr.txt"
    cr.write_bytes(b"a.png\tone\r\rb.png\ttwo\r")
    entries, _ = read(cr)
    assert [(e.text, e.where) for e in entries] == [("one", f"{cr}:1"), ("two", f"{cr}:3")]


def test_space_delimiter_keeps_spaces_in_the_label(tmp_path):
    images(tmp_path)
    path = tmp_path / "gt.txt"
    path.write_text("a.png Hello  big world \n", encoding="utf-8")
    entries, problems = read(path, delimiter=" ")
    assert problems == [] and [e.text for e in entries] == ["Hello  big world "]


def test_csv_labels_stay_text_and_other_header_names(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        png(tmp_path / name)
    path = tmp_path / "labels.csv"
    path.write_text('Image,Label\na.png,NA\nb.png,null\nc.png,0012\nd.png,"1e5"\n', encoding="utf-8")
    entries, problems = read(path)
    assert problems == [] and [e.text for e in entries] == ["NA", "null", "0012", "1e5"]


def test_folder_labels_drop_only_a_numeric_suffix(tmp_path):
    for name in ("7H3K_0042.png", "a_b.png", "x.JPG", "1_2_3.webp", ".hidden.png", "_0001.png"):
        png(tmp_path / "imgs" / name)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert detect_format(tmp_path / "imgs") == "folder"
    entries, problems = read(tmp_path / "imgs")
    assert [(e.text, Path(e.where).name) for e in entries] == [("1_2", "1_2_3.webp"), ("7H3K", "7H3K_0042.png"), ("a_b", "a_b.png"), ("x", "x.JPG")]
    assert [(p.kind, p.where) for p in problems] == [("empty label", os.path.join(str(tmp_path / "imgs"), "_0001.png"))]
    entries, _ = read(tmp_path / "imgs", name_separator="-")
    assert "7H3K_0042" in [e.text for e in entries]


def test_folder_without_images_is_an_empty_source(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    assert only_problem(tmp_path, format="folder").kind == "empty source"


@pytest.mark.parametrize(
    "content, kind, line",
    [
        ("a.png\tok\nb.png has no tab\n", "missing delimiter", 2),
        ("a.png\tok\n\tlabel only\n", "malformed line", 2),
        ("a.png\tok\n\nb.png\t\n", "empty label", 3),
        ("nope.png\tx\n", "missing image", 1),
        ("a.png\tx\n./a.png\tx\n", "duplicate", 2),
        ("a.png\tok\n../outside.png\tx\n", "path escapes root", 2),
    ],
)
def test_each_tsv_problem_has_its_place(tmp_path, content, kind, line):
    images(tmp_path / "data")
    png(tmp_path / "outside.png")
    path = tmp_path / "data" / "labels.txt"
    path.write_text(content, encoding="utf-8")
    entries, problems = read(path)
    assert [(p.kind, p.where) for p in problems] == [(kind, f"{path}:{line}")]
    assert all("\n" not in p.detail for p in problems)
    assert [e.where for e in entries] == [f"{path}:1"] * (line > 1)


def test_problem_details_name_what_to_fix(tmp_path):
    images(tmp_path)
    path = tmp_path / "labels.txt"
    path.write_text("a.png\tone\na.png\ttwo\nno-tab\n", encoding="utf-8")
    duplicate, missing = read(path)[1]
    assert f"{path}:1" in duplicate.detail and "different label" in duplicate.detail
    assert repr("\t") in missing.detail
    assert {duplicate.kind, missing.kind} <= set(KINDS)


def test_symlink_out_of_root_escapes_but_absolute_inside_is_fine(tmp_path):
    files = images(tmp_path / "data")
    (tmp_path / "data" / "link.png").symlink_to(png(tmp_path / "secret.png"))
    path = tmp_path / "data" / "labels.txt"
    path.write_text(f"link.png\tx\n{files['a.png']}\ty\n", encoding="utf-8")
    entries, problems = read(path)
    assert [(p.kind, p.where) for p in problems] == [("path escapes root", f"{path}:1")]
    assert [e.image for e in entries] == [str(files["a.png"].resolve())]


def test_root_option_resolves_images_elsewhere(tmp_path):
    images(tmp_path / "imgs")
    path = tmp_path / "labels" / "train.txt"
    path.parent.mkdir()
    path.write_text("a.png\tx\n", encoding="utf-8")
    assert only_problem(path).kind == "missing image"
    entries, problems = read(path, root=str(tmp_path / "imgs"))
    assert problems == [] and entries[0].image == str((tmp_path / "imgs" / "a.png").resolve())


def test_not_utf8_names_the_first_bad_line(tmp_path):
    images(tmp_path)
    path = tmp_path / "labels.txt"
    path.write_bytes(b"a.png\tok\r\nb.png\t\xff\xfe\n")
    entries, problems = read(path)
    assert entries == [] and [(p.kind, p.where) for p in problems] == [("not UTF-8", f"{path}:2")]
    assert "UTF-8" in problems[0].detail


def test_empty_label_file_is_an_empty_source(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("\n  \n")
    problem = only_problem(path)
    assert (problem.kind, problem.where) == ("empty source", str(path))


def test_unreadable_label_file(tmp_path):
    if os.geteuid() != 0:
        path = tmp_path / "labels.txt"
        path.write_text("a.png\tx\n")
        path.chmod(0)
    elif Path("/proc/self/mem").exists():
        path = Path("/proc/self/mem")  # root reads any file; this regular file fails to read (EIO)
    else:
        pytest.skip("no unreadable regular file available as root")
    problem = only_problem(path, format="tsv")
    assert (problem.kind, problem.where) == ("unreadable file", str(path))


def test_csv_problems(tmp_path):
    images(tmp_path)
    path = tmp_path / "labels.csv"
    path.write_text('filename,words\na.png,x\nb.png,x,extra\n"c.png,"unclosed\n', encoding="utf-8")
    entries, problems = read(path)
    assert [e.where for e in entries] == [f"{path}:2"]
    assert [(p.kind, p.where) for p in problems] == [("malformed line", f"{path}:3"), ("malformed line", f"{path}:4")]
    path.write_text("name,value\na.png,x\n", encoding="utf-8")
    problem = only_problem(path)
    assert (problem.kind, problem.where) == ("not a label file", f"{path}:1") and "'name'" in problem.detail


def test_json_problems(tmp_path):
    images(tmp_path)
    path = tmp_path / "labels.json"
    path.write_text('{"a.png": "x", "b.png": 12, "c.png": {"labels": ["y"]}}', encoding="utf-8")
    entries, problems = read(path)
    assert [e.where for e in entries] == [f'{path}:"a.png"']
    assert [(p.kind, p.where) for p in problems] == [("malformed line", f'{path}:"b.png"'), ("malformed line", f'{path}:"c.png"')]
    path.write_text('{"a.png": "x",\n "b.png": "y",\n}', encoding="utf-8")
    problem = only_problem(path)
    assert (problem.kind, problem.where) == ("malformed line", f"{path}:3")
    path.write_text('{"a.png": "x", "a.png": "y"}', encoding="utf-8")
    assert only_problem(path).kind == "duplicate"
    path.write_text('["a.png", "x"]', encoding="utf-8")
    assert only_problem(path).kind == "not a label file"
    path.write_text("[" * 100_000, encoding="utf-8")
    assert only_problem(path).kind == "malformed line"


def test_jsonl_mmocr_records_and_problems(tmp_path):
    images(tmp_path)
    path = tmp_path / "labels.jsonl"
    records = [
        '{"img_path": "a.png", "instances": [{"text": "new style"}]}',
        "",
        '{"filename": "b.png", "text": "old style"}',
        '{"filename": "c.png", "text": ',
        '["c.png", "x"]',
        '{"text": "x"}',
        '{"img_path": "c.png", "instances": [{"text": "y"}, {"text": "z"}]}',
    ]
    path.write_text("\n".join(records), encoding="utf-8")
    entries, problems = read(path)
    assert [(e.text, e.where) for e in entries] == [("new style", f"{path}:1"), ("old style", f"{path}:3")]
    assert [(p.kind, p.where) for p in problems] == [("malformed line", f"{path}:{n}") for n in (4, 5, 6, 7)]
    path.write_text('{"file": "c.png", "label": "keys"}\n', encoding="utf-8")
    entries, problems = read(path, image_key="file", text_key="label")
    assert problems == [] and [e.text for e in entries] == ["keys"]


def test_whole_source_failures_raise_label_error(tmp_path):
    assert issubclass(LabelError, crnnfw.DataError)
    with pytest.raises(LabelError, match="no such label file or folder"):
        read(tmp_path / "missing.txt")
    with pytest.raises(LabelError, match="is a folder; give the label file inside it"):
        read(tmp_path, format="tsv")
    with pytest.raises(LabelError, match="not one of"):
        read(tmp_path, format="xml")
    big = tmp_path / "big.txt"
    with big.open("wb") as f:
        f.truncate(513 << 20)  # sparse: costs no disk
    with pytest.raises(LabelError, match="too large"):
        read(big)


def test_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    with pytest.raises(LabelError, match="FIFO"):
        detect_format(fifo)
    with pytest.raises(LabelError, match="FIFO"):
        read(fifo, format="tsv")


def test_read_image_bytes_of_a_vanished_file(tmp_path):
    images(tmp_path)
    (tmp_path / "labels.txt").write_text("a.png\tx\n", encoding="utf-8")
    (entry,), _ = read(tmp_path / "labels.txt")
    (tmp_path / "a.png").unlink()
    with pytest.raises(LabelError, match=f"{entry.where}: cannot read"):
        read_image_bytes(entry)


def test_lmdb_round_trip_and_places(tmp_path):
    pytest.importorskip("lmdb")
    out = tmp_path / "train.lmdb"
    records = [(f"image {i}".encode(), f"label {i}") for i in range(1, 1201)]  # more than one write batch
    assert write_lmdb(iter(records), out) == 1200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.lmdb"]
    entries, problems = read(out)
    assert problems == [] and len(entries) == 1200
    assert (entries[11].where, entries[11].image) == (f"{out}:label-000000012", f"{out}::image-000000012")
    assert [read_image_bytes(entries[i]) for i in (0, 1199)] == [records[0][0], records[1199][0]]
    with pytest.raises(LabelError, match="already exists"):
        write_lmdb(records, out)


def test_lmdb_problems(tmp_path):
    lmdb = pytest.importorskip("lmdb")

    def raw(name: str, **records: bytes) -> Path:
        path = tmp_path / name
        with lmdb.open(str(path), map_size=1 << 20) as env, env.begin(write=True) as txn:
            for key, value in records.items():
                txn.put(key.replace("_", "-").encode(), value)
        return path

    with pytest.raises(LabelError, match=r"not a clovaai LMDB \(no num-samples key\)"):
        read(raw("none.lmdb", image_000000001=b"x"))
    with pytest.raises(LabelError, match="not a non-negative integer"):
        read(raw("neg.lmdb", num_samples=b"-1"))
    path = raw("bad.lmdb", num_samples=b"3", image_000000001=b"x", label_000000001=b"\xff", image_000000002=b"y", image_000000003=b"z", label_000000003=b"ok")
    entries, problems = read(path)
    assert [e.text for e in entries] == ["ok"]
    assert [(p.kind, p.where) for p in problems] == [("not UTF-8", f"{path}:label-000000001"), ("malformed line", f"{path}:label-000000002")]
    with pytest.raises(LabelError, match="no image-000000009 record"):
        read_image_bytes(Entry(f"{path}::image-000000009", "x", "here"))


def test_write_lmdb_grows_a_full_map(tmp_path, monkeypatch):
    pytest.importorskip("lmdb")
    from crnnfw_plugins import labels

    monkeypatch.setattr(labels, "LMDB_MAP_SIZE", 64 << 10)  # so 2 MiB of images fill it several times
    records = [(bytes(4096), f"{i}") for i in range(500)]
    assert write_lmdb(records, tmp_path / "big.lmdb") == 500
    entries, problems = read(tmp_path / "big.lmdb")
    assert problems == [] and len(entries) == 500 and read_image_bytes(entries[-1]) == bytes(4096)


def test_interrupted_write_lmdb_leaves_nothing(tmp_path):
    pytest.importorskip("lmdb")

    def records():
        yield b"image", "label"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_lmdb(records(), tmp_path / "train.lmdb")
    assert list(tmp_path.iterdir()) == []
