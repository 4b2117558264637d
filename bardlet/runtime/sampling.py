"""Choosing the next token from logits, in numpy.

The steps, in the order they apply (each is off at its default, so `Sampling()` with only
temperature, top_k, top_p and seed behaves as it always did):

1. repetition penalty (CTRL, Keskar et al. 2019): every token id already in `previous`
   (the prompt and the reply so far) gets its logit divided by the penalty if positive,
   multiplied by it if negative. Applies to greedy decoding too.
2. temperature 0: greedy, the most likely token. Otherwise logits / temperature, then
3. top-k: keep the k most likely tokens,
4. top-p (nucleus): keep the smallest set of tokens whose probability reaches p,
5. min-p: drop tokens less likely than min_p x the probability of the most likely token,
6. draw one token from what is left with the seeded generator.

Stop tokens and stop strings are not sampling: `OnnxLM.stream` ends at a stop id, and
`OnnxLM.stream_text` / `generate_text` end before the first of `Sampling.stop` strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Sampling:
    temperature: float = 0.8  # 0 = greedy (always the most likely token)
    top_k: int = 50  # keep the k most likely tokens (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1 = all)
    seed: int | None = None
    min_p: float = 0.0  # drop tokens below min_p x the top token's probability (0 = off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already seen (1 = off)
    stop: tuple[str, ...] = ()  # the text ends before the first of these strings

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a bare string would be taken letter by letter
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (self.top_k >= 0, "top_k must be >= 0 (0 = all tokens)"),
            (0 <= self.top_p <= 1, "top_p must be in [0, 1] (1 = off)"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1) (0 = off)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
            (all(self.stop), "stop strings must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; got {self}")


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
