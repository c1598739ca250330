"""The ``ctc`` head: per-step character logits, CTC loss, greedy and beam decoding."""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import crnnfw

BLANK = 0  # the blank is always index 0; character i of the charset is index i + 1


@dataclass
class CTCConfig:
    charset: Optional[str] = None  # the characters the model can emit (unset: the dataset's classes)
    decoder: str = "greedy"  # greedy | beam
    beam_width: int = 10
    allowed_lengths: List[int] = field(default_factory=list)  # beam only: emit only strings of these lengths
    whitelist: Optional[str] = None  # emit only these characters (unset: the whole charset)
    dropout: float = 0.0  # before the classifier

    def __post_init__(self) -> None:
        if self.decoder not in ("greedy", "beam"):
            raise ValueError(f"decoder: '{self.decoder}' is not one of greedy, beam")
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {self.beam_width}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(n < 1 for n in self.allowed_lengths):
            raise ValueError("allowed_lengths: every length must be >= 1")


class SequenceMetrics(crnnfw.Metrics):
    """Exact-match accuracy, CER, normalised edit distance and per-length accuracy; for
    ``crnnfw eval``, tables per length and of the most frequent character errors."""

    main = "accuracy"
    table = ("accuracy", "cer", "ned")

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.classes = classes
        self.scores = crnnfw.SequenceScores()

    def update(self, decoded: crnnfw.Decoded, batch: crnnfw.Batch) -> None:
        self.scores.add(decoded.texts, batch.target_texts(self.classes))

    def compute(self) -> dict[str, float]:
        return self.scores.compute()

    def breakdown(self, scores: dict[str, float]) -> str:
        parts = [f"{k.removeprefix('accuracy_len')}: {v:.2%}" for k, v in scores.items() if k.startswith("accuracy_len")]
        return "  accuracy by length  " + "  ".join(parts) if parts else ""

    def report(self) -> dict[str, list[dict[str, float | int]]]:
        return {"per_length": self.scores.per_length(), "char_errors": self.scores.char_errors()}


class CTCHead(crnnfw.Head):
    """A linear layer to ``len(charset) + 1`` classes per step; index 0 is the blank."""

    def __init__(self, config: CTCConfig, in_features: int, classes: tuple[str, ...]) -> None:
        super().__init__()
        charset = config.charset if config.charset is not None else "".join(classes)
        if len(set(charset)) != len(charset) or not charset:
            raise ValueError(f"charset {charset!r} must be non-empty and have no repeated characters")
        missing = [c for c in classes if c not in charset]
        if missing:
            raise ValueError(f"the dataset's labels use {''.join(missing)!r}, which charset {charset!r} lacks; add them to model.head.charset")
        whitelist = config.whitelist if config.whitelist is not None else charset
        if any(c not in charset for c in whitelist):
            raise ValueError(f"whitelist {whitelist!r} has characters outside charset {charset!r}")
        self.config = config
        self.classes = tuple(classes)
        self.charset = charset
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(in_features, len(charset) + 1)
        # dataset class id -> model output index
        self.register_buffer("target_map", torch.tensor([charset.index(c) + 1 for c in classes]), persistent=False)
        banned = torch.ones(len(charset) + 1, dtype=torch.bool)
        banned[BLANK] = False
        for c in whitelist:
            banned[charset.index(c) + 1] = False
        self.register_buffer("banned", banned, persistent=False)

    @classmethod
    def from_config(cls, config: CTCConfig, *, in_features: int, classes: tuple[str, ...]) -> "CTCHead":
        return cls(config, in_features, classes)

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        return self.classifier(self.dropout(seq))

    def min_steps(self, label_length: int) -> int:
        """The worst case: every character the same as the one before, a blank between each pair."""
        return max(1, 2 * label_length - 1)

    def steps_needed(self, targets: Tensor, lengths: Tensor) -> Tensor:
        """One step per character, plus a blank between each pair of equal neighbours."""
        if targets.shape[1] < 2:
            return lengths.clone()
        inside = torch.arange(1, targets.shape[1], device=targets.device) < lengths[:, None]
        return lengths + ((targets[:, 1:] == targets[:, :-1]) & inside).sum(1)

    def loss(self, logits: Tensor, lengths: Tensor, batch: crnnfw.Batch) -> Tensor:
        if batch.target_lengths is None:
            raise ValueError("the ctc head needs label sequences (batch.target_lengths), but the batch holds class labels")
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, N, C), fp32 always
        targets = self.target_map[batch.targets]
        return F.ctc_loss(log_probs, targets, lengths, batch.target_lengths, blank=BLANK, reduction="mean", zero_infinity=False)

    def log_probs(self, logits: Tensor) -> Tensor:
        """Per-step log-probabilities with characters outside the whitelist removed."""
        return logits.float().masked_fill(self.banned, float("-inf")).log_softmax(-1)

    def decode(self, logits: Tensor, lengths: Tensor) -> crnnfw.Decoded:
        log_probs = self.log_probs(logits)
        if self.config.decoder == "beam":
            return beam_decode(log_probs, lengths, self.charset, self.config.beam_width, self.config.allowed_lengths)
        return greedy_decode(log_probs, lengths, self.charset)

    def decode_beam(self, logits: Tensor, lengths: Tensor, beam_width: int) -> crnnfw.Decoded:
        return beam_decode(self.log_probs(logits), lengths, self.charset, beam_width, self.config.allowed_lengths)

    def export_metadata(self) -> dict[str, str]:
        """Logits are ``(N, T, len(charset) + 1)``: index 0 is the blank, index i + 1 is ``charset[i]``."""
        metadata = {"decoder": "ctc_greedy", "charset": self.charset, "blank": str(BLANK)}
        if self.config.whitelist is not None and set(self.config.whitelist) != set(self.charset):
            metadata["whitelist"] = self.config.whitelist  # decoders should ignore the other characters
        return metadata

    def metrics(self) -> crnnfw.Metrics:
        return SequenceMetrics(self.classes)


def greedy_decode(log_probs: Tensor, lengths: Tensor, charset: str) -> crnnfw.Decoded:
    """Best path: argmax per step, merge repeats, drop blanks; confidence = its probability.

    Vectorised over the batch; only the final join into Python strings is per sample.
    """
    best, ids = log_probs.max(-1)  # (N, T)
    steps = ids.shape[1]
    valid = crnnfw.length_mask(lengths.to(ids.device), steps)
    previous = F.pad(ids, (1, 0), value=BLANK)[:, :-1]
    keep = valid & (ids != BLANK) & (ids != previous)
    confidences = (best * valid).sum(-1).exp()
    table = torch.tensor([0] + [ord(c) for c in charset], dtype=torch.int32, device=ids.device)
    codes = torch.where(keep, table[ids], torch.zeros_like(ids, dtype=torch.int32)).cpu()
    if all(ord(c) < 256 for c in charset):
        packed = codes.to(torch.uint8).contiguous()
        raw = ctypes.string_at(packed.data_ptr(), packed.numel())  # one copy of the whole batch
        texts = [raw[i * steps : (i + 1) * steps].replace(b"\0", b"").decode("latin-1") for i in range(len(ids))]
    else:
        texts = ["".join(chr(c) for c in row if c) for row in codes.tolist()]
    return crnnfw.Decoded(texts, confidences.cpu())


def _logsumexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    high = max(a, b)
    return high + math.log1p(math.exp(-abs(a - b)))


def beam_decode(log_probs: Tensor, lengths: Tensor, charset: str, beam_width: int, allowed_lengths: list[int] | tuple[int, ...] = ()) -> crnnfw.Decoded:
    """CTC prefix beam search: keeps the ``beam_width`` most probable prefixes, summing over the
    paths that produce each; the confidence is the winning string's total probability.

    ``allowed_lengths`` keeps only prefixes that can still reach an allowed length, and only
    strings of an allowed length win. A beam of one without constraints is best-path
    decoding, the greedy result.
    """
    if beam_width == 1 and not allowed_lengths:
        return greedy_decode(log_probs, lengths, charset)
    allowed = set(allowed_lengths)
    longest = max(allowed) if allowed else None
    texts, confidences = [], []
    for sample, length in zip(log_probs.cpu().tolist(), lengths.cpu().tolist()):
        beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (log p blank-ending, log p char-ending)
        for step in sample[:length]:
            candidates: dict[tuple[int, ...], list[float]] = {}

            def add(prefix: tuple[int, ...], blank: float, char: float, candidates: dict[tuple[int, ...], list[float]] = candidates) -> None:
                entry = candidates.setdefault(prefix, [-math.inf, -math.inf])
                entry[0] = _logsumexp(entry[0], blank)
                entry[1] = _logsumexp(entry[1], char)

            for prefix, (p_blank, p_char) in beams.items():
                total = _logsumexp(p_blank, p_char)
                add(prefix, total + step[BLANK], -math.inf)
                if prefix:
                    add(prefix, -math.inf, p_char + step[prefix[-1]])
                if longest is not None and len(prefix) >= longest:
                    continue
                for c in range(1, len(step)):
                    lp = step[c]
                    if lp == -math.inf:
                        continue
                    if prefix and c == prefix[-1]:
                        add(prefix + (c,), -math.inf, p_blank + lp)
                    else:
                        add(prefix + (c,), -math.inf, total + lp)
            ranked = sorted(candidates.items(), key=lambda kv: _logsumexp(*kv[1]), reverse=True)
            beams = {prefix: (b, c) for prefix, (b, c) in ranked[:beam_width]}
        finals = [(p, _logsumexp(*s)) for p, s in beams.items() if not allowed or len(p) in allowed]
        if finals:
            prefix, score = max(finals, key=lambda x: x[1])
            texts.append("".join(charset[c - 1] for c in prefix))
            confidences.append(math.exp(score))
        else:
            texts.append("")
            confidences.append(0.0)
    return crnnfw.Decoded(texts, torch.tensor(confidences))
