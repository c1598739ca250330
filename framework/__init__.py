"""crnnfw: a plugin-extensible sequence-recognition framework on PyTorch.

The public API: what built-in and third-party plugins build on.
"""

import os

# OpenMP threads that spin while waiting turn every small op into a scheduler round when another
# process holds a core (shared machines, CI, torchrun ranks): measured here, a CTC model trained
# at 12-29 images/s with spinning and at 434 with passive waits. It must be set before torch loads
# its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .augment import AugmentConfig, RandomAffine  # noqa: E402  (after the OpenMP setting)
from .batch import Batch
from .data import BatchTransform, DataModule, Split, TensorSplit
from .errors import CheckpointError, ConfigError, CrnnfwError, DataError, ModelError, PluginError, TrainingError
from .hookspecs import hookimpl
from .metrics import SequenceScores, edit_distance
from .model import Model, build_model, check_model, collapse_height
from .stages import Backbone, Decoded, Head, Metrics, SequenceEncoder, length_mask, mask_padding
from .version import __version__

__all__ = [
    "AugmentConfig",
    "Backbone",
    "Batch",
    "BatchTransform",
    "CheckpointError",
    "ConfigError",
    "CrnnfwError",
    "DataError",
    "DataModule",
    "Decoded",
    "Head",
    "Metrics",
    "SequenceScores",
    "Model",
    "ModelError",
    "PluginError",
    "RandomAffine",
    "SequenceEncoder",
    "Split",
    "TensorSplit",
    "TrainingError",
    "__version__",
    "build_model",
    "check_model",
    "collapse_height",
    "edit_distance",
    "hookimpl",
    "length_mask",
    "mask_padding",
]
