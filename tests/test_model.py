import pytest
import torch

from bardlet.model import GPT, GPTConfig


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    shape = dict(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, mlp_ratio=8 / 3)
    config = GPTConfig(**{**shape, "dropout": 0.0, "tie_embeddings": True, **overrides})
    return GPT(config).eval()


def test_kv_cache_matches_full_forward():
    model = tiny()
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        full, _, _ = model(ids)
        # Prompt of 7, then one token at a time, then a chunk of 5 with the cache.
        logits, _, past = model(ids[:, :7])
        pieces = [logits]
        for t in range(7, 15):
            logits, _, past = model(ids[:, t : t + 1], past=past)
            pieces.append(logits)
        logits, _, past = model(ids[:, 15:], past=past)
        pieces.append(logits)
    incremental = torch.cat(pieces, dim=1)
    assert torch.allclose(incremental, full, atol=1e-5, rtol=0), (incremental - full).abs().max()
    assert past[0][0].shape == (2, 2, 20, 16)


def test_causal_future_does_not_leak():
    model = tiny()
    ids = torch.randint(0, 97, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 97
    with torch.no_grad():
        a, _, _ = model(ids)
        b, _, _ = model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_tied_embeddings_and_param_count():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 97 * 32
    assert not any(name.endswith("bias") for name, _ in tied.named_parameters())


def test_loss_ignores_minus_one_targets():
    model = tiny()
    ids = torch.randint(0, 97, (1, 8))
    targets = torch.full((1, 8), -1)
    targets[0, 3] = 5
    with torch.no_grad():
        logits, loss, _ = model(ids, targets)
    expected = torch.nn.functional.cross_entropy(logits[0, 3:4], torch.tensor([5]))
    assert loss is not None and torch.allclose(loss, expected)


def test_input_longer_than_context_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match="exceed the model's context of 32"):
        model(torch.zeros((1, 33), dtype=torch.long))
