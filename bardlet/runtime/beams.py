"""Beam search: keep the `num_beams` most likely continuations at every step, not one.

Each step runs all live beams as one batch (they share the prompt's length, so no padding).
Every beam's next-token log-probabilities are added to its total; of all (beam, token)
pairs the best 2 x num_beams are looked at in order: one ending in a stop token is a
finished hypothesis, the others become the next step's beams (at most num_beams). The KV
cache follows: row i of the next step's cache is a copy of the row its beam came from.

A finished hypothesis scores total log-prob / length ** length_penalty (Hugging Face's
convention; length = tokens generated, its stop token included): 0 compares raw totals,
which favours short replies; 1 (the default) compares the mean log-prob per token; above 1
favours longer ones. The search ends when num_beams hypotheses are finished and no live
beam scores better than the worst of them, or at the token budget. Beam search is
deterministic: temperature and the other sampling settings do not apply. 1 beam is greedy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from bardlet.runtime.batching import Batcher
from bardlet.runtime.generation import TokenIds, TokenSource
from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import OnnxLM

MAX_BEAMS = 16


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens, without the stop token
    logprob: float  # their total log-probability (and the stop token's, if it ended so)
    length: int  # tokens scored: len(tokens), + 1 if a stop token ended it
    logits: list[np.ndarray] = field(repr=False)  # each step's logits (vocab,)

    def score(self, length_penalty: float) -> float:
        return self.logprob / max(self.length, 1) ** length_penalty


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(
    lm: OnnxLM,
    prompt: Sequence[int],
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
    stop_ids: Sequence[int] = (),
    stop: threading.Event | None = None,
) -> Hypothesis:
    """The best hypothesis after `prompt` (see the module's docstring). Setting `stop` (from
    another thread: the reader is gone) ends the search at its next step."""
    lm.check_prompt(prompt)
    if not 1 <= num_beams <= MAX_BEAMS:
        raise ValueError(f"num_beams must be between 1 and {MAX_BEAMS}, got {num_beams}")
    budget = min(max_new_tokens, lm.block_size - len(prompt))
    stops = set(stop_ids)
    logits, past = lm.forward(np.array([list(prompt)]), lm.empty_cache())
    live = [Hypothesis([], 0.0, 0, [])]
    finished: list[Hypothesis] = []

    def ranked(found: list[Hypothesis]) -> list[Hypothesis]:
        return sorted(found, key=lambda h: h.score(length_penalty), reverse=True)

    for step in range(budget):
        if stop is not None and stop.is_set():
            break
        rows = logits[:, -1].copy()  # kept in paths: not a view of every prompt position
        totals = np.array([h.logprob for h in live])[:, None] + log_softmax(rows)
        best = np.argsort(-totals, axis=None, kind="stable")[: 2 * num_beams]
        following, sources = [], []
        for flat in best:
            beam, token = divmod(int(flat), totals.shape[1])
            parent = live[beam]
            path = [*parent.logits, rows[beam]]
            total = float(totals[beam, token])
            if token in stops:
                finished.append(Hypothesis(parent.tokens, total, step + 1, path))
                continue
            following.append(Hypothesis([*parent.tokens, token], total, step + 1, path))
            sources.append(beam)
            if len(following) == num_beams:
                break
        finished = ranked(finished)[:num_beams]
        live = following
        if not live or step == budget - 1:
            break
        if len(finished) == num_beams and all(
            h.score(length_penalty) <= finished[-1].score(length_penalty) for h in live
        ):
            break
        ids = np.array([[h.tokens[-1]] for h in live], dtype=np.int64)
        past = [p[sources] for p in past]  # each beam's cache is the one it grew from
        logits, past = lm.forward(ids, past)
    return ranked(finished + live)[0]


class _BeamTokens:
    """The best hypothesis's tokens, searched for on the first `next()`. `close()` may come
    from another thread while the search runs: it stops at its next step. `release` (called
    once: when the search ends, at close, or when dropped) gives back the rows it held."""

    def __init__(
        self,
        search: Callable[[threading.Event], Hypothesis],
        scores: list | None,
        release: Callable[[], None],
    ) -> None:
        self._search, self._scores, self._release = search, scores, release
        self._stop, self._released = threading.Event(), threading.Lock()
        self._tokens: Iterator[int] | None = None

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self._tokens is None:
            try:
                found = self._search(self._stop)
            finally:
                self._give_back()
            if self._scores is not None:
                self._scores.extend(found.logits)
            self._tokens = iter([] if self._stop.is_set() else found.tokens)
        return next(self._tokens)

    def _give_back(self) -> None:
        if self._released.acquire(blocking=False):  # the first call only
            self._release()

    def close(self) -> None:
        self._stop.set()
        self._give_back()

    __del__ = close


def beams(
    lm: OnnxLM, num_beams: int, length_penalty: float = 1.0, batcher: Batcher | None = None
) -> TokenSource:
    """A token source for `Generation(..., stream=...)` that answers with beam search: the
    best hypothesis's tokens, all at once when the search ends (sampling settings unused).
    With a `batcher`, the beams count against its max_batch while they run: `Busy` if they
    do not fit (a server's decode loop and its beam searches share the cores)."""

    def stream(
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        scores: list[np.ndarray] | None = None,
    ) -> TokenIds:
        if num_beams == 1:  # greedy, as Hugging Face does: the same tokens, one at a time
            return lm.stream(prompt, max_new_tokens, Sampling(temperature=0), stop_ids, scores)
        if batcher is not None:
            batcher.hold(num_beams)
        return _BeamTokens(
            lambda stop: beam_search(
                lm, prompt, max_new_tokens, num_beams, length_penalty, stop_ids, stop
            ),
            scores,
            (lambda: batcher.release(num_beams)) if batcher is not None else (lambda: None),
        )

    return stream
