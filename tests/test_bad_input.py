"""The bad-input campaign: malformed configs, broken checkpoints and broken images.

Every case goes through the real CLI and must end with exactly one ``crnnfw: error:`` line on
stderr, a non-zero exit, no traceback, and no file written to or changed in existing runs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crnnfw import checkpoint

from .conftest import FP32, MNIST_CONFIG, ROOT

CTC_CONFIG = ROOT / "configs" / "multidigit_ctc.yaml"
LINES_CONFIG = ROOT / "configs" / "lines_ctc.yaml"
QUICK = [FP32, "data.train_limit=256", "data.val_size=128", "data.test_limit=128", "trainer.epochs=1"]
TINY_CTC = ["data.train_size=64", "data.val_size=64", "data.test_size=64"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An output folder holding one finished run, plus broken files made from its checkpoint."""
    from crnnfw.cli import main

    root = tmp_path_factory.mktemp("bad")
    assert main(["run", str(MNIST_CONFIG), *QUICK, f"output_dir={root / 'runs'}", "name=good"]) == 0
    (run_dir,) = (root / "runs" / "good").iterdir()
    good = run_dir / "checkpoints" / "last.ckpt"
    files = root / "files"
    files.mkdir()
    state = checkpoint.load(good)

    def save(name: str, value: object) -> None:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        (files / name).write_bytes(buffer.getvalue())

    (files / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (files / "text.ckpt").write_text("model: not really\n")
    (files / "empty.ckpt").write_bytes(b"")
    save("pickled.ckpt", {"format_version": 2, "payload": pickle.PicklingError("code would run here")})
    save("old_format.ckpt", {**state, "format_version": 1})
    save("future.ckpt", {**state, "crnnfw_version": "9.0.0"})
    save("plain_state_dict.ckpt", state["model"])
    save("no_input.ckpt", {k: v for k, v in state.items() if k != "input"})
    other = {**state, "config": {**state["config"], "model": {**state["config"]["model"], "encoder": {**state["config"]["model"]["encoder"], "hidden_size": 64}}}}
    save("other_model.ckpt", other)
    missing_plugin = {
        **state,
        "config": {**state["config"], "model": {**state["config"]["model"], "backbone": {"name": "vgg_from_elsewhere"}}},
        "components": {**state["components"], "backbone": {"name": "vgg_from_elsewhere", "plugin": "vgg", "distribution": "crnnfw-vgg", "version": "1.2.0"}},
    }
    save("missing_plugin.ckpt", missing_plugin)
    (files / "bad.yaml").write_text("trainer: {epochs: 3\n")
    (files / "list.yaml").write_text("- a\n- b\n")
    (files / "typo.yaml").write_text(yaml.safe_dump({"data": {"name": "mnist"}, "trainer": {"epoch": 2}}))
    (files / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken")
    (files / "empty.png").write_bytes(b"")
    (files / "notes.jpg").write_text("this is a text file with an image's name\n")
    (files / "no_images").mkdir()
    (files / "no_images" / "readme.txt").write_text("nothing to see\n")
    _own_data(files / "lines")
    _hostile_configs(files, run_dir)
    return root, run_dir, files


def _hostile_configs(files: Path, run_dir: Path) -> None:
    """Config paths that are not config files, configs too big or bombs, and broken run copies."""
    import os
    import shutil

    os.mkfifo(files / "fifo.yaml")
    (files / "loop_a.yaml").symlink_to(files / "loop_b.yaml")
    (files / "loop_b.yaml").symlink_to(files / "loop_a.yaml")
    (files / "dangling.yaml").symlink_to(files / "gone.yaml")
    (files / "huge.yaml").write_text("notes: |\n" + "  padding line of a config nobody should write\n" * 50_000)
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 7)]
    (files / "bomb.yaml").write_text("\n".join(laughs) + "\n")
    for name in ("no_config_run", "other_model_run"):
        shutil.copytree(run_dir, files / name)
    (files / "no_config_run" / "config.yaml").unlink()
    other = files / "other_model_run" / "config.yaml"
    other.write_text(other.read_text().replace("hidden_size: 128", "hidden_size: 64"))
    assert "hidden_size: 64" in other.read_text()


def _own_data(folder: Path) -> None:
    """Label files and images for the `lines` dataset: one good set, and one broken file per case."""
    from PIL import Image

    folder.mkdir()
    for name, width in (("a.png", 60), ("b.png", 64), ("narrow.png", 16)):
        image = Image.new("L", (width, 32), 255)
        image.paste(0, (4, 8, width - 4, 24))
        image.save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR broken")
    texts = {
        "good.txt": "a.png\tAB\nb.png\tBA\n",
        "no_delimiter.txt": "a.png\tAB\nb.png BA\n",
        "empty_path.txt": "a.png\tAB\n\tBA\n",
        "escape.txt": "a.png\tAB\n../../../etc/passwd\tBA\n",
        "missing_image.txt": "a.png\tAB\nnope.png\tBA\n",
        "corrupt_image.txt": "a.png\tAB\nbroken.png\tBA\n",
        "empty.txt": "",
        "duplicate.txt": "a.png\tAB\nb.png\tBA\na.png\tAB\n",
        "empty_label.txt": "a.png\tAB\nb.png\t\n",
        "unknown_char.txt": "a.png\tAB\nb.png\tAZ\n",
        "too_long.txt": "a.png\tAB\nnarrow.png\tABABAB\n",
        "bad.jsonl": '{"filename": "a.png", "text": "AB"}\n{"filename": "b.png"\n',
        "bad.csv": "filename,words\na.png,AB\nb.png,BA,extra\n",
        "bad.json": '{"a.png": "AB", "b.png": 7}',
    }
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "latin1.txt").write_bytes("a.png\tAB\nb.png\tBÄ\n".encode("latin-1"))
    (folder / "a_folder.txt").mkdir()
    import lmdb

    env = lmdb.open(str(folder / "no_count.lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"image-000000001", (folder / "a.png").read_bytes())
        txn.put(b"label-000000001", b"AB")
    env.close()


def _cases(run: str, files: str):
    """(name, argv, text the error line must contain). ``{run}`` and ``{files}`` are filled in."""
    out = "output_dir={root}/runs"
    return [
        # Configs: keys, types, values.
        ("unknown key", ["run", MNIST_CONFIG, "trainer.epoch=3", out], "did you mean 'epochs'"),
        ("unknown key in file", ["run", f"{files}/typo.yaml", out], "trainer.epoch: unknown key"),
        ("wrong type", ["run", MNIST_CONFIG, "trainer.epochs=many", out], "trainer.epochs"),
        ("negative epochs", ["run", MNIST_CONFIG, "trainer.epochs=-1", out], "trainer.epochs: must be > 0"),
        ("zero batch", ["run", MNIST_CONFIG, "trainer.batch_size=0", out], "trainer.batch_size: must be > 0"),
        ("zero lr", ["run", MNIST_CONFIG, "trainer.optimizer.lr=0", out], "trainer.optimizer.lr"),
        ("negative clip", ["run", MNIST_CONFIG, "trainer.grad_clip=-1", out], "trainer.grad_clip: must be >= 0"),
        ("negative time budget", ["run", MNIST_CONFIG, "trainer.max_minutes=-5", out], "trainer.max_minutes: must be >= 0"),
        ("endless time budget", ["run", MNIST_CONFIG, "trainer.max_minutes=inf", out], "trainer.max_minutes: must be a finite number"),
        ("bad precision", ["run", MNIST_CONFIG, "trainer.precision=fp8", out], "is not one of auto, 32-true"),
        ("bad optimizer", ["run", MNIST_CONFIG, "trainer.optimizer.name=adagrad", out], "trainer.optimizer.name"),
        ("bad scheduler", ["run", MNIST_CONFIG, "trainer.scheduler.name=poly", out], "trainer.scheduler.name"),
        ("bad device", ["run", MNIST_CONFIG, "trainer.device=tpu", out], "trainer.device"),
        ("no gpu", ["run", MNIST_CONFIG, "trainer.device=cuda", *QUICK, out], "no CUDA GPU"),
        ("fp16 on cpu", ["run", MNIST_CONFIG, *QUICK, "trainer.precision=16-mixed", "trainer.device=cpu", out], "16-mixed needs a CUDA GPU"),
        ("section as value", ["run", MNIST_CONFIG, "trainer.optimizer=sgd", out], "expected a section"),
        ("bad collapse", ["run", MNIST_CONFIG, "model.collapse=sum", out], "model.collapse"),
        ("bad checkpoint interval", ["run", MNIST_CONFIG, "trainer.checkpoint_every=often", out], "trainer.checkpoint_every: 'often' is not off"),
        ("unknown callback", ["run", MNIST_CONFIG, "trainer.callbacks=[{{name: early_stoping}}]", out], "did you mean 'early_stopping'"),
        ("callback option", ["run", MNIST_CONFIG, "trainer.callbacks=[{{name: early_stopping, patience: 0}}]", out], "trainer.callbacks[0]: patience: must be >= 1"),
        # Configs: components and their options.
        ("unknown backbone", ["run", MNIST_CONFIG, "model.backbone.name=vgg", out], "model.backbone.name"),
        ("unknown encoder", ["run", MNIST_CONFIG, "model.encoder.name=transformer", out], "model.encoder.name"),
        ("unknown head", ["run", MNIST_CONFIG, "model.head.name=crf", out], "model.head.name"),
        ("unknown dataset", ["run", MNIST_CONFIG, "data.name=imagenet", out], "data.name"),
        ("no convs", ["run", MNIST_CONFIG, "model.backbone.channels=[]", out], "give at least one conv"),
        ("pools mismatch", ["run", MNIST_CONFIG, "model.backbone.pools=[[2,2]]", out], "one [h, w] pool per conv"),
        ("bad padding", ["run", MNIST_CONFIG, "model.backbone.padding=full", out], "padding"),
        ("encoder type", ["run", MNIST_CONFIG, "model.encoder.hidden_size=big", out], "model.encoder.hidden_size"),
        ("head pool", ["run", MNIST_CONFIG, "model.head.pool=median", out], "pool"),
        ("negative limit", ["run", MNIST_CONFIG, "data.train_limit=-5", out], "data"),
        ("pooled to nothing", ["run", MNIST_CONFIG, "model.backbone.channels=[8,8,8,8,8]", "model.backbone.pools=[[2,2],[2,2],[2,2],[2,2],[2,2]]", *QUICK, out], "to nothing"),
        # Configs: files and syntax.
        ("missing config", ["run", f"{files}/nope.yaml", out], "no such config file"),
        ("invalid yaml", ["run", f"{files}/bad.yaml", out], "not valid YAML"),
        ("yaml list", ["run", f"{files}/list.yaml", out], "top level must be a mapping"),
        ("override syntax", ["run", MNIST_CONFIG, "=3", out], "expected key=value"),
        ("no config", ["run", out], "give a config file"),
        ("config is a fifo", ["run", f"{files}/fifo.yaml", out], "a named pipe (FIFO), not a config file"),
        ("config is a device", ["run", "/dev/zero", out], "/dev/zero: a device, not a config file"),
        ("config is a folder", ["config", files], "a folder, not a config file"),
        ("config is a link loop", ["run", f"{files}/loop_a.yaml", out], "loop_a.yaml: a symbolic link loop"),
        ("config is a broken link", ["config", f"{files}/dangling.yaml"], "dangling.yaml: a broken symbolic link"),
        ("config too big", ["run", f"{files}/huge.yaml", out], "too big for a config"),
        ("config alias bomb", ["run", f"{files}/bomb.yaml", out], "an alias bomb"),
        ("seed beyond 64 bits", ["run", MNIST_CONFIG, "seed=18446744073709551616", out], "seed: must be a whole number from 0 to 2**64 - 1"),
        ("output_dir is a file", ["run", MNIST_CONFIG, *QUICK, f"output_dir={files}/text.ckpt"], "is a file, not a folder"),
        ("name escapes output_dir", ["run", MNIST_CONFIG, "name=../../escaped", out], "not usable as a run name"),
        # Interpolations: resolved once at `run`, the environment and decoding only when allowed.
        ("environment not allowed", ["run", MNIST_CONFIG, "data.root=${{oc.env:HOME}}", out], "data.root: ${{oc.env:HOME}} reads outside the config"),
        ("decode not allowed", ["config", MNIST_CONFIG, "trainer.epochs=${{oc.decode:'3'}}"], "pass --allow-env"),
        ("self-reference", ["run", MNIST_CONFIG, "seed=${{seed}}", out], "seed: Recursive interpolation"),
        ("interpolation loop", ["config", MNIST_CONFIG, "seed=${{trainer.epochs}}", "trainer.epochs=${{seed}}"], "Recursive interpolation"),
        ("missing interpolation", ["config", MNIST_CONFIG, "seed=${{trainer.nope}}"], "seed: Interpolation key 'trainer.nope' not found"),
        ("environment name", ["run", MNIST_CONFIG, "name=${{oc.env:HOME}}", "--allow-env", out], "name: may not come from the environment"),
        # Data and labels.
        ("missing data root", ["run", MNIST_CONFIG, f"data.root={files}/no_such_folder", out], "data.root"),
        ("data root without mnist", ["run", MNIST_CONFIG, f"data.root={files}/no_images", out], "lacks"),
        ("ctc head on class labels", ["run", MNIST_CONFIG, "model.head.name=ctc", *QUICK, out], "pair a classification head"),
        ("softmax head on strings", ["run", CTC_CONFIG, "model.head.name=softmax", *TINY_CTC, out], "pair a classification head"),
        ("label outside charset", ["run", CTC_CONFIG, "model.head.charset=abc0123", *TINY_CTC, out], "lacks"),
        ("whitelist outside charset", ["run", CTC_CONFIG, "model.head.whitelist=xyz", *TINY_CTC, out], "whitelist"),
        ("label too long", ["run", CTC_CONFIG, "model.backbone.pools=[[2,2],[2,2],[2,2],[1,1],[2,2]]", *TINY_CTC, out], "Pool less along the width"),
        # Fine-tuning and resume.
        ("init from nothing", ["run", MNIST_CONFIG, "--init-from", f"{files}/nope.ckpt", out], "no such checkpoint"),
        ("init from text", ["run", MNIST_CONFIG, "--init-from", f"{files}/text.ckpt", *QUICK, out], "text.ckpt"),
        ("resume nothing", ["run", "--resume", f"{files}/no_images"], "not a run directory"),
        ("resume changed", ["run", "--resume", run, "trainer.batch_size=32"], "would make it a different run"),
        ("resume finished", ["run", "--resume", run], "already finished"),
        ("resume without config.yaml", ["run", "--resume", f"{files}/no_config_run"], "has no config.yaml"),
        ("resume with another model's config", ["run", "--resume", f"{files}/other_model_run"], "does not fit the model"),
        # Checkpoints.
        ("truncated ckpt", ["eval", f"{files}/truncated.ckpt"], "not a readable checkpoint"),
        ("text ckpt", ["eval", f"{files}/text.ckpt"], "not a readable checkpoint (another file type)"),
        ("empty ckpt", ["eval", f"{files}/empty.ckpt"], "empty.ckpt: not a readable checkpoint (an empty file)"),
        ("pickled object", ["eval", f"{files}/pickled.ckpt"], "refused"),
        ("old format", ["eval", f"{files}/old_format.ckpt"], "checkpoint format 1"),
        ("future crnnfw", ["eval", f"{files}/future.ckpt"], "newer than this crnnfw"),
        ("plain state dict", ["predict", f"{files}/plain_state_dict.ckpt", f"{files}/broken.png"], "no format_version"),
        ("no input spec", ["export", f"{files}/no_input.ckpt"], "not a crnnfw model checkpoint"),
        ("other model's weights", ["export", f"{files}/other_model.ckpt"], "weights do not fit"),
        ("model override on eval", ["eval", run, "model.encoder.hidden_size=32"], "weights do not fit"),
        ("eval on other geometry", ["eval", run, "data.name=multidigit", "data.height=32", "data.train_size=64", "data.val_size=64", "data.test_size=64"], "the model was trained on 1 x 28"),
        ("classifier on sequences", ["eval", run, "data.name=multidigit", "data.train_size=64", "data.val_size=64", "data.test_size=64"], "cannot compute its loss on this dataset's batches"),
        ("plugin not installed", ["eval", f"{files}/missing_plugin.ckpt"], "crnnfw-vgg 1.2.0"),
        ("folder without ckpt", ["eval", files], "without checkpoints/best.ckpt"),
        ("missing ckpt", ["export", f"{files}/nope.ckpt"], "no such checkpoint"),
        # Images.
        ("corrupt png", ["predict", run, f"{files}/broken.png"], "broken.png: cannot read it as an image"),
        ("empty png", ["predict", run, f"{files}/empty.png"], "empty.png: cannot read it as an image"),
        ("text as jpg", ["predict", run, f"{files}/notes.jpg"], "notes.jpg: cannot read it as an image"),
        ("folder without images", ["predict", run, f"{files}/no_images"], "no .png, .jpg, .jpeg, .bmp, .tif"),
        ("missing image", ["predict", run, f"{files}/nope.png"], "no such file or folder"),
        # Own data (the `lines` dataset): each stops before a run directory is made, naming file:line.
        *(
            (name, ["run", LINES_CONFIG, FP32, f"data.train={files}/lines/{source}", f"data.test={files}/lines/good.txt", "data.cache=off", out, *extra], expected)
            for name, source, extra, expected in (
                ("labels without delimiter", "no_delimiter.txt", [], "missing delimiter (train), first {files}/lines/no_delimiter.txt:2"),
                ("labels with empty path", "empty_path.txt", [], "empty_path.txt:2"),
                ("image path escapes root", "escape.txt", [], "path escapes root (train), first {files}/lines/escape.txt:2"),
                ("labelled image missing", "missing_image.txt", [], "missing image (train), first {files}/lines/missing_image.txt:2"),
                ("labelled image corrupt", "corrupt_image.txt", [], "undecodable image (train), first {files}/lines/corrupt_image.txt:2"),
                ("label file not utf-8", "latin1.txt", [], "not UTF-8 (train), first {files}/lines/latin1.txt:2"),
                ("label file empty", "empty.txt", [], "empty source (train)"),
                ("label file duplicates", "duplicate.txt", [], "duplicate (train), first {files}/lines/duplicate.txt:3"),
                ("empty label", "empty_label.txt", [], "empty label (train), first {files}/lines/empty_label.txt:2"),
                ("unknown character", "unknown_char.txt", ["data.charset=AB"], "unknown character (train), first {files}/lines/unknown_char.txt:2"),
                ("unknown character dropped away", "unknown_char.txt", ["data.charset=XY", "data.unknown=drop"], "data.train: no usable samples"),
                ("label too long for its image", "too_long.txt", ["data.val={files}/lines/good.txt"], "too_long.txt:2 (6 characters"),
                ("label file is a folder", "a_folder.txt", [], "a_folder.txt"),
                ("jsonl line broken", "bad.jsonl", [], "bad.jsonl:2"),
                ("csv row too long", "bad.csv", [], "bad.csv:3"),
                ("json value not text", "bad.json", [], "bad.json"),
                ("lmdb without num-samples", "no_count.lmdb", [], "no num-samples"),
            )
        ),
        ("data check of a bad config", ["data", f"{files}/typo.yaml"], "trainer.epoch: unknown key"),
        ("convert without output", ["data", "convert", f"{files}/lines/good.txt"], "give SOURCE"),
        ("convert broken labels", ["data", "convert", f"{files}/lines/no_delimiter.txt", f"{files}/out.lmdb"], "no_delimiter.txt:2"),
    ]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


CASES = _cases("{run}", "{files}")


def test_the_campaign_has_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(name, argv, expected, workspace, cli):
    root, run_dir, files = workspace
    fill = {"run": str(run_dir), "files": str(files), "root": str(root)}
    args = [str(a).format(**fill) for a in argv]
    before = _snapshot(root / "runs")
    result = cli(*args)
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crnnfw: error: "), result.err
    assert expected.format(**fill) in lines[0], lines[0]
    assert "Traceback" not in result.err + result.out
    assert _snapshot(root / "runs") == before


@pytest.mark.parametrize(
    "script, argv",
    [
        ("variant_speed.py", [str(CTC_CONFIG), "--variant", "typo", "trainer.optimizer.learning_rate=0.1"]),
        ("multidigit_ood.py", ["--count", "8", "trainer.optimizer.learning_rate=0.1"]),
        ("multidigit_ood.py", ["--run", "no/such/run"]),
    ],
)
def test_a_benchmark_given_a_bad_key_or_run_ends_in_one_line(script, argv, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
