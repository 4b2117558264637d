"""Loss, perplexity and bits per byte from summed losses: the one place these formulas live.

PyTorch evaluation (`bardlet.evaluation`) and ONNX evaluation (`bardlet.runtime.evaluate`)
both end here; this module imports nothing heavy, so neither side pulls in the other's
framework (training never loads onnxruntime, the runtime never loads torch).

    bits per byte = (sum of next-token losses in nats) / (UTF-8 bytes of those tokens) / ln 2
"""

from __future__ import annotations

import math


def summarize(nats: float, tokens: int, n_bytes: int) -> dict[str, float]:
    """Loss, perplexity and bits per byte from summed next-token losses (nats), the number of
    target tokens and the UTF-8 bytes they cover."""
    if tokens == 0:
        raise ValueError("no target tokens to evaluate: the validation split is empty")
    loss = nats / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "bpb": nats / max(n_bytes, 1) / math.log(2),
        "tokens": float(tokens),
    }
