"""LoRA: fine-tune a few small matrices instead of every weight.

A linear layer computes y = W x. LoRA (Hu et al., 2021) freezes W and learns a low-rank change:

    y = W x + (alpha / r) * B A dropout(x)      A: r x in,  B: out x r,  r much smaller

A starts random (kaiming-uniform, as PEFT does) and B at zero, so B A = 0: training starts from
the base model exactly. Only A and B train. Everything else stays frozen: W, the embedding
(and the output head tied to it) and the RMSNorm gains; PEFT's default does the same (no
bias, no modules_to_save). After training the change folds into the weight:

    W' = W + (alpha / r) * B A

`merge` does that and returns a plain GPT with no LoRA modules left, so evaluation, ONNX
export, chat and serving see an ordinary model and pay nothing at inference. The adapter
alone (A and B of every adapted layer) is small; it is saved as safetensors with
adapter_config.json beside it (rank, alpha, dropout, targets, and the sha256 of the base
weights it was trained on), and loaded back without unpickling anything.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from bardlet.config import LoraParams
from bardlet.files import sha256_file, write_bytes_atomic
from bardlet.model import GPT
from bardlet.training import checkpoint

ADAPTER = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "bardlet-lora-1"  # written into adapter_config.json; a reader checks it

# params.yaml's target names -> the module that owns that linear layer in bardlet/model.py.
TARGETS = {"qkv": "attn", "proj": "attn", "gate": "mlp", "up": "mlp", "down": "mlp"}


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus the trainable low-rank path (alpha / r) * B A dropout(x)."""

    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        a = torch.empty(rank, base.in_features)
        # PEFT's init: A like an nn.Linear's weight (kaiming-uniform, a=sqrt(5)), B zero.
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        weight = base.weight
        self.lora_A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank).to(weight))
        # nn.Identity when off: no random numbers drawn, the step costs nothing extra.
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta(self) -> torch.Tensor:
        """(alpha / r) * B A: what the adapter adds to the base weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x -> A (down to r numbers) -> B (back up): never builds the out x in matrix.
        low_rank = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scale * low_rank


def add_adapters(model: GPT, settings: LoraParams, seed: int) -> GPT:
    """Freeze every weight of `model`, then put a LoRA adapter on each linear layer named in
    settings.targets in every block (in place; returns `model`). A is drawn from its own
    generator seeded with `seed`: the global random stream stays as it was."""
    if settings.rank < 1:
        raise ValueError("LoRA rank must be at least 1 (rank 0 means: no adapters)")
    if adapted_layers(model):
        raise ValueError("the model already has LoRA adapters")
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for block in model.blocks:
        for target in settings.targets:
            owner = getattr(block, TARGETS[target])
            base = getattr(owner, target)
            adapter = LoRALinear(base, settings.rank, settings.alpha, settings.dropout, generator)
            setattr(owner, target, adapter)
    return model


def adapted_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapters by module name ("blocks.0.attn.qkv", ...), in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def trainable_params(model: nn.Module) -> int:
    """Parameters the optimizer updates (a tied matrix counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge(model: GPT) -> GPT:
    """A copy of `model` with every adapter folded into its weight, W' = W + (alpha / r) B A:
    a plain GPT (no LoRA modules), trainable as any loaded model. `model` is left as it is."""
    merged = copy.deepcopy(model)
    for name, adapter in adapted_layers(merged).items():
        owner_name, _, attribute = name.rpartition(".")
        with torch.no_grad():
            adapter.base.weight += adapter.delta()
        setattr(merged.get_submodule(owner_name), attribute, adapter.base)
    for param in merged.parameters():
        param.requires_grad_(True)
    return merged


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors: "<layer>.lora_A" (r x in) and "<layer>.lora_B" (out x r)."""
    tensors = {}
    for name, adapter in adapted_layers(model).items():
        tensors[f"{name}.lora_A"] = adapter.lora_A.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = adapter.lora_B.detach().cpu().contiguous()
    return tensors


@dataclass(frozen=True)
class Adapter:
    """An adapter as read from disk: its settings, the base weights' sha256, its tensors."""

    settings: LoraParams
    base_sha256: str
    tensors: dict[str, torch.Tensor]

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


def adapter_files(model: GPT, settings: LoraParams, base_sha256: str) -> dict[str, bytes]:
    """{adapter.safetensors: A and B, adapter_config.json: settings and base hash}: the
    bytes to put beside a model (the sft stage writes them into models/chat with the rest)."""
    config = {"format": FORMAT, **settings.model_dump(), "base_model_sha256": base_sha256}
    return {
        ADAPTER: save_safetensors(adapter_state(model), metadata={"format": "pt"}),
        ADAPTER_CONFIG: (json.dumps(config, indent=2) + "\n").encode("utf-8"),
    }


def save_adapter(model: GPT, folder: Path, settings: LoraParams, base_sha256: str) -> None:
    """Write adapter.safetensors and adapter_config.json into `folder`, each atomically."""
    for name, data in adapter_files(model, settings, base_sha256).items():
        write_bytes_atomic(folder / name, data)


def has_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).exists()


def _damaged(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"{path} is not a usable LoRA adapter ({reason}): restore it with "
        f"`dvc checkout {path.parent}`, or train it again with `dvc repro --force sft` "
        "(sft.lora.rank > 0)"
    )


def read_adapter(folder: Path) -> Adapter:
    """Read and check the adapter in `folder`; errors name the file, what is wrong, and the
    fix. Only JSON and raw tensors are parsed: nothing is unpickled."""
    config_path, weights_path = folder / ADAPTER_CONFIG, folder / ADAPTER
    for path in (config_path, weights_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: {folder} holds no LoRA adapter (the sft stage writes one "
                "when params.yaml sets sft.lora.rank > 0)"
            )
    try:
        config: Any = json.loads(config_path.read_bytes())
    except ValueError as error:
        raise _damaged(config_path, f"not JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise _damaged(config_path, f"format {found!r}, expected {FORMAT!r}")
    try:
        fields = {key: config[key] for key in LoraParams.model_fields if key in config}
        settings = LoraParams.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise _damaged(config_path, f"{where}: {first['msg']}") from None
    base_sha256 = config.get("base_model_sha256")
    if not isinstance(base_sha256, str):
        raise _damaged(config_path, "no base_model_sha256")
    if settings.rank < 1:
        raise _damaged(config_path, "rank 0: there is no adapter at rank 0")
    try:
        tensors = load_safetensors(weights_path.read_bytes())
    except (SafetensorError, ValueError, OSError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise _damaged(weights_path, reason) from None
    return Adapter(settings, base_sha256, tensors)


def apply_adapter(model: GPT, adapter: Adapter, source: Path) -> GPT:
    """Add adapters as `adapter.settings` says and load its tensors into them (in place).
    Every tensor must be there with the shape the model needs, and nothing else: `source`
    (the adapter's file) is named in the error otherwise."""
    add_adapters(model, adapter.settings, seed=0)  # A is overwritten by the saved one
    expected = adapter_state(model)
    missing = sorted(expected.keys() - adapter.tensors.keys())
    extra = sorted(adapter.tensors.keys() - expected.keys())
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise _damaged(source, f"its tensors do not fit this model's layers: {what}")
    for key, tensor in adapter.tensors.items():
        if tensor.shape != expected[key].shape:
            raise _damaged(
                source,
                f"{key} is {tuple(tensor.shape)}, this model needs {tuple(expected[key].shape)}",
            )
    layers = adapted_layers(model)
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.copy_(adapter.tensors[f"{name}.lora_A"])
            layer.lora_B.copy_(adapter.tensors[f"{name}.lora_B"])
    return model


def check_base(adapter: Adapter, base_dir: Path, adapter_dir: Path) -> None:
    """Refuse a base model other than the one the adapter was trained on."""
    found = sha256_file(base_dir / checkpoint.WEIGHTS)
    if found != adapter.base_sha256:
        raise ValueError(
            f"{adapter_dir / ADAPTER} was trained on the base model with sha256 "
            f"{adapter.base_sha256[:12]}..., but {base_dir / checkpoint.WEIGHTS} has "
            f"{found[:12]}...: pass that base model (`dvc checkout {base_dir}` restores the "
            "pipeline's), or train the adapter again on this one (`dvc repro sft`)"
        )


def load(base_dir: Path, adapter_dir: Path, device: str | torch.device = "cpu") -> GPT:
    """The base model in `base_dir` (models/base) with the adapter in `adapter_dir`
    (models/chat) on it, in eval mode; the base must be the one the adapter was made for."""
    adapter = read_adapter(adapter_dir)
    check_base(adapter, base_dir, adapter_dir)
    model, _ = checkpoint.load(base_dir, device)
    return apply_adapter(model, adapter, adapter_dir / ADAPTER).eval()
