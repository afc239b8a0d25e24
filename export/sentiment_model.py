"""Sentiment classifier: subword embeddings → stacked bidirectional LSTM → pooled → classes.

Pooling is over real tokens only (max and mean, masked by length), so the result for a
sentence does not depend on the padding its batch needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from export.layers import LengthAwareBiRNN, length_mask


@dataclass
class SentimentConfig:
    vocab: int
    embed_dim: int = 256
    hidden: int = 192
    layers: int = 2
    dropout: float = 0.5
    classes: int = 2

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class SentimentLSTM(nn.Module):
    def __init__(self, config: SentimentConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab, config.embed_dim, padding_idx=0)
        self.encoder = LengthAwareBiRNN("lstm", config.embed_dim, config.hidden, config.layers, config.dropout / 2)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(2 * self.encoder.output_size, config.classes)

    def logits(self, ids: Tensor, lengths: Tensor) -> Tensor:
        mask = length_mask(lengths, ids.size(1)).unsqueeze(-1)
        states = self.encoder(self.dropout(self.embed(ids)), lengths)
        pooled_max = (states * mask + (mask - 1.0) * 1e4).amax(dim=1)
        pooled_mean = (states * mask).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(states.dtype)
        return self.classifier(self.dropout(torch.cat([pooled_max, pooled_mean], dim=-1)))

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """The exported graph: token ids [B,T] + lengths [B] → class probabilities [B,C]."""
        return torch.softmax(self.logits(ids, lengths), dim=-1)
