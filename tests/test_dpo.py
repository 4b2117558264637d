"""Preference pairs and DPO: OASST1 rankings to pairs, your JSONL pairs, the loss, training."""

import json
import math

import pytest
import torch

from bardlet.config import DpoParams
from bardlet.data.chats import read_pairs
from bardlet.data.corpus import DataFileError
from bardlet.data.oasst import preference_pairs
from bardlet.model import GPT, GPTConfig
from bardlet.training.dpo import (
    dpo_loss,
    encode_pair,
    preference_metrics,
    reply_logps,
    train_dpo,
)


def message(mid, parent, role, text, rank=None, tree="t1"):
    return {"message_id": mid, "parent_id": parent, "message_tree_id": tree, "role": role,
            "text": text, "rank": rank}  # fmt: skip


def test_oasst_rankings_become_best_against_worst_pairs():
    messages = [
        message("q", None, "prompter", "Why is the sky blue?"),
        message("a0", "q", "assistant", "Rayleigh scattering.", rank=0),
        message("a1", "q", "assistant", "Because.", rank=1),
        message("a2", "q", "assistant", "It is not.", rank=2),
        message("f", "a0", "prompter", "Tell me more."),
        message("b0", "f", "assistant", "Short waves scatter more.", rank=0),
        message("bx", "f", "assistant", "Unranked."),  # one ranked reply: no pair here
        message("r", None, "prompter", "Hi", tree="t2"),
        message("r0", "r", "assistant", "Hello!", rank=0),
        message("r1", "r", "assistant", "Hello!", rank=1),  # the same text: nothing to prefer
    ]
    (pair,) = preference_pairs(messages)
    assert pair["prompt"] == [{"role": "user", "content": "Why is the sky blue?"}]
    assert (pair["chosen"], pair["rejected"]) == ("Rayleigh scattering.", "It is not.")
    assert (pair["id"], pair["tree"]) == ("q", "t1")


def write(tmp_path, *records):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


PROMPT = [{"role": "user", "content": "Say hi"}]


def test_your_pairs_file_reads_and_bad_lines_are_named(tmp_path):
    good = {"prompt": PROMPT, "chosen": "Hi!", "rejected": "No."}
    (pair,) = read_pairs(write(tmp_path, good))
    assert pair["prompt"] == PROMPT and pair["chosen"] == "Hi!" and pair["id"] == "prefs.jsonl#1"
    bad = [
        ({**good, "chosen": "No."}, "line 2: chosen and rejected are the same text"),
        ({**good, "rejected": ""}, 'line 2: expected {"prompt"'),
        (
            {**good, "prompt": [*PROMPT, {"role": "assistant", "content": "x"}]},
            "ends with the user",
        ),
    ]
    for record, message_text in bad:
        with pytest.raises(DataFileError, match=message_text.replace("{", r"\{")):
            list(read_pairs(write(tmp_path, good, record)))


def tiny(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=32,
                       mlp_ratio=2.0, dropout=0.0, tie_embeddings=True)  # fmt: skip
    return GPT(config)


def pairs(tokenizer, count=16):
    """A learnable preference: the chosen reply always starts the same way."""
    out = []
    for i in range(count):
        pair = {"prompt": [{"role": "user", "content": f"question {i}"}],
                "chosen": "Yes, gladly.", "rejected": f"no {i % 3}"}  # fmt: skip
        out.append(encode_pair(tokenizer, pair, 48))
    return out


def test_the_loss_is_log_2_while_the_policy_is_the_reference(small_tokenizer):
    model, cpu = tiny(small_tokenizer.vocab_size), torch.device("cpu")
    data = pairs(small_tokenizer, 4)
    chosen = reply_logps(model, [c for c, _ in data], cpu)
    rejected = reply_logps(model, [r for _, r in data], cpu)
    loss, margin = dpo_loss((chosen, rejected), (chosen, rejected), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and torch.all(margin == 0)
    metrics = preference_metrics(
        model, tiny(small_tokenizer.vocab_size), data, 0.1, cpu
    )  # the same weights (seed 0)
    assert metrics["accuracy"] == 0.5 and metrics["margin"] == 0.0


def test_only_the_reply_tokens_count(small_tokenizer):
    ((chosen, _),) = [
        encode_pair(small_tokenizer, {"prompt": PROMPT, "chosen": "ab", "rejected": "c"}, 48)
    ]
    ids, mask = chosen
    prompt_length = mask.index(True)
    assert not any(mask[:prompt_length]) and all(mask[prompt_length:])
    assert ids[-1] == small_tokenizer.special_id("<|end|>")
    long = {"prompt": [{"role": "user", "content": "word " * 200}], "chosen": "a", "rejected": "b"}
    assert encode_pair(small_tokenizer, long, 48) is None  # no room left for a reply


def test_training_falls_below_log_2_and_prefers_the_chosen(small_tokenizer):
    data = pairs(small_tokenizer)
    model, reference = tiny(small_tokenizer.vocab_size), tiny(small_tokenizer.vocab_size)
    params = DpoParams(enabled=True, beta=0.5, max_steps=30, batch_size=4, learning_rate=3e-3,
                       warmup_steps=2, weight_decay=0.0, grad_clip=1.0, log_interval=10, seed=1)  # fmt: skip
    train_dpo(model, reference, data, params, log=lambda _line: None)
    after = preference_metrics(model, reference, data, 0.5, torch.device("cpu"))
    assert after["loss"] < math.log(2) - 0.1
    assert after["accuracy"] == 1.0 and after["margin"] > 0
    # the reference did not move
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            reference.parameters(), tiny(small_tokenizer.vocab_size).parameters(), strict=True
        )
    )
