"""Loss and bits per byte of an exported graph, in numpy: how much does int8 cost?

The same measure as `bardlet.evaluation.measure` (which runs the PyTorch model), computed
from the ONNX graph's logits, so fp32 and int8 exports compare on the same batches:

    bits per byte = (sum of next-token losses in nats) / (UTF-8 bytes of those tokens) / ln 2
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bardlet.measures import summarize
from bardlet.runtime.session import cache_shape, open_session

Batch = tuple[np.ndarray, np.ndarray]  # (inputs, targets), (batch, time); targets -1 = skip


def token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Next-token cross-entropy in nats for every position whose target is not -1 (float64)."""
    flat = logits.reshape(-1, logits.shape[-1])
    wanted = targets.reshape(-1)
    rows = np.flatnonzero(wanted >= 0)
    picked = flat[rows].astype(np.float64)
    top = picked.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(picked - top).sum(axis=1)) + top[:, 0]
    losses: np.ndarray = log_z - picked[np.arange(len(rows)), wanted[rows]]
    return losses


def measure_onnx_bpb(
    onnx_path: str | Path,
    batches: Iterable[Batch],
    byte_lengths: np.ndarray,
    threads: int = 0,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Mean loss, perplexity and bits per byte of the graph at `onnx_path` over every target
    that is not -1, like `bardlet.evaluation.measure`. `byte_lengths[id]` = UTF-8 bytes of
    token `id` (0 for special tokens): `tokenizer.byte_lengths()`."""
    session, info = open_session(onnx_path, threads)
    config = info["model"]
    heads, head_dim = cache_shape(config)
    past_names = [i.name for i in session.get_inputs() if i.name.startswith("past.")]
    logits_only = [session.get_outputs()[0].name]
    nats, tokens, n_bytes = 0.0, 0, 0
    for i, (inputs, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        empty = np.zeros((inputs.shape[0], heads, 0, head_dim), dtype=np.float32)
        feeds = dict.fromkeys(past_names, empty)
        feeds["input_ids"] = np.asarray(inputs, dtype=np.int64)
        feeds["attention_mask"] = np.ones(inputs.shape, dtype=np.int64)
        (logits,) = session.run(logits_only, feeds)
        nats += float(token_losses(logits, np.asarray(targets)).sum())
        counted = targets[targets >= 0]
        tokens += len(counted)
        n_bytes += int(byte_lengths[counted].sum())
    return summarize(nats, tokens, n_bytes)
