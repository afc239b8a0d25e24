"""Recurrent building blocks that are exact under padding and export cleanly to ONNX."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn


def reverse_within_length(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence's first ``length`` steps along time; padding stays where it is.

    The backward direction of a bidirectional RNN then reads each sentence from its own last
    token, never from padding, so a sentence's states do not depend on how much padding its
    batch needed. The operation is its own inverse. Built from Range/Where/Gather, which ONNX
    exports with dynamic shapes (packed sequences do not export).
    """
    steps = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    lens = lengths.unsqueeze(1)
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


def length_mask(lengths: Tensor, max_len: int | Tensor) -> Tensor:
    """[batch, time] float mask: 1.0 on real tokens, 0.0 on padding."""
    steps = torch.arange(max_len, device=lengths.device).unsqueeze(0)  # type: ignore[arg-type]
    return (steps < lengths.unsqueeze(1)).to(torch.float32)


class LengthAwareBiRNN(nn.Module):
    """Stacked bidirectional LSTM/GRU over right-padded batches, exact under padding.

    Each direction is a unidirectional cuDNN/oneDNN-style RNN; the backward one runs on
    sequences reversed within their lengths. Outputs at padded positions are meaningless and
    must be masked by the caller.
    """

    def __init__(
        self,
        kind: Literal["lstm", "gru"],
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
    ) -> None:
        super().__init__()
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        sizes = [input_size] + [2 * hidden_size] * (num_layers - 1)
        self.forward_rnns = nn.ModuleList(rnn(size, hidden_size, batch_first=True) for size in sizes)
        self.backward_rnns = nn.ModuleList(rnn(size, hidden_size, batch_first=True) for size in sizes)
        self.dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden_size

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for layer, (fwd, bwd) in enumerate(zip(self.forward_rnns, self.backward_rnns, strict=True)):
            if layer > 0:
                x = self.dropout(x)
            out_fwd, _ = fwd(x)
            out_bwd, _ = bwd(reverse_within_length(x, lengths))
            x = torch.cat([out_fwd, reverse_within_length(out_bwd, lengths)], dim=-1)
        return x
