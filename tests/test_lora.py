"""LoRA adapters (bardlet/training/lora.py) and the sft stage with `sft.lora.rank > 0`.

Real torch on a tiny GPT: adapters start as the base model, only they train, the merged model
computes what the adapters compute, the adapter round-trips through safetensors without
pickle, damaged adapter files fail naming the file and the fix, and the sft stage writes the
merged model with the adapter beside it, resumes bit for bit, and never resumes a LoRA
checkpoint as a full fine-tune.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from bardlet.config import LoraParams
from bardlet.data.chat_template import render
from bardlet.data.loaders import TokenWindows
from bardlet.data.shards import Row, write_split
from bardlet.files import sha256_file
from bardlet.model import GPT, GPTConfig
from bardlet.tokenizer import Tokenizer
from bardlet.training import checkpoint, lora
from bardlet.training.loop import make_optimizer, train
from tests.conftest import REPO, train_params

ALL = ["qkv", "proj", "gate", "up", "down"]


def tiny_gpt(seed: int = 0, vocab: int = 64, tied: bool = True) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(
        vocab_size=vocab,
        block_size=16,
        n_layer=2,
        n_head=2,
        n_embd=32,
        mlp_ratio=8 / 3,  # SwiGLU hidden width 96
        dropout=0.0,
        tie_embeddings=tied,
    )
    return GPT(config).eval()


def settings(rank: int = 4, targets: list[str] | None = None, dropout: float = 0.0) -> LoraParams:
    return LoraParams(rank=rank, alpha=8, dropout=dropout, targets=targets or ALL)


def randomise_b(model: GPT, seed: int = 1) -> None:
    """As if trained: B != 0, so the adapters change the model."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.adapted_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=generator))


TOKENS = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(9))


# --- the math ----------------------------------------------------------------------------


def test_adapters_start_as_the_base_model_and_draw_no_global_random_numbers() -> None:
    model = tiny_gpt()
    before = model(TOKENS)[0]
    rng = torch.get_rng_state()
    lora.add_adapters(model, settings(rank=4), seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # A comes from its own generator
    assert torch.equal(model(TOKENS)[0], before)  # B = 0: exactly the base model
    layers = lora.adapted_layers(model)
    assert list(layers) == [f"blocks.{i}.{m}" for i in range(2) for m in lora_modules(ALL)]
    # r * (in + out) per layer: qkv 32->96, proj 32->32, gate/up 32->96, down 96->32.
    per_block = 4 * ((32 + 96) + (32 + 32) + 2 * (32 + 96) + (96 + 32))
    assert lora.trainable_params(model) == 2 * per_block
    assert all(layer.lora_A.abs().sum() > 0 for layer in layers.values())
    # Same seed, same A; another seed, another A.
    again = lora.add_adapters(tiny_gpt(), settings(rank=4), seed=7)
    other = lora.add_adapters(tiny_gpt(), settings(rank=4), seed=8)
    a = layers["blocks.0.attn.qkv"].lora_A
    assert torch.equal(lora.adapted_layers(again)["blocks.0.attn.qkv"].lora_A, a)
    assert not torch.equal(lora.adapted_layers(other)["blocks.0.attn.qkv"].lora_A, a)


def lora_modules(targets: list[str]) -> list[str]:
    return [f"{lora.TARGETS[t]}.{t}" for t in targets]


def test_the_adapter_adds_scale_times_b_a_x() -> None:
    model = lora.add_adapters(tiny_gpt(), settings(rank=2, targets=["down"]), seed=0)
    randomise_b(model)
    layer = lora.adapted_layers(model)["blocks.1.mlp.down"]
    x = torch.randn(3, 96)
    expected = x @ layer.base.weight.T + (8 / 2) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)
    assert layer.scale == 4.0


@pytest.mark.parametrize("targets", [ALL, ["qkv"], ["gate", "down"]])
def test_the_merged_model_computes_what_the_adapters_compute(targets) -> None:
    model = lora.add_adapters(tiny_gpt(tied=False), settings(rank=8, targets=targets), seed=0)
    randomise_b(model)
    base_logits = tiny_gpt(tied=False)(TOKENS)[0]
    with torch.no_grad():
        adapted = model(TOKENS)[0]
        merged = lora.merge(model)
        merged_logits = merged(TOKENS)[0]
    assert (adapted - base_logits).abs().max() > 0.05  # the adapters do change the model
    torch.testing.assert_close(merged_logits, adapted, atol=1e-5, rtol=0)
    # A plain GPT: the keys of a model that never had adapters, every weight trainable.
    assert not lora.adapted_layers(merged)
    assert merged.state_dict().keys() == tiny_gpt(tied=False).state_dict().keys()
    assert all(p.requires_grad for p in merged.parameters())
    assert lora.adapted_layers(model)  # the adapter model itself is left as it was


# --- training ------------------------------------------------------------------------------


def test_only_the_adapters_get_gradients_and_optimizer_slots() -> None:
    model = lora.add_adapters(tiny_gpt(), settings(rank=4, dropout=0.1), seed=0)
    randomise_b(model)  # with B = 0 the gradient of A would be zero too
    model.train()
    _, loss, _ = model(TOKENS[:, :-1], TOKENS[:, 1:])
    assert loss is not None
    loss.backward()
    for name, param in model.named_parameters():
        is_adapter = name.endswith(("lora_A", "lora_B"))
        assert param.requires_grad == is_adapter, name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == is_adapter, name
    optimizer = make_optimizer(model, train_params(), torch.device("cpu"))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert in_optimizer == adapters
    decay, no_decay = optimizer.param_groups
    assert len(decay["params"]) == len(adapters) and not no_decay["params"]  # all matrices


def test_training_moves_the_adapters_and_never_the_base(small_tokenizer: Tokenizer) -> None:
    tokens = np.array(small_tokenizer.encode("To be, or not to be, that is the question. " * 40))
    base = tiny_gpt(vocab=small_tokenizer.vocab_size)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = lora.add_adapters(base, settings(rank=4, dropout=0.1), seed=0)
    data = TokenWindows(tokens.astype(np.uint16), 16, 4, seed=0)
    val = [data.batch(10_000)]
    params = train_params(
        max_steps=12,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=2,
        eval_interval=4,
        eval_batches=1,
        log_interval=4,
        ema_decay=0.9,  # the moving average and keep_best must keep the base as it was too
        keep_best=True,
    )
    lengths = np.array(small_tokenizer.byte_lengths())
    result = train(model, data, val, params, lengths, log=lambda _line: None)
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    state = model.state_dict()
    for name, value in frozen.items():
        key = name.replace(".weight", ".base.weight") if name not in state else name
        assert torch.equal(state[key], value), f"{name} changed"
    assert all(layer.lora_B.abs().sum() > 0 for layer in lora.adapted_layers(model).values())


# --- files ---------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[GPT, Path, Path]:
    """(the adapter model, models/base, models/chat as the sft stage writes it)."""
    base_dir, chat_dir = tmp_path / "base", tmp_path / "chat"
    checkpoint.save(tiny_gpt(), base_dir, {"tokenizer_hash": "h"})
    model = lora.add_adapters(tiny_gpt(), settings(rank=4, targets=["qkv", "up"]), seed=0)
    randomise_b(model)
    files = lora.adapter_files(
        model, settings(4, ["qkv", "up"]), sha256_file(base_dir / "model.safetensors")
    )
    checkpoint.save(lora.merge(model), chat_dir, {"tokenizer_hash": "h"}, files=files)
    return model, base_dir, chat_dir


def test_adapter_round_trip_through_safetensors_without_pickle(saved, monkeypatch) -> None:
    model, base_dir, chat_dir = saved

    def refuse(*_args, **_kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = lora.load(base_dir, chat_dir)
    with torch.no_grad():
        assert torch.equal(loaded(TOKENS)[0], model(TOKENS)[0])
    config = json.loads((chat_dir / lora.ADAPTER_CONFIG).read_text())
    assert config == {
        "format": lora.FORMAT,
        "rank": 4,
        "alpha": 8.0,
        "dropout": 0.0,
        "targets": ["qkv", "up"],
        "base_model_sha256": sha256_file(base_dir / "model.safetensors"),
    }
    tensors = load_file(str(chat_dir / lora.ADAPTER))
    assert tensors.keys() == lora.adapter_state(model).keys()
    assert tensors["blocks.1.attn.qkv.lora_B"].shape == (96, 4)
    # The folder still loads as the plain merged model (what evaluate and export read).
    merged, _ = checkpoint.load(chat_dir)
    torch.testing.assert_close(merged(TOKENS)[0], model(TOKENS)[0], atol=1e-5, rtol=0)
    # save_adapter writes the same files on its own.
    lora.save_adapter(
        model, base_dir.parent / "alone", settings(4, ["qkv", "up"]), config["base_model_sha256"]
    )
    for name in (lora.ADAPTER, lora.ADAPTER_CONFIG):
        assert (base_dir.parent / "alone" / name).read_bytes() == (chat_dir / name).read_bytes()


def edit_config(**changes):
    def edit(chat_dir: Path) -> None:
        path = chat_dir / lora.ADAPTER_CONFIG
        config = json.loads(path.read_text())
        config.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del config[key]
        path.write_text(json.dumps(config))

    return edit


def replace_tensor(key: str, value: torch.Tensor | None):
    def edit(chat_dir: Path) -> None:
        from safetensors.torch import save_file

        path = chat_dir / lora.ADAPTER
        tensors = load_file(str(path))
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
        save_file(tensors, str(path))

    return edit


BAD = {
    "config missing": (
        lambda d: (d / lora.ADAPTER_CONFIG).unlink(),
        lora.ADAPTER_CONFIG,
        "sft.lora.rank > 0",
    ),
    "weights missing": (lambda d: (d / lora.ADAPTER).unlink(), lora.ADAPTER, "sft.lora.rank > 0"),
    "config not JSON": (
        lambda d: (d / lora.ADAPTER_CONFIG).write_text("{rank: 4"),
        lora.ADAPTER_CONFIG,
        "not JSON",
    ),
    "another format": (
        edit_config(format="peft"),
        lora.ADAPTER_CONFIG,
        "expected 'bardlet-lora-1'",
    ),
    "rank 0": (edit_config(rank=0), lora.ADAPTER_CONFIG, "rank 0"),
    "rank not a number": (edit_config(rank="four"), lora.ADAPTER_CONFIG, "rank: Input should be"),
    "unknown target": (edit_config(targets=["lm_head"]), lora.ADAPTER_CONFIG, "targets.0"),
    "no alpha": (edit_config(alpha=None), lora.ADAPTER_CONFIG, "alpha: Field required"),
    "no base hash": (edit_config(base_model_sha256=None), lora.ADAPTER_CONFIG, "base_model_sha256"),
    "weights cut short": (
        lambda d: (d / lora.ADAPTER).write_bytes((d / lora.ADAPTER).read_bytes()[:100]),
        lora.ADAPTER,
        "not a usable LoRA adapter",
    ),
    "a tensor missing": (
        replace_tensor("blocks.0.mlp.up.lora_A", None),
        lora.ADAPTER,
        "missing ['blocks.0.mlp.up.lora_A']",
    ),
    "a wrong shape": (
        replace_tensor("blocks.0.mlp.up.lora_B", torch.zeros(32, 4)),
        lora.ADAPTER,
        "is (32, 4), this model needs (96, 4)",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_adapter_files_name_the_file_and_the_fix(saved, case) -> None:
    _, base_dir, chat_dir = saved
    damage, file_name, message = BAD[case]
    damage(chat_dir)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        lora.load(base_dir, chat_dir)
    text = str(error.value)
    assert str(chat_dir / file_name) in text and message in text, text
    if not isinstance(error.value, FileNotFoundError):
        assert "dvc checkout" in text and "dvc repro --force sft" in text, text


def test_an_adapter_refuses_another_base_model(saved) -> None:
    _, base_dir, chat_dir = saved
    checkpoint.save(tiny_gpt(seed=5), base_dir, {"tokenizer_hash": "h"})
    with pytest.raises(ValueError, match="was trained on the base model") as error:
        lora.load(base_dir, chat_dir)
    assert str(base_dir / "model.safetensors") in str(error.value)


# --- the sft stage ---------------------------------------------------------------------------

CONVERSATIONS = [
    [
        {"role": "user", "content": f"What is {a} and {b}?"},
        {"role": "assistant", "content": f"{a} and {b} make {a + b}, good sir."},
    ]
    for a in range(12)
    for b in range(3)
]


@pytest.fixture
def project(tmp_path: Path, small_tokenizer: Tokenizer, monkeypatch) -> Path:
    """The sft stage's inputs in a temporary folder (the stage works in the current one):
    tokenizer, a tiny base model, chat shards, and params.yaml with a tiny sft section."""
    tok = small_tokenizer
    tok.save(tmp_path / "models/tokenizer/bpe.json")
    base = tiny_gpt(vocab=tok.vocab_size)
    checkpoint.save(base, tmp_path / "models/base", {"tokenizer_hash": tok.hash})
    rows = [Row(f"t/{i}", *render(tok, c)) for i, c in enumerate(CONVERSATIONS)]
    for split, part in (("train", rows[:30]), ("val", rows[30:])):
        write_split(part, tmp_path / "data/shards/sft" / split, tok.hash, tok.vocab_size)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sft"].update(
        max_steps=6,
        batch_size=2,
        warmup_steps=1,
        eval_interval=3,
        eval_batches=2,
        log_interval=3,
        checkpoint_interval=2,
        keep_checkpoints=5,
        learning_rate=1e-2,
        threads=1,
    )
    params["sft"]["lora"].update(rank=4, dropout=0.1, targets=["qkv", "down"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_sft(project: Path, capsys, **lora_settings) -> str:
    from stages import sft

    if lora_settings:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["sft"]["lora"].update(lora_settings)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sft.main()
    return capsys.readouterr().out


def test_sft_stage_with_lora_writes_merged_model_and_adapter_and_resumes(project, capsys) -> None:
    base_before = sha256_file(project / "models/base/model.safetensors")
    out = run_sft(project, capsys)
    chat = project / "models/chat"
    assert {"model.safetensors", "config.json", lora.ADAPTER, lora.ADAPTER_CONFIG} <= {
        p.name for p in chat.iterdir()
    }
    assert (
        "LoRA rank 4 on qkv, down" in out
        and f"adapter: {Path('models/chat') / lora.ADAPTER}" in out
    )
    assert sha256_file(project / "models/base/model.safetensors") == base_before
    info = json.loads((chat / "config.json").read_text())
    assert info["lora"]["rank"] == 4 and info["base_model"] == base_before
    report = json.loads((project / "reports/sft.json").read_text())
    assert report["trainable_params"] == 2 * 4 * ((32 + 96) + (96 + 32))
    assert report["adapter_bytes"] == (chat / lora.ADAPTER).stat().st_size
    # The merged weights are the adapter on the base; the adapter was trained (B != 0).
    merged, _ = checkpoint.load(chat)
    adapted = lora.load(project / "models/base", chat)
    tokens = TOKENS % merged.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(merged(tokens)[0], adapted(tokens)[0], atol=1e-5, rtol=0)
    assert all(layer.lora_B.abs().sum() > 0 for layer in lora.adapted_layers(adapted).values())

    # Resume: drop the last checkpoint (as if killed after step 4), run again, same bytes.
    first = {name: (chat / name).read_bytes() for name in ("model.safetensors", lora.ADAPTER)}
    checkpoints = checkpoint.checkpoints(project / "checkpoints/sft")
    assert [p.name for p in checkpoints] == ["step-000002", "step-000004", "step-000006"]
    shutil.rmtree(checkpoints[-1])
    out = run_sft(project, capsys)
    assert "resuming from checkpoints/sft/step-000004 (step 4)" in out
    for name, data in first.items():
        assert (chat / name).read_bytes() == data, name

    # Full fine-tuning never resumes the LoRA run's checkpoints, and leaves no adapter behind.
    out = run_sft(project, capsys, rank=0)
    assert "starting afresh" in out and "resuming" not in out
    assert not (chat / lora.ADAPTER).exists() and not (chat / lora.ADAPTER_CONFIG).exists()
    assert "lora" not in json.loads((chat / "config.json").read_text())
    # ... and a LoRA run never resumes the full fine-tune's.
    out = run_sft(project, capsys, rank=2)
    assert "starting afresh" in out and "resuming" not in out
