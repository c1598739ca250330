"""Encoders made of dense layers: ``dense`` (each step on its own) and ``flatten`` (all steps at once).

They let the Keras tutorials' models be written over the engine's stages: a ``Dense`` applied
to each column of a conv feature map before an LSTM (``dense``, with an optional ``rnn``), and
``Flatten`` followed by ``Dense`` layers instead of any recurrence (``flatten``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import crnnfw

from .cnn import ACTIVATIONS
from .lstm import LSTMConfig, LSTMEncoder


def _check_stack(sizes: List[int], activation: str, dropout: float) -> None:
    if any(size < 1 for size in sizes):
        raise ValueError(f"sizes: every dense layer needs at least 1 unit, got {sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: '{activation}' is not one of {', '.join(ACTIVATIONS)}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def dense_stack(in_features: int, sizes: List[int], batch_norm: bool, activation: str) -> nn.Sequential:
    """Linear -> (batch norm) -> activation for each size, on rows ``(M, in_features)``."""
    layers: list[nn.Module] = []
    width = in_features
    for size in sizes:
        layers.append(nn.Linear(width, size, bias=not batch_norm))  # batch norm brings its own shift
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(ACTIVATIONS[activation]())
        width = size
    return nn.Sequential(*layers)


@dataclass
class DenseConfig:
    sizes: List[int] = field(default_factory=lambda: [128])  # dense layers applied to every step on its own
    batch_norm: bool = False  # batch norm after each dense layer (statistics over valid steps only)
    activation: str = "relu"  # relu | gelu | silu | leaky_relu
    dropout: float = 0.0  # on each step's input, before the first dense layer
    rnn: Optional[LSTMConfig] = None  # then an lstm encoder over the dense outputs, e.g. {hidden_size: 128, num_layers: 1}; null: none

    def __post_init__(self) -> None:
        _check_stack(self.sizes, self.activation, self.dropout)
        if not self.sizes and self.rnn is None:
            raise ValueError("give at least one dense layer (sizes) or an rnn; with neither the encoder does nothing")


class DenseEncoder(crnnfw.SequenceEncoder):
    """Dense layers on each step (Keras' TimeDistributed(Dense)), then optionally an LSTM/GRU.

    Each step goes through the layers on its own, so padding cannot reach a valid step. Batch
    norm in training is the exception, as its statistics mix rows: then only the valid steps go
    through the layers and padded steps come out as zeros. The optional ``rnn`` is the ``lstm``
    encoder itself, padding-aware in its own way.
    """

    def __init__(self, config: DenseConfig, in_features: int) -> None:
        super().__init__()
        self.batch_norm = config.batch_norm and bool(config.sizes)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = dense_stack(in_features, config.sizes, config.batch_norm, config.activation)
        width = config.sizes[-1] if config.sizes else in_features
        self.rnn = LSTMEncoder.from_config(config.rnn, in_features=width) if config.rnn is not None else None
        self.out_features = self.rnn.out_features if self.rnn is not None else width

    @classmethod
    def from_config(cls, config: DenseConfig, *, in_features: int) -> "DenseEncoder":
        return cls(config, in_features)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        x = self.dropout(seq).flatten(0, 1)  # (N * T, D): every step is one row
        if self.batch_norm and self.training:
            # Batch statistics from the valid steps alone; padded steps come out as zeros.
            valid = crnnfw.length_mask(lengths.to(x.device), seq.shape[1]).flatten().nonzero().squeeze(1)
            dense = self.layers(x.index_select(0, valid))
            x = dense.new_zeros(x.shape[0], dense.shape[1]).index_copy(0, valid, dense)
        else:
            x = self.layers(x)
        x = x.reshape(seq.shape[0], seq.shape[1], -1)
        return self.rnn(x, lengths) if self.rnn is not None else x


@dataclass
class FlattenConfig:
    steps: int = 28  # the longest sequence it reads: 28 for MNIST rows, 14 for MNIST columns after one 2x pool
    dropout: float = 0.0  # on the flattened vector, before the dense layers (Keras: Dropout, Flatten, Dense)
    sizes: List[int] = field(default_factory=lambda: [128])  # dense layers on the flattened vector
    batch_norm: bool = False  # batch norm after each dense layer
    activation: str = "relu"  # relu | gelu | silu | leaky_relu

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        _check_stack(self.sizes, self.activation, self.dropout)


class FlattenEncoder(crnnfw.SequenceEncoder):
    """All valid steps of a sample as one vector, then dense layers: Flatten + Dense, no recurrence.

    The vector is the first ``steps`` steps, zeroed past each sample's length and zero-padded
    to ``steps``, so a shorter sample reads the same alone or in a batch. Every output step
    carries that same vector, so a head reads it whichever step it picks or however it pools.
    """

    def __init__(self, config: FlattenConfig, in_features: int) -> None:
        super().__init__()
        self.steps = config.steps
        self.dropout = nn.Dropout(config.dropout)
        self.layers = dense_stack(in_features * config.steps, config.sizes, config.batch_norm, config.activation)
        self.out_features = config.sizes[-1] if config.sizes else in_features * config.steps

    @classmethod
    def from_config(cls, config: FlattenConfig, *, in_features: int) -> "FlattenEncoder":
        return cls(config, in_features)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        # Only a batch longer than `steps` can hold a sample that does not fit (asking costs a
        # sync); an exported graph crops instead of raising.
        if not torch.jit.is_tracing() and seq.shape[1] > self.steps and bool((lengths > self.steps).any()):
            raise ValueError(f"a sequence has {int(lengths.max())} steps; flatten reads at most steps={self.steps}")
        # Pad by a constant and crop to a constant, so the traced graph suits every length.
        x = F.pad(seq, (0, 0, 0, self.steps))[:, : self.steps]
        x = x * crnnfw.length_mask(lengths.to(x.device), self.steps).to(x.dtype).unsqueeze(-1)
        x = self.layers(self.dropout(x.flatten(1)))
        return x.unsqueeze(1).expand(-1, seq.shape[1], -1)
