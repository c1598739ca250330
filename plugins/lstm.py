"""The ``lstm`` encoder: stacked LSTM/GRU over the width axis, padding-aware."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import crnnfw


@dataclass
class LSTMConfig:
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = False
    cell: str = "lstm"  # lstm | gru
    dropout: float = 0.0  # between layers


class LSTMEncoder(crnnfw.SequenceEncoder):
    """Runs packed sequences when lengths differ, so padding never reaches a sample's state."""

    def __init__(self, config: LSTMConfig, in_features: int) -> None:
        super().__init__()
        if config.cell not in ("lstm", "gru"):
            raise ValueError(f"cell '{config.cell}' is not one of lstm, gru")
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(
            in_features,
            config.hidden_size,
            num_layers=config.num_layers,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.out_features = config.hidden_size * (2 if config.bidirectional else 1)

    @classmethod
    def from_config(cls, config: LSTMConfig, *, in_features: int) -> "LSTMEncoder":
        return cls(config, in_features)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        steps = seq.shape[1]
        lengths_cpu = lengths.cpu()
        if bool((lengths_cpu == steps).all()):
            return self.rnn(seq)[0]
        packed = pack_padded_sequence(seq, lengths_cpu.clamp(min=1), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=steps)[0]
