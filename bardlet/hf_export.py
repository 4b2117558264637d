"""Export a bardlet model as a Hugging Face folder that `transformers` loads as Llama.

bardlet's GPT is Llama-shaped on purpose, so the export is a renaming, not a conversion:

    config.json              LlamaConfig fields (sizes, RoPE base, norm epsilon, special ids)
    model.safetensors        our weights under Llama's names (the fused qkv split in three)
    tokenizer.json           our BPE for Hugging Face `tokenizers` (bardlet/tokenizer/hf.py)
    tokenizer_config.json    PreTrainedTokenizerFast, special tokens, chat template (Jinja)
    generation_config.json   stop tokens and the default sampling settings
    bpe.json                 bardlet's own tokenizer file, for bardlet's tools
    README.md                the model card (bardlet/model_card.py)

Then `AutoModelForCausalLM.from_pretrained(folder)` gives the same logits as bardlet, and
`AutoTokenizer.from_pretrained(folder)` the same token ids. Everything is written as JSON or
safetensors, and read the same way: nothing is ever unpickled.

A chat model fine-tuned with LoRA (models/chat holds an adapter) also exports as the pair
PEFT expects (`export_hf_adapter`): the base model as its own folder, and the adapter as a
PEFT LoRA folder (adapter_config.json, adapter_model.safetensors), so that
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)` gives the
logits of the merged folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bardlet.files import atomic_path, new_folder, write_text_atomic
from bardlet.model_card import render_model_card
from bardlet.tokenizer import Tokenizer
from bardlet.tokenizer.hf import to_hf_dict

if TYPE_CHECKING:
    import torch

    from bardlet.model import GPT
    from bardlet.training.lora import Adapter

# The Jinja version of bardlet/data/chat_template.py `render` (and, with
# add_generation_prompt, `render_prompt`):
#     <|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
# Each role marker is written as a literal, never built from the message's role, so that
# transformers' sanitize_control_tokens recognises every marker as the template's own.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>' }}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']"
    " + ' in a message; use system, user or assistant') }}"
    "{% endif %}"
    "{{ message['content'] }}{{ '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Sampling defaults for model.generate: those of the `default` chat style in params.yaml.
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 40, "top_p": 0.95}


def export_hf(
    model_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    metrics: Mapping[str, Any] | None = None,
    export_report: Mapping[str, Any] | None = None,
    name: str = "bardlet",
) -> Path:
    """Write the Hugging Face folder for the checkpoint in `model_dir` (models/chat, say) and
    the tokenizer in `tokenizer_dir` (its bpe.json) to `out_dir`; returns `out_dir`.

    `metrics` (reports/metrics.json) and `export_report` (reports/export.json) go into the
    model card; without them it says "not measured".
    """
    from bardlet.training import checkpoint

    model, info = checkpoint.load(model_dir)
    if "init" in info or not (tokenizer_dir / "bpe.json").is_file():
        raise ValueError(
            f"{model_dir} started from a pretrained model ({info.get('init', 'its own tokenizer')})"
            ": export-hf writes bardlet's own Llama-shaped models; a fine-tuned checkpoint of "
            "another design is not supported yet (its ONNX export in models/onnx is)"
        )
    tokenizer = Tokenizer.load(tokenizer_dir / "bpe.json")
    trained_with = info.get("tokenizer_hash")
    if trained_with is not None and trained_with != tokenizer.hash:
        raise ValueError(
            f"{tokenizer_dir} is not the tokenizer {model_dir} was trained with "
            "(its hash differs): pass the tokenizer folder of the same pipeline run"
        )
    if tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"{model.config.vocab_size}: they do not belong together"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_weights(llama_state_dict(model), out_dir / "model.safetensors")
    _write_json(out_dir / "config.json", llama_config(model, tokenizer))
    _write_json(out_dir / "generation_config.json", generation_config(tokenizer))
    _write_json(out_dir / "tokenizer.json", to_hf_dict(tokenizer))
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(tokenizer, model))
    tokenizer.save(out_dir / "bpe.json")
    card = render_model_card(
        model.config.to_dict(), model.num_params(), metrics, export_report, name=name
    )
    write_text_atomic(out_dir / "README.md", card)
    # A folder to publish: readable by all, whatever the umask or the writers' temp-file modes.
    for path in out_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)
    return out_dir


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face Llama's names.

    No RoPE permutation is needed: bardlet rotates the two halves of each head
    (`rotate_half`, with cos/sin tables of the same frequencies), exactly as Hugging Face
    Llama does. Checkpoints that rotate interleaved pairs (Meta's original Llama) must have
    their q/k rows permuted on conversion; ours must not.
    """
    config = model.config
    ours = model.state_dict()
    theirs = {"model.embed_tokens.weight": ours["tok_emb.weight"]}
    for i in range(config.n_layer):
        block, layer = f"blocks.{i}.", f"model.layers.{i}."
        # Our attention projects q, k and v with one fused matrix: rows [q; k; v].
        q, k, v = ours[block + "attn.qkv.weight"].split(config.n_embd, dim=0)
        theirs.update(
            {
                layer + "input_layernorm.weight": ours[block + "attn_norm.weight"],
                layer + "self_attn.q_proj.weight": q,
                layer + "self_attn.k_proj.weight": k,
                layer + "self_attn.v_proj.weight": v,
                layer + "self_attn.o_proj.weight": ours[block + "attn.proj.weight"],
                layer + "post_attention_layernorm.weight": ours[block + "mlp_norm.weight"],
                layer + "mlp.gate_proj.weight": ours[block + "mlp.gate.weight"],
                layer + "mlp.up_proj.weight": ours[block + "mlp.up.weight"],
                layer + "mlp.down_proj.weight": ours[block + "mlp.down.weight"],
            }
        )
    theirs["model.norm.weight"] = ours["norm.weight"]
    if not config.tie_embeddings:  # tied: transformers points lm_head at embed_tokens itself
        theirs["lm_head.weight"] = ours["lm_head.weight"]
    # safetensors refuses tensors that share memory (q, k, v are views of one matrix).
    return {key: value.detach().cpu().contiguous().clone() for key, value in theirs.items()}


# A bardlet LoRA target -> the Llama modules it becomes. Our attention's one fused qkv matrix
# is three in Llama, so its adapter becomes three: the same A (r x in) for each, and B's rows
# split into q, k and v blocks as llama_state_dict splits the weight (no row permutation).
PEFT_TARGETS = {
    "qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "proj": ("self_attn.o_proj",),
    "gate": ("mlp.gate_proj",),
    "up": ("mlp.up_proj",),
    "down": ("mlp.down_proj",),
}
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's file names
ADAPTER_CONFIG = "adapter_config.json"


def peft_state_dict(adapter: Adapter, n_layer: int, n_embd: int) -> dict[str, torch.Tensor]:
    """The adapter's A and B under the names PEFT saves for a LlamaForCausalLM:
    base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.weight, ..."""
    from bardlet.training.lora import TARGETS

    theirs = {}
    for i in range(n_layer):
        for target in adapter.settings.targets:
            ours = f"blocks.{i}.{TARGETS[target]}.{target}."
            a, b = adapter.tensors[ours + "lora_A"], adapter.tensors[ours + "lora_B"]
            rows = b.split(n_embd, dim=0) if target == "qkv" else (b,)
            for module, b_rows in zip(PEFT_TARGETS[target], rows, strict=True):
                layer = f"base_model.model.model.layers.{i}.{module}."
                theirs[layer + "lora_A.weight"] = a
                theirs[layer + "lora_B.weight"] = b_rows
    return {key: value.detach().cpu().contiguous().clone() for key, value in theirs.items()}


def peft_config(adapter: Adapter, base_model: str) -> dict[str, Any]:
    """adapter_config.json for PEFT's LoraConfig: the same rank, alpha (PEFT also scales by
    lora_alpha / r) and dropout, on the Llama modules our targets became."""
    modules = [m.rpartition(".")[2] for t in adapter.settings.targets for m in PEFT_TARGETS[t]]
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": adapter.settings.rank,
        "lora_alpha": adapter.settings.alpha,
        "lora_dropout": adapter.settings.dropout,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def export_hf_adapter(
    model_dir: Path, base_dir: Path, tokenizer_dir: Path, out_dir: Path
) -> tuple[Path, Path]:
    """For a LoRA chat model (`model_dir` holds an adapter): write the base model in
    `base_dir` as `<out_dir>-base` (a Hugging Face folder like export_hf's) and the adapter as
    the PEFT folder `<out_dir>-lora`; returns both. The base must be the one the adapter was
    trained on (its sha256 is in adapter_config.json)."""
    from bardlet.model import GPTConfig
    from bardlet.training import checkpoint, lora

    adapter = lora.read_adapter(model_dir)
    lora.check_base(adapter, base_dir, model_dir)
    config = GPTConfig(**checkpoint.read_info(base_dir)["model"])
    base_out = out_dir.with_name(f"{out_dir.name}-base")
    lora_out = out_dir.with_name(f"{out_dir.name}-lora")
    export_hf(base_dir, tokenizer_dir, base_out, name="bardlet-base")
    # Built whole beside the target, then swapped in: never a config without its weights.
    with new_folder(lora_out) as folder:
        _write_weights(
            peft_state_dict(adapter, config.n_layer, config.n_embd), folder / ADAPTER_WEIGHTS
        )
        _write_json(folder / ADAPTER_CONFIG, peft_config(adapter, str(base_out)))
        for path in folder.iterdir():
            path.chmod(0o644)
    return base_out, lora_out


def llama_config(model: GPT, tokenizer: Tokenizer) -> dict[str, Any]:
    """config.json for transformers' LlamaConfig."""
    config = model.config
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,  # plain multi-head attention, no grouping
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        # transformers 5 reads rope_parameters, older versions rope_theta: write both.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": tokenizer.special_id("<|bos|>"),
        "eos_token_id": tokenizer.special_id("<|end|>"),
        "pad_token_id": tokenizer.special_id("<|pad|>"),
        "use_cache": True,
        "torch_dtype": "float32",  # the name older versions read; transformers 5 reads dtype
        "dtype": "float32",
    }


def generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """Stop at <|end|> (the end of a turn) or <|bos|> (a new conversation), as bardlet does."""
    return {
        "bos_token_id": tokenizer.special_id("<|bos|>"),
        "eos_token_id": [tokenizer.special_id("<|end|>"), tokenizer.special_id("<|bos|>")],
        "pad_token_id": tokenizer.special_id("<|pad|>"),
        **SAMPLING,
    }


def tokenizer_config(tokenizer: Tokenizer, model: GPT) -> dict[str, Any]:
    """tokenizer_config.json: the class to load tokenizer.json with, the special tokens and
    the chat template. No token is added on its own: the chat template writes <|bos|>."""
    roles = ["<|system|>", "<|user|>", "<|assistant|>"]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "pad_token": "<|pad|>",
        "extra_special_tokens": roles,  # transformers 5's name
        "additional_special_tokens": roles,  # the name older versions read
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model.config.block_size,
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
    }


def _write_weights(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})  # transformers checks "format"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class PushError(RuntimeError):
    """Pushing to the Hub failed; the message says why and what to do."""


def push_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub as model repo `repo_id`
    ("USER/NAME"), creating the repo if needed; returns its URL.

    The token comes from HF_TOKEN or from `hf auth login`.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise PushError(f"{folder} is not an exported model folder: run `bardlet export-hf` first")
    token = get_token()
    if token is None:
        raise PushError(
            "not logged in to the Hugging Face Hub: run `hf auth login`, or set HF_TOKEN "
            "to a token with write access (https://huggingface.co/settings/tokens)"
        )
    api = HfApi(token=token)
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            commit_message="Upload a bardlet model",
        )
    except OfflineModeIsEnabled:
        raise PushError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded: unset it and try again"
        ) from None
    except HfHubHTTPError as error:
        response = getattr(error, "response", None)
        status = response.status_code if response is not None else None
        if status in (401, 403):
            raise PushError(
                f"the Hub refused the token ({status}): run `hf auth login` with a token that "
                f"may write to {repo_id}, or set HF_TOKEN to one"
            ) from None
        raise PushError(f"the Hub refused the upload: {error}") from None
    except Exception as error:  # the HTTP client's own connection errors, timeouts, ...
        raise PushError(
            f"could not reach the Hub at {constants.ENDPOINT} ({type(error).__name__}: {error}): "
            "check the network connection, a proxy, or HF_ENDPOINT"
        ) from None
    return str(repo)
