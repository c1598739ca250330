"""crnnfw: a plugin-extensible sequence-recognition framework on PyTorch.

The public API: what built-in and third-party plugins build on.
"""

from .augment import AugmentConfig, RandomAffine
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
