"""Typed, validated parameters: every knob of `params.yaml`, one model per section.

Each stage reads its own section (`load_params().pretrain`, ...). Validation runs before any
work: an unknown key, a wrong type or an impossible value fails with a message that names the
key (`model.n_embd`) and what is allowed, instead of a crash twenty minutes into training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    # extra="forbid": a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceParams(Section):
    name: str
    path: str = Field(description="file path inside data/raw and inside a mirror")
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)


class DownloadParams(Section):
    sources: list[SourceParams]
    oasst1_full: bool = False  # the full OASST1 Parquet release instead of the mirrored slice


class PrepareParams(Section):
    shakespeare_val_fraction: float = Field(0.1, gt=0, lt=1)
    oasst_lang: str = "en"
    oasst_mode: Literal["best", "all"] = "best"
    oasst_val_percent: float = Field(10.0, gt=0, lt=100)


class TokenizerParams(Section):
    vocab_size: int = Field(4096, ge=262, le=65536)
    special_tokens: list[str] = [
        "<|bos|>",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
        "<|end|>",
        "<|pad|>",
    ]


class ShardParams(Section):
    rows_per_file: int = Field(50_000, gt=0)
    row_group_size: int = Field(1024, gt=0)


class ModelParams(Section):
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    block_size: int = Field(256, ge=8)
    mlp_ratio: float = Field(8 / 3, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    tie_embeddings: bool = True

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelParams:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd / n_head = {self.n_embd // self.n_head} must be even (rotary embeddings)"
            )
        return self


class TrainParams(Section):
    """Shared by `pretrain` and `sft`: the same loop trains both."""

    max_steps: int = Field(gt=0)
    batch_size: int = Field(gt=0)
    grad_accum: int = Field(1, gt=0)
    learning_rate: float = Field(gt=0)
    schedule: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of steps decaying")
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="evaluate and keep an exponential moving average; 0 = off"
    )
    eval_interval: int = Field(100, gt=0)
    eval_batches: int = Field(20, gt=0)
    log_interval: int = Field(10, gt=0)
    keep_best: bool = True
    checkpoint_interval: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    resume: Literal["auto", "never"] = "auto"
    seed: int = 1337
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")


class EvaluateParams(Section):
    eval_batches: int = Field(50, gt=0)
    prompts: list[str]
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(0.8, ge=0)
    top_k: int = Field(50, ge=0)
    seed: int = 1234
    rouge_conversations: int = Field(20, ge=0)


class ExportParams(Section):
    opset: int = Field(17, ge=17)
    parity_steps: int = Field(32, ge=1)
    parity_tolerance: float = Field(1e-4, gt=0)
    int8: bool = True
    int8_max_bpb_delta_percent: float = Field(2.0, gt=0)
    bpb_batches: int = Field(20, ge=1)


class StyleParams(Section):
    """A chat style preset: a system prompt plus sampling settings."""

    system: str | None = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)


class ChatParams(Section):
    styles: dict[str, StyleParams]

    @model_validator(mode="after")
    def _has_default(self) -> ChatParams:
        if "default" not in self.styles:
            raise ValueError("styles needs a 'default' preset: what a chat starts with")
        return self


class Params(Section):
    download: DownloadParams
    prepare: PrepareParams
    tokenizer: TokenizerParams
    shard: ShardParams
    model: ModelParams
    pretrain: TrainParams
    sft: TrainParams
    evaluate: EvaluateParams
    export: ExportParams
    chat: ChatParams


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names every bad key."""


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see README 'params.yaml')")
        elif e["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{source} is invalid:\n{_describe(error)}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (all sections, so one bad key anywhere stops every stage)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    return validate_params(raw, str(path))
