"""Choosing the next token from logits, in numpy; and the settings that say how.

The steps, in the order they apply (each is off at its default, so `Sampling()` draws from
the model's own distribution):

1. repetition penalty (CTRL, Keskar et al. 2019): every token id already in `previous`
   (the prompt and the reply so far) gets its logit divided by the penalty if positive,
   multiplied by it if negative. Applies to greedy decoding too.
2. temperature 0: greedy, the most likely token. Otherwise logits / temperature, then
3. top-k: keep the k most likely tokens,
4. top-p (nucleus): keep the smallest set of tokens whose probability reaches p,
5. min-p: drop tokens less likely than min_p x the probability of the most likely token,
6. draw one token from what is left with the seeded generator.

The settings are `Sampling`, and a `Style` is a named preset: a system prompt plus sampling
settings. Both are typed parameters, defined in bardlet/config.py beside the rest: a style's
values live in params.yaml (`chat.styles`), travel beside the exported model as styles.json,
and reach the terminal chat, the server and the page as this one type, checked by type and
range on the way in (a styles.json or a saved chat with `"temperature": "hot"` is refused).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bardlet.config import MAX_STOP, Sampling, Style

__all__ = ["MAX_STOP", "Sampling", "Style", "penalize", "sample"]


def penalize(
    logits: np.ndarray, previous: Sequence[int] | np.ndarray, penalty: float
) -> np.ndarray:
    """A copy of `logits` (vocab,) with every id in `previous` made less likely by `penalty`."""
    out = logits.astype(np.float64, copy=True)
    if penalty == 1.0 or len(previous) == 0:
        return out
    seen = np.unique(np.asarray(previous, dtype=np.int64))
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def sample(
    logits: np.ndarray,
    settings: Sampling,
    rng: np.random.Generator,
    previous: Sequence[int] | np.ndarray = (),
) -> int:
    """One token id from a (vocab,) vector of logits; `previous` feeds the repetition penalty."""
    if settings.repetition_penalty != 1.0:
        logits = penalize(logits, previous, settings.repetition_penalty)
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
    if settings.min_p > 0.0:
        probs = np.where(probs >= settings.min_p * probs.max(), probs, 0.0)
        probs /= probs.sum()
    return int(rng.choice(len(probs), p=probs))
