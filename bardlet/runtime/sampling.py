"""Choosing the next token from logits, in numpy: greedy, temperature, top-k, top-p."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sampling:
    temperature: float = 0.8  # 0 = greedy (always the most likely token)
    top_k: int = 50  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1 = all)
    seed: int | None = None


def sample(logits: np.ndarray, settings: Sampling, rng: np.random.Generator) -> int:
    """One token id from a (vocab,) vector of logits."""
    if settings.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / settings.temperature
    if 0 < settings.top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -settings.top_k)[-settings.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if settings.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep tokens until the cumulative probability first reaches top_p (at least one).
        keep = order[: int(np.searchsorted(cumulative, settings.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(len(probs), p=probs))
