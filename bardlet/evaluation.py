"""Honest metrics of a PyTorch model: loss, perplexity and bits per byte; and ROUGE-L.

Bits per byte = (sum of next-token losses in nats) / (UTF-8 bytes those tokens cover) / ln 2.
Dividing by bytes instead of tokens makes the number independent of the tokenizer, so a
4,096-token BPE model compares directly with a character model (nanoGPT's 1.47 nats/char on
Shakespeare is 2.12 bits per byte).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from bardlet.data.loaders import Batch
from bardlet.measures import summarize
from bardlet.model import GPT


@torch.no_grad()
def measure(
    model: GPT,
    batches: Iterable[Batch],
    byte_lengths: np.ndarray,
    device: torch.device | str = "cpu",
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean loss, perplexity and bits per byte over every target that is not -1."""
    was_training = model.training
    model.eval()
    nats, tokens, n_bytes = 0.0, 0, 0
    for i, (inputs, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = torch.from_numpy(inputs).to(device)
        y = torch.from_numpy(targets).to(device)
        logits, _, _ = model(x)
        losses = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            y.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
        nats += float(losses)
        counted = targets[targets >= 0]
        tokens += len(counted)
        n_bytes += int(byte_lengths[counted].sum())
    model.train(was_training)
    return summarize(nats, tokens, n_bytes)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace words: longest common subsequence, precision and recall."""
    a, b = candidate.split(), reference.split()
    if not a or not b:
        return 0.0
    # Classic dynamic programme, one row at a time.
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)
