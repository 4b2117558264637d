"""The GPT: a small decoder-only transformer, Llama-shaped, in one file.

Shape of the network (Llama's, so other tools can load it later):
token embedding -> n_layer x [RMSNorm -> attention (rotary positions) -> RMSNorm -> SwiGLU MLP]
-> RMSNorm -> linear head to the vocabulary. No biases anywhere.

Generation uses a KV cache: each layer returns the keys and values it computed ("present"),
and the next call feeds them back in ("past"), so every new token costs one position's work
instead of the whole context's. The same forward pass is what we export to ONNX.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# One (key, value) pair per layer, each shaped (batch, n_head, time, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTConfig:
    """The model's shape: params.yaml's `model` section plus the tokenizer's vocabulary size
    (`GPTConfig(vocab_size=..., **params.model.model_dump())`)."""

    vocab_size: int
    block_size: int  # longest context the model is trained (and rotary tables built) for
    n_layer: int
    n_head: int
    n_embd: int
    mlp_ratio: float  # SwiGLU hidden width = ratio * n_embd, rounded up to 32
    dropout: float  # on each residual branch's output while training
    tie_embeddings: bool  # the output head reuses the token embedding matrix
    rope_theta: float = 10000.0  # fixed: rotary embeddings' base, as in Llama
    norm_eps: float = 1e-5  # fixed: RMSNorm's epsilon

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        return 32 * math.ceil(self.mlp_ratio * self.n_embd / 32)

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain (no mean, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out (not F.rms_norm) so the ONNX exporter sees plain ops.
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, shaped (block_size, head_dim), Llama's layout."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels by an angle that grows with position: attention scores then
    depend on how far apart two tokens are, not on where they sit."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (
            t.view(batch, time, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v)
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # No dropout on the attention weights: inside SDPA it costs ~40% of a CPU training
        # step, and dropout on the residual branches (Block) regularises as well here.
        if past is None:
            # Training and whole-prompt evaluation: the fused causal kernel.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # With a cache, query i sits at absolute position past_len + i and may see every
            # key up to there. SDPA's is_causal aligns to the top-left, so build the mask.
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
            past_len = k.shape[2] - time
            rows = torch.arange(time, device=x.device).unsqueeze(1) + past_len
            cols = torch.arange(k.shape[2], device=x.device).unsqueeze(0)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cols <= rows)
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        return self.proj(y), (k, v)


class SwiGLU(nn.Module):
    """MLP with a gated linear unit: silu(x W_gate) * (x W_up), then W_down."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, present = self.attn(self.attn_norm(x), cos, sin, past)
        x = x + self.dropout(attn_out)
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x, present


class GPT(nn.Module):
    rope_cos: torch.Tensor  # buffers: rotary tables, (block_size, head_dim)
    rope_sin: torch.Tensor

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rotary_tables(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # Scaled init (GPT-2): each residual branch's output projection gets a smaller std so
        # the residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Trainable parameters, counting a tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        past: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache]:
        """Logits for every position of `idx` (batch, time).

        `targets` (same shape, -1 = ignore) gives the mean next-token cross-entropy.
        `past` continues from a KV cache; the returned cache covers past + idx.
        """
        time = idx.shape[1]
        past_len = 0 if past is None else past[0][0].shape[2]
        if not torch.jit.is_tracing() and past_len + time > self.config.block_size:
            raise ValueError(
                f"{past_len + time} positions exceed the model's context of "
                f"{self.config.block_size} tokens: shorten the input"
            )
        cos = self.rope_cos[past_len : past_len + time]
        sin = self.rope_sin[past_len : past_len + time]
        x = self.tok_emb(idx)
        present: KVCache = []
        for i, block in enumerate(self.blocks):
            x, layer_present = block(x, cos, sin, None if past is None else past[i])
            present.append(layer_present)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss, present
