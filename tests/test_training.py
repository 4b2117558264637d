import numpy as np
import torch

from bardlet.config import TrainParams
from bardlet.data.loaders import TokenWindows
from bardlet.evaluation import measure, rouge_l
from bardlet.model import GPT, GPTConfig
from bardlet.training import checkpoint
from bardlet.training.loop import learning_rate, make_optimizer, train
from tests.conftest import train_params


def params(**overrides) -> TrainParams:
    base = dict(
        max_steps=30,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=5,
        eval_interval=15,
        eval_batches=2,
        log_interval=10,
    )
    return train_params(**{**base, **overrides})


def test_schedule_warms_up_then_decays_to_floor():
    p = params(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [learning_rate(s, p) for s in range(101)]
    assert lrs[0] < lrs[5] < lrs[9] == p.learning_rate
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert abs(lrs[100] - 0.1 * p.learning_rate) < 1e-12


def test_training_lowers_loss_and_checkpoint_round_trips(tmp_path, small_tokenizer, shakespeare):
    tok = small_tokenizer
    tokens = np.array(tok.encode(shakespeare[:30_000]), dtype=np.uint16)
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=tok.vocab_size,
            block_size=32,
            n_layer=2,
            n_head=2,
            n_embd=32,
            mlp_ratio=8 / 3,
            dropout=0.0,
            tie_embeddings=True,
        )
    )
    data = TokenWindows(tokens, 32, 8, seed=0)
    val = [data.batch(10_000 + i) for i in range(2)]
    lengths = np.array(tok.byte_lengths())
    before = measure(model, val, lengths)
    result = train(model, data, val, params(), lengths, log=lambda _: None)
    after = measure(model, val, lengths)
    assert after["loss"] < before["loss"] - 0.5
    assert [row["step"] for row in result.history] == [15.0, 30.0]
    assert result.final["val_loss"] == result.history[-1]["val_loss"]

    checkpoint.save(model, tmp_path, {"run_id": "r1"})
    loaded, info = checkpoint.load(tmp_path)
    assert info["run_id"] == "r1"
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    assert measure(loaded, val, lengths)["loss"] == after["loss"]


def test_bits_per_byte_definition(small_tokenizer):
    """bpb = nats / bytes / ln 2, with bytes counted from the target tokens."""
    tok = small_tokenizer
    model = GPT(
        GPTConfig(
            vocab_size=tok.vocab_size,
            block_size=32,
            n_layer=1,
            n_head=1,
            n_embd=8,
            mlp_ratio=8 / 3,
            dropout=0.0,
            tie_embeddings=True,
        )
    )
    ids = np.array([tok.encode("To be, or not to be: that is")], dtype=np.int64)
    x, y = ids[:, :-1], ids[:, 1:]
    lengths = np.array(tok.byte_lengths())
    metrics = measure(model, [(x, y)], lengths)
    n_bytes = len(tok.decode(y[0].tolist()).encode())
    assert abs(metrics["bpb"] - metrics["loss"] * y.size / n_bytes / np.log(2)) < 1e-9
    assert lengths[tok.special_id("<|bos|>")] == 0


def test_rouge_l():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("", "x") == 0.0
    # LCS "the sat" = 2; precision 2/3, recall 2/4.
    assert (
        abs(rouge_l("the cat sat", "the dog has sat") - 2 * (2 / 3 * 0.5) / (2 / 3 + 0.5)) < 1e-12
    )


def test_optimizer_takes_every_weight_of_a_plain_model_in_model_order():
    """Full fine-tuning and pretraining: every parameter, in order, matrices decayed (the
    LoRA filter on requires_grad leaves this path exactly as it was)."""
    model = GPT(
        GPTConfig(
            vocab_size=64,
            block_size=16,
            n_layer=2,
            n_head=2,
            n_embd=32,
            mlp_ratio=8 / 3,
            dropout=0.0,
            tie_embeddings=True,
        )
    )
    p = params(weight_decay=0.3)
    decay, no_decay = make_optimizer(model, p, torch.device("cpu")).param_groups
    everything = list(model.parameters())
    assert decay["params"] == [w for w in everything if w.dim() >= 2]
    assert no_decay["params"] == [w for w in everything if w.dim() < 2]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.3, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(everything)
