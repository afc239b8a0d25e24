"""English→German encoder-decoder with additive (Bahdanau) attention.

Encoder: subword embeddings → stacked bidirectional GRU (exact under padding).
Decoder, two GRU layers per step:
  s1_t = GRU1(y_{t-1}, s1_{t-1})                    # what was just emitted
  a_t  = softmax(v·tanh(W s1_t + U h_j) masked)     # additive attention over source states h_j
  c_t  = Σ_j a_tj h_j
  s2_t = GRU2([s1_t; c_t], s2_{t-1})                # context fed back into the recurrence
  p_t  = softmax(E · tanh(R [s2_t; c_t; emb(y_{t-1})]) + b)   # output tied to target embeddings
The attention query depends only on the target prefix, so under teacher forcing both GRUs run
over whole sequences at once (fast on a CPU), while inference runs the same weights one step
at a time. U h_j is computed once per sentence by the encoder graph ("encoder_keys").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from export.layers import LengthAwareBiRNN, length_mask

NEG_INF = -1e9


@dataclass
class TranslationConfig:
    src_vocab: int
    tgt_vocab: int
    embed_dim: int = 256
    encoder_hidden: int = 256
    encoder_layers: int = 2
    decoder_hidden: int = 512
    attention_dim: int = 256
    dropout: float = 0.3

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class AttentionTranslator(nn.Module):
    def __init__(self, config: TranslationConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        enc_out = 2 * c.encoder_hidden
        self.src_embed = nn.Embedding(c.src_vocab, c.embed_dim, padding_idx=0)
        self.encoder = LengthAwareBiRNN("gru", c.embed_dim, c.encoder_hidden, c.encoder_layers, c.dropout)
        self.init_state = nn.Linear(enc_out, 2 * c.decoder_hidden)
        self.key_proj = nn.Linear(enc_out, c.attention_dim, bias=False)
        self.query_proj = nn.Linear(c.decoder_hidden, c.attention_dim)
        self.energy = nn.Linear(c.attention_dim, 1, bias=False)
        self.tgt_embed = nn.Embedding(c.tgt_vocab, c.embed_dim, padding_idx=0)
        self.dec1 = nn.GRU(c.embed_dim, c.decoder_hidden, batch_first=True)
        self.dec2 = nn.GRU(c.decoder_hidden + enc_out, c.decoder_hidden, batch_first=True)
        self.readout = nn.Linear(c.decoder_hidden + enc_out + c.embed_dim, c.embed_dim)
        self.out_bias = nn.Parameter(torch.zeros(c.tgt_vocab))
        self.dropout = nn.Dropout(c.dropout)
        # Embeddings start at the scale of the tied output layer, so initial logits are ~N(0, 1).
        for emb in (self.src_embed, self.tgt_embed):
            nn.init.normal_(emb.weight, std=c.embed_dim**-0.5)
            with torch.no_grad():
                emb.weight[0].zero_()

    # --- encoder -------------------------------------------------------------------------
    def encode(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> encoder_states [B,S,2He], encoder_keys [B,S,A], initial decoder_state [B,2,Hd]."""
        mask = length_mask(src_lengths, src_ids.size(1))
        states = self.encoder(self.dropout(self.src_embed(src_ids)), src_lengths)
        states = states * mask.unsqueeze(-1)
        states = self.dropout(states)
        mean = states.sum(1) / src_lengths.clamp(min=1).unsqueeze(1).to(states.dtype)
        init = torch.tanh(self.init_state(mean)).view(-1, 2, self.config.decoder_hidden)
        return states, self.key_proj(states), init

    # --- attention + output (shared by training and the one-step graph) ------------------
    def attend(self, query: Tensor, keys: Tensor, states: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query [B,T,Hd] → context [B,T,2He], weights [B,T,S] (zero on padding)."""
        energy = self.energy(torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))).squeeze(-1)
        energy = energy + (1.0 - src_mask.unsqueeze(1)) * NEG_INF
        weights = torch.softmax(energy, dim=-1)
        return torch.bmm(weights, states), weights

    def _logits(self, s2: Tensor, context: Tensor, emb: Tensor) -> Tensor:
        hidden = torch.tanh(self.readout(torch.cat([s2, context, emb], dim=-1)))
        return self.dropout(hidden) @ self.tgt_embed.weight.t() + self.out_bias

    # --- training: teacher forcing over whole target sequences ---------------------------
    def forward(self, src_ids: Tensor, src_lengths: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits [B,T,V] for every target position given the gold prefix."""
        states, keys, init = self.encode(src_ids, src_lengths)
        src_mask = length_mask(src_lengths, src_ids.size(1))
        emb = self.dropout(self.tgt_embed(tgt_in))
        s1, _ = self.dec1(emb, init[:, 0].unsqueeze(0).contiguous())
        context, _ = self.attend(s1, keys, states, src_mask)
        s2, _ = self.dec2(torch.cat([s1, context], dim=-1), init[:, 1].unsqueeze(0).contiguous())
        return self._logits(self.dropout(s2), context, emb)

    # --- inference: one decoder step ------------------------------------------------------
    def step(
        self, prev_tokens: Tensor, state: Tensor, enc_states: Tensor, enc_keys: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """prev_tokens [B], state [B,2,Hd] → log_probs [B,V], new state [B,2,Hd], attention [B,S]."""
        emb = self.tgt_embed(prev_tokens).unsqueeze(1)
        s1, _ = self.dec1(emb, state[:, 0].unsqueeze(0).contiguous())
        context, weights = self.attend(s1, enc_keys, enc_states, src_mask)
        s2, _ = self.dec2(torch.cat([s1, context], dim=-1), state[:, 1].unsqueeze(0).contiguous())
        logits = self._logits(s2, context, emb).squeeze(1)
        new_state = torch.cat([s1, s2], dim=1)
        return torch.log_softmax(logits, dim=-1), new_state, weights.squeeze(1)


class TranslationEncoderGraph(nn.Module):
    """The encoder graph as exported: ids, lengths → states, keys, initial decoder state."""

    def __init__(self, model: AttentionTranslator) -> None:
        super().__init__()
        self.model = model

    def forward(self, src_ids: Tensor, src_lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.encode(src_ids, src_lengths)


class TranslationDecoderStepGraph(nn.Module):
    """The one-step decoder graph as exported.

    Two additions to ``step`` let the decoder state and the vocabulary-sized scores stay on the
    accelerator between steps: ``parent_rows`` picks (and reorders, for beam search) the rows of
    the previous step's state inside the graph, and the graph returns each row's ``top_k`` best
    tokens, which is all beam search needs when top_k >= 2 x beam size.
    """

    def __init__(self, model: AttentionTranslator, top_k: int) -> None:
        super().__init__()
        self.model = model
        self.top_k = top_k

    def forward(
        self, prev_tokens: Tensor, state: Tensor, parent_rows: Tensor, enc_states: Tensor, enc_keys: Tensor,
        src_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        log_probs, new_state, attention = self.model.step(
            prev_tokens, state.index_select(0, parent_rows), enc_states, enc_keys, src_mask)
        top_log_probs, top_ids = torch.topk(log_probs, self.top_k, dim=-1)
        return log_probs, top_log_probs, top_ids, new_state, attention
