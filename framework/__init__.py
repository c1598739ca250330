"""crnnfw: a plugin-extensible sequence-recognition framework on PyTorch.

The public API: what built-in and third-party plugins build on.
"""

import os
import sys

# GNU OpenMP threads spin 300,000 times before they sleep. When other processes hold the cores
# (shared machines, CI, torchrun ranks), that spinning starves the thread being waited for:
# measured on 2 cores beside two other trainings, a small CTC model trained at 9-11 images/s
# with the default and at 44 with 30,000 spins, while alone the CRNN trains equally fast with
# both (1,447 and 1,452 images/s; sleeping at once, OMP_WAIT_POLICY=PASSIVE, costs 15% there).
# It must be set before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

# As the `crnnfw` command, a signal while torch loads ends it at once with one line (there is
# nothing to save yet); `main` installs the real handling. Imported as a library, nothing changes.
if os.path.basename(sys.argv[0] if sys.argv else "") == "crnnfw" or getattr(sys, "orig_argv", [])[1:3] == ["-m", "crnnfw"]:
    from .interrupts import exit_during_startup

    exit_during_startup()

from .augment import AugmentConfig, RandomAffine, TextAugment, TextAugmentConfig  # noqa: E402  (after the OpenMP setting)
from .batch import Batch
from .callbacks import Callback, FitState
from .data import BatchTransform, DataModule, PackedSplit, Split, TensorSplit
from .errors import CheckpointError, ConfigError, CrnnfwError, DataError, DataProblems, ExportError, ImageError, ModelError, PluginError, Problem, TrainingError
from .hookspecs import hookimpl
from .metrics import SequenceScores, edit_distance, edit_operations
from .model import collapse_height
from .stages import Backbone, Decoded, Head, Metrics, SequenceEncoder, length_mask, mask_padding, masks_needed, unpadded
from .version import __version__
from .api import Built, Recognizer, Run, build, load, train  # noqa: E402  (the API builds on everything above)
from .hardware import machine
from .predict import Prediction

__all__ = [
    "AugmentConfig",
    "Backbone",
    "Batch",
    "Built",
    "Callback",
    "BatchTransform",
    "CheckpointError",
    "ConfigError",
    "CrnnfwError",
    "DataError",
    "DataModule",
    "DataProblems",
    "Decoded",
    "ExportError",
    "FitState",
    "Head",
    "ImageError",
    "Metrics",
    "SequenceScores",
    "ModelError",
    "PackedSplit",
    "PluginError",
    "Prediction",
    "Problem",
    "RandomAffine",
    "Recognizer",
    "Run",
    "SequenceEncoder",
    "Split",
    "TensorSplit",
    "TextAugment",
    "TextAugmentConfig",
    "TrainingError",
    "__version__",
    "collapse_height",
    "build",
    "edit_distance",
    "edit_operations",
    "hookimpl",
    "length_mask",
    "load",
    "machine",
    "mask_padding",
    "masks_needed",
    "train",
    "unpadded",
]
