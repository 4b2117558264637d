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
    # Top-k first (ties with the k-th kept), so what follows works on k candidates, not the
    # whole vocabulary. They stay in id order, as a draw over every id would see them.
    ids = np.arange(len(logits))
    if 0 < settings.top_k < len(logits):
        ids = np.flatnonzero(logits >= np.partition(logits, -settings.top_k)[-settings.top_k])
    chosen = logits[ids].astype(np.float64)
    # Shifted so the largest is 0: a tiny temperature then makes -inf, never inf - inf.
    probs = np.exp((chosen - chosen.max()) / settings.temperature)
    if settings.top_p < 1.0:
        probs /= probs.sum()
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep tokens until the cumulative probability first reaches top_p (at least one).
        dropped = order[int(np.searchsorted(cumulative, settings.top_p)) + 1 :]
        probs[dropped] = 0.0
    if settings.min_p > 0.0:
        probs[probs < settings.min_p * probs.max()] = 0.0
    # The draw: one uniform number against the cumulative weights (what rng.choice does,
    # without its checks, which cost more than the rest of this function).
    cumulative = np.cumsum(probs)
    at = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(ids[min(at, len(ids) - 1)])
