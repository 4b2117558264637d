"""The GPT: a small decoder-only transformer in one file, in two designs side by side.

    token embedding [+ learned position]
    -> n_layer x [norm -> attention -> norm -> MLP], each added back to the residual stream
    -> norm -> linear head to the vocabulary

                 Llama (bardlet's default)          GPT-2
    norm         RMSNorm (scale only)                LayerNorm (centre, scale, shift)
    positions    rotary: q and k rotated by angle     learned: a vector per position added
    MLP          SwiGLU: silu(x W_gate) * x W_up      GELU: gelu(x W_up), 4x wide
    biases       none                                 on every linear layer and norm
    attention    grouped-query allowed (n_kv_head)    every head has its own keys and values

`GPT.from_pretrained(folder)` loads a Hugging Face `GPT2LMHeadModel` or `LlamaForCausalLM`
folder into this model, so a pretrained checkpoint trains, exports and chats like our own.

Generation uses a KV cache: each layer returns the keys and values it computed ("present"),
and the next call feeds them back in ("past"), so every new token costs one position's work
instead of the whole context's. That path is written with ONNX's own `RotaryEmbedding` and
`Attention` operators (`torch.onnx.ops`: PyTorch runs their reference implementation), so
the exported graph has one node for each where a traced formula has dozens: decoding runs
~1.5x faster in onnxruntime. Training uses PyTorch's fused causal attention; the export's
parity check holds the two paths to the same logits.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bardlet.defaults import UserError

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
    # The design (see the table at the top); bardlet trains Llama's, GPT-2's comes pretrained.
    norm: str = "rmsnorm"  # or "layernorm"
    positions: str = "rotary"  # or "learned"
    mlp: str = "swiglu"  # or "gelu" (tanh approximation, GPT-2's "gelu_new")
    bias: bool = False  # biases on every linear layer and norm
    n_kv_head: int = 0  # heads of keys and values; 0 = n_head, fewer = grouped-query attention
    mlp_width: int = 0  # the MLP's hidden width when a checkpoint fixes it; 0 = from mlp_ratio
    rope_theta: float = 10000.0  # rotary embeddings' base, as in Llama
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_width or 32 * math.ceil(self.mlp_ratio * self.n_embd / 32)

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


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "layernorm":
        return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)
    return RMSNorm(config.n_embd, config.norm_eps)


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


@dataclass
class Rope:
    """Rotary tables for one forward pass. Training: `cos`, `sin` (time, head_dim), the rows of
    this window. With a cache: ONNX's layout, each (block_size, head_dim / 2), and `positions`
    (batch, time), each token's position within its own row (left padding does not count)."""

    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor | None = None


class Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.rotary = config.positions == "rotary"
        # One matrix makes q, k and v: rows [q (n_head heads); k; v (n_kv_head heads each)].
        self.split = [config.n_head * self.head_dim] + 2 * [self.n_kv_head * self.head_dim]
        self.qkv = nn.Linear(config.n_embd, sum(self.split), bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        attend: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=2)
        if past is not None:
            return self.with_cache(q, k, v, rope, past, attend)
        # Training and whole-prompt evaluation: the fused causal kernel. No dropout on the
        # attention weights: inside SDPA it costs ~40% of a CPU training step, and dropout on
        # the residual branches (Block) regularises as well here.
        q = q.view(batch, time, self.n_head, self.head_dim).transpose(1, 2)
        k, v = (t.view(batch, time, self.n_kv_head, self.head_dim).transpose(1, 2) for t in (k, v))
        if self.rotary:
            q, k = apply_rotary(q, rope.cos, rope.sin), apply_rotary(k, rope.cos, rope.sin)
        y = F.scaled_dot_product_attention(q, *self.share(k, v), is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        return self.proj(y), (k, v)

    def with_cache(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rope: Rope,
        past: tuple[torch.Tensor, torch.Tensor],
        attend: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The same attention over past + new keys, as ONNX's operators: rotary by each token's
        position, then attention that appends the new keys and values to the cache (the
        "present" it returns keeps n_kv_head heads: that is grouped-query attention's saving)."""
        if self.rotary:
            q = torch.onnx.ops.rotary_embedding(
                q, rope.cos, rope.sin, rope.positions, num_heads=self.n_head
            )
            k = torch.onnx.ops.rotary_embedding(
                k, rope.cos, rope.sin, rope.positions, num_heads=self.n_kv_head
            )
        y, present_k, present_v, _ = torch.onnx.ops.attention(
            q, k, v, attend, past[0], past[1],
            q_num_heads=self.n_head, kv_num_heads=self.n_kv_head, scale=self.head_dim**-0.5,
        )  # fmt: skip
        return self.proj(y), (present_k, present_v)

    def share(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grouped-query attention: each key/value head serves n_head / n_kv_head query heads."""
        if self.n_kv_head == self.n_head:
            return k, v
        group = self.n_head // self.n_kv_head
        return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


class SwiGLU(nn.Module):
    """MLP with a gated linear unit: silu(x W_gate) * (x W_up), then W_down."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=False)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GeluMLP(nn.Module):
    """GPT-2's MLP: widen, GELU, narrow back."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.down = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config)
        self.mlp = GeluMLP(config) if config.mlp == "gelu" else SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        attend: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, present = self.attn(self.attn_norm(x), rope, past, attend)
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
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
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
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def empty_cache(self, batch: int, device: torch.device | None = None) -> KVCache:
        """A cache with no positions yet: what the first call of a generation feeds in."""
        shape = (batch, self.config.kv_heads, 0, self.config.head_dim)
        return [(torch.zeros(shape, device=device),) * 2 for _ in range(self.config.n_layer)]

    def num_params(self) -> int:
        """Trainable parameters, counting a tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        past: KVCache | None = None,
        key_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, KVCache]:
        """Logits for every position of `idx` (batch, time).

        `targets` (same shape, -1 = ignore) gives the mean next-token cross-entropy.
        `past` continues from a KV cache; the returned cache covers past + idx.
        `key_mask` (batch, past + time; 1 = a token, 0 = padding) lets rows of different
        lengths share a batch, each padded on the left: a row's positions count its own
        tokens only, and no query attends to padding. The server's batched decoding uses it.
        """
        time = idx.shape[1]
        if key_mask is not None and past is None:
            past = self.empty_cache(idx.shape[0], idx.device)
        past_len = 0 if past is None else past[0][0].shape[2]
        if not torch.compiler.is_exporting() and past_len + time > self.config.block_size:
            raise ValueError(
                f"{past_len + time} positions exceed the model's context of "
                f"{self.config.block_size} tokens: shorten the input"
            )
        x = self.tok_emb(idx)
        attend = None
        if past is None:  # training: every row starts at position 0, the fused causal kernel
            rope = Rope(self.rope_cos[:time], self.rope_sin[:time])
            if self.config.positions == "learned":
                x = x + self.pos_emb.weight[:time]
        else:
            if key_mask is None:
                key_mask = torch.ones(idx.shape[0], past_len + time, device=idx.device)
            positions = (key_mask.long().cumsum(-1)[:, -time:] - 1).clamp(min=0)  # (batch, time)
            half = self.config.head_dim // 2
            rope = Rope(self.rope_cos[:, :half], self.rope_sin[:, :half], positions)
            if self.config.positions == "learned":
                x = x + self.pos_emb(positions)
            # Built once for every layer: query i sits at position past_len + i and sees every
            # key up to there, except padding. (batch, 1 head, time, keys)
            rows = torch.arange(time, device=idx.device).unsqueeze(1) + past_len
            cols = torch.arange(past_len + time, device=idx.device).unsqueeze(0)
            attend = (cols <= rows) & key_mask.bool()[:, None, None, :]
        present: KVCache = []
        for i, block in enumerate(self.blocks):
            x, layer_present = block(x, rope, None if past is None else past[i], attend)
            present.append(layer_present)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-1
            )
        return logits, loss, present

    def resize_vocab(self, vocab_size: int) -> None:
        """Grow the vocabulary to `vocab_size` (a pretrained model meeting bardlet's chat
        tokens): each new row of the embedding (and of an untied head) starts as the mean of
        the existing rows, a neutral guess that fine-tuning then moves."""
        old = self.config.vocab_size
        if vocab_size < old:
            raise ValueError(f"cannot shrink the vocabulary from {old} to {vocab_size}")
        with torch.no_grad():
            grown = nn.Embedding(vocab_size, self.config.n_embd)
            grown.weight[:old] = self.tok_emb.weight
            grown.weight[old:] = self.tok_emb.weight.mean(dim=0)
            self.tok_emb = grown
            head = nn.Linear(self.config.n_embd, vocab_size, bias=False)
            if self.config.tie_embeddings:
                head.weight = self.tok_emb.weight
            else:
                head.weight[:old] = self.lm_head.weight
                head.weight[old:] = self.lm_head.weight.mean(dim=0)
            self.lm_head = head
        self.config.vocab_size = vocab_size

    @classmethod
    def from_pretrained(cls, folder: str | Path, block_size: int | None = None) -> GPT:
        """A Hugging Face `GPT2LMHeadModel` or `LlamaForCausalLM` folder (config.json and
        safetensors, or pytorch_model.bin read with torch's weights-only loader, which never
        unpickles arbitrary objects) as a GPT with the same logits. `block_size` caps the
        context (a laptop need not train at the checkpoint's 2,048 or 8,192 positions)."""
        folder = Path(folder)
        config = config_from_hf(read_hf_config(folder), folder)
        if block_size is not None and block_size < config.block_size:
            config.block_size = block_size  # GPT-2 keeps its first block_size positions
        model = cls(config)
        rename = gpt2_names if config.positions == "learned" else llama_names
        try:
            ours = rename(config, read_hf_weights(folder))
        except KeyError as error:
            raise PretrainedError(f"{folder}: the weights lack {error}") from None
        if "pos_emb.weight" in ours:
            ours["pos_emb.weight"] = ours["pos_emb.weight"][: config.block_size]
        expected = model.state_dict()
        if config.tie_embeddings:
            ours.pop("lm_head.weight", None)  # the same tensor as the embedding
            expected.pop("lm_head.weight")
        missing = sorted(set(expected) - set(ours))
        if missing:
            raise PretrainedError(f"{folder}: the weights lack {', '.join(missing[:5])}")
        for name, tensor in ours.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise PretrainedError(
                    f"{folder}: {name} is {tuple(tensor.shape)}, the config says "
                    f"{tuple(expected[name].shape)}: config.json and the weights disagree"
                )
        model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False)
        return model


# ---------------------------------------------------------------- Hugging Face checkpoints


class PretrainedError(UserError, ValueError):
    """A Hugging Face folder bardlet cannot load; the message says why and what to do."""


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise PretrainedError(
            f"{folder} has no config.json: point at a Hugging Face model folder "
            "(save_pretrained's output, or a snapshot from huggingface_hub)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise PretrainedError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PretrainedError(f"{path} is not a JSON object")
    return data


def config_from_hf(hf: dict[str, Any], folder: Path) -> GPTConfig:
    """Our config from a transformers config.json (GPT-2 or Llama; anything else is refused)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise PretrainedError(f"{folder}: GPT-2 with {hf['activation_function']} activation")
        width = hf["n_embd"]
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=width, mlp_ratio=4.0, dropout=0.0,
            tie_embeddings=hf.get("tie_word_embeddings", True), norm="layernorm",
            positions="learned", mlp="gelu", bias=True, mlp_width=hf.get("n_inner") or 4 * width,
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )  # fmt: skip
    if kind == "llama":
        width, heads = hf["hidden_size"], hf["num_attention_heads"]
        rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
        problems = []
        if hf.get("head_dim", width // heads) != width // heads:
            problems.append(f"head_dim {hf['head_dim']} other than hidden_size / heads")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            problems.append(f"rope scaling {rope.get('rope_type', rope.get('type'))}")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            problems.append("biases on attention but not on the MLP (or the reverse)")
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"activation {hf['hidden_act']}")
        if problems:
            raise PretrainedError(f"{folder}: this Llama has {'; '.join(problems)}: unsupported")
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"], n_head=heads, n_embd=width,
            mlp_ratio=hf["intermediate_size"] / width, dropout=0.0,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            n_kv_head=hf.get("num_key_value_heads") or heads, bias=hf.get("attention_bias", False),
            mlp_width=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        )  # fmt: skip
    raise PretrainedError(
        f"{folder}: model_type {kind!r} is not supported: bardlet loads GPT-2 "
        "(GPT2LMHeadModel) and Llama (LlamaForCausalLM) checkpoints"
    )


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder: *.safetensors (one file or shards), else pytorch_model.bin
    through torch.load(weights_only=True): tensors and plain containers only, no code runs."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {k: v for f in files for k, v in load_file(f).items()}
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise PretrainedError(f"{folder} has no model.safetensors or pytorch_model.bin")
    weights: dict[str, torch.Tensor] = {}
    for path in bins:
        try:
            weights.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # noqa: BLE001 (the unpickler refuses anything but tensors)
            raise PretrainedError(
                f"{path} cannot be read safely ({str(error).splitlines()[0][:160]}): "
                "convert it to safetensors with a tool you trust"
            ) from None
    return weights


def gpt2_names(config: GPTConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPT-2's tensors under our names. GPT-2 stores its linear layers as Conv1D, (in, out):
    transposed to nn.Linear's (out, in). Its fused c_attn is our qkv, in the same row order."""
    theirs = {k.removeprefix("transformer."): v for k, v in theirs.items()}
    ours = {
        "tok_emb.weight": theirs["wte.weight"],
        "pos_emb.weight": theirs["wpe.weight"],
        "norm.weight": theirs["ln_f.weight"],
        "norm.bias": theirs["ln_f.bias"],
    }
    pairs = {"ln_1": "attn_norm", "ln_2": "mlp_norm", "attn.c_attn": "attn.qkv"}
    pairs |= {"attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}
    for i in range(config.n_layer):
        for hf_name, our_name in pairs.items():
            weight = theirs[f"h.{i}.{hf_name}.weight"]
            ours[f"blocks.{i}.{our_name}.weight"] = weight.t() if "ln_" not in hf_name else weight
            ours[f"blocks.{i}.{our_name}.bias"] = theirs[f"h.{i}.{hf_name}.bias"]
    if "lm_head.weight" in theirs:
        ours["lm_head.weight"] = theirs["lm_head.weight"]
    return ours


def llama_names(config: GPTConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Llama's tensors under our names: q, k and v stacked into our one qkv matrix. Hugging
    Face Llama rotates the two halves of each head, as we do: no row permutation."""
    ours = {"tok_emb.weight": theirs["model.embed_tokens.weight"]}
    ours["norm.weight"] = theirs["model.norm.weight"]
    for i in range(config.n_layer):
        layer, block = f"model.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias") if config.bias else ("weight",):
            qkv = [theirs[f"{layer}self_attn.{x}_proj.{kind}"] for x in "qkv"]
            ours[f"{block}attn.qkv.{kind}"] = torch.cat(qkv)
            ours[f"{block}attn.proj.{kind}"] = theirs[f"{layer}self_attn.o_proj.{kind}"]
            for name in ("gate", "up", "down"):
                ours[f"{block}mlp.{name}.{kind}"] = theirs[f"{layer}mlp.{name}_proj.{kind}"]
        ours[f"{block}attn_norm.weight"] = theirs[f"{layer}input_layernorm.weight"]
        ours[f"{block}mlp_norm.weight"] = theirs[f"{layer}post_attention_layernorm.weight"]
    if "lm_head.weight" in theirs:
        ours["lm_head.weight"] = theirs["lm_head.weight"]
    return ours
