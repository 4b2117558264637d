"""Continuous batching: one decode loop per model, shared by every request the server has.

A request's prompt runs alone (its own prefill, so its first token comes at once); then the
request joins the running batch at the next token boundary, and leaves it when it finishes
(a stop token, its token budget, or its client gone). Each decoding step runs every row at
once: one graph call for the batch instead of one per request, which is where the speed-up
comes from (a step of this small model costs per-call overhead far more than arithmetic).

Rows have different lengths. The batch's KV cache is padded on the left to the longest row,
and `attention_mask` (1 = token, 0 = padding) tells the graph which cached keys are real: a
row's positions count its own tokens only, so a row computes what it would alone (up to
floating-point rounding: a batched matrix product may add in another order; the tests
measure the difference). When the longest row leaves, columns that are padding in every
row are cut off, so the cache is never longer than the longest row still running.

Each request samples with its own random generator and settings, exactly as
`OnnxLM.stream` does: a seeded request draws the same tokens in a batch as alone.
Back-pressure: at most `max_batch` rows run and `max_waiting` requests wait; past that,
`stream` raises `Busy` at once (the server answers 429 with Retry-After). A beam search runs
its beams outside the loop, but `hold` counts them against the same `max_batch`.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from bardlet.runtime.sampling import Sampling, sample
from bardlet.runtime.session import OnnxLM

_END = object()  # what a request's queue gets after its last token


class Busy(Exception):
    """Every batch slot and waiting place is taken: try again in `retry_after` seconds."""

    def __init__(self, waiting: int, retry_after: int = 1) -> None:
        super().__init__(f"the server is busy ({waiting} requests waiting): retry shortly")
        self.retry_after = retry_after


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    budget: int
    settings: Sampling
    stop_ids: tuple[int, ...]
    scores: list[np.ndarray] | None
    rng: np.random.Generator = field(init=False)
    history: list[int] = field(init=False)
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    made: int = 0  # tokens drawn so far
    last: int = -1  # the newest token: the row's next input
    cancelled: bool = False

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.settings.seed)
        penalize = self.settings.repetition_penalty != 1.0
        # As in OnnxLM.stream: the repetition penalty never sees the stop ids.
        self.history = [t for t in self.prompt if t not in self.stop_ids] if penalize else []

    def draw(self, logits: np.ndarray) -> bool:
        """Draw the next token from `logits` (vocab,) and hand it to the reader; True if the
        request is finished (a stop token or its budget)."""
        if self.scores is not None:
            self.scores.append(logits.copy())  # a view would keep the whole batch step alive
        token = sample(logits, self.settings, self.rng, self.history)
        self.made += 1
        if token in self.stop_ids:
            return True
        self.out.put(token)
        if self.settings.repetition_penalty != 1.0:
            self.history.append(token)
        self.last = token
        return self.made >= self.budget


class Tokens(Iterator[int]):
    """One request's token ids as they are drawn. `close()` (or dropping it) tells the
    decode loop the reader is gone: a waiting request leaves the queue at once, a running
    row leaves the batch at the next token."""

    def __init__(self, request: _Request, batcher: Batcher) -> None:
        self._request, self._batcher = request, batcher

    def __next__(self) -> int:
        item = self._request.out.get()
        if item is _END:
            self._request.out.put(_END)  # a later next() ends again instead of blocking
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        token: int = item
        return token

    def ready(self) -> bool:
        """True if a token (or the end) is waiting: next() will not block."""
        return not self._request.out.empty()

    def close(self) -> None:
        self._batcher.cancel(self._request)

    __del__ = close


class Batcher:
    """The decode loop of one `OnnxLM`, in a daemon thread. `stream` has the signature of
    `OnnxLM.stream`, so `Generation(..., stream=batcher.stream)` runs a reply in the batch."""

    def __init__(self, lm: OnnxLM, max_batch: int = 32, max_waiting: int = 64) -> None:
        if max_batch < 1 or max_waiting < 0:
            raise ValueError("max_batch must be >= 1 and max_waiting >= 0")
        self.lm, self.max_batch, self.max_waiting = lm, max_batch, max_waiting
        self._waiting: deque[_Request] = deque()
        self._wake = threading.Condition()
        self.running: list[_Request] = []
        self._joining = 0  # taken from the queue, still in prefill: they hold batch slots too
        self._held = 0  # rows decoded outside the loop (beam searches) that count against max_batch
        self._past: list[np.ndarray] = []  # per layer key and value: (rows, heads, cols, dim)
        self._mask = np.zeros((0, 0), dtype=np.int64)  # (rows, cols): 1 = token, 0 = padding
        self.tokens_drawn = 0  # over the server's life: tests watch it stop after a disconnect
        threading.Thread(target=self._loop, name="bardlet-batcher", daemon=True).start()

    def stream(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        scores: list[np.ndarray] | None = None,
    ) -> Tokens:
        """Queue a request (raising `Busy` at once if the queue is full) and return its
        tokens as they come."""
        self.lm.check_prompt(prompt)
        budget = min(max_new_tokens, self.lm.block_size - len(prompt))
        request = _Request(list(prompt), budget, settings, tuple(stop_ids), scores)
        with self._wake:
            free_slots = max(0, self._free_rows())
            if len(self._waiting) >= self.max_waiting + free_slots:
                raise Busy(len(self._waiting))
            self._waiting.append(request)
            self._wake.notify()
        return Tokens(request, self)

    def _free_rows(self) -> int:
        return self.max_batch - len(self.running) - self._joining - self._held

    def hold(self, rows: int) -> None:
        """Count `rows` decoded elsewhere (a beam search's beams) against max_batch until
        `release(rows)`; `Busy` at once if they do not fit now, or requests are waiting."""
        with self._wake:
            if self._waiting or self._free_rows() < min(rows, self.max_batch):
                raise Busy(len(self._waiting))
            self._held += rows

    def release(self, rows: int) -> None:
        with self._wake:
            self._held -= rows
            self._wake.notify()

    def cancel(self, request: _Request) -> None:
        """The reader is gone. Still waiting: out of the queue now (its place is free for the
        next request). Running or prefilling: the loop drops the row at the next token."""
        with self._wake:
            request.cancelled = True
            if request in self._waiting:
                self._waiting.remove(request)
                self._finish(request)

    def load(self) -> dict[str, int]:
        """How many requests run and wait now, and tokens drawn so far (for /health)."""
        waiting = len(self._waiting)
        return {"running": len(self.running), "waiting": waiting, "tokens_drawn": self.tokens_drawn}

    # ------------------------------------------------------------------ the loop thread

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self.running and (not self._waiting or self._free_rows() <= 0):
                    self._wake.wait()  # woken by a new request, or rows released
                joining: list[_Request] = []
                while self._waiting and len(joining) < self._free_rows():
                    joining.append(self._waiting.popleft())
                self._joining = len(joining)
            try:
                for request in joining:
                    self._prefill(request)
                    with self._wake:  # now in self.running (or finished)
                        self._joining -= 1
                if self.running:
                    self._step()
            except Exception as error:  # a failing graph call fails every request in it
                for request in [*joining, *self.running]:
                    request.out.put(error)
                self.running, self._past, self._joining = [], [], 0
                self._mask = np.zeros((0, 0), dtype=np.int64)

    def _prefill(self, request: _Request) -> None:
        """Run the prompt alone, draw the first token, and add the row to the batch."""
        if request.cancelled:
            return self._finish(request)
        if request.budget <= 0:
            return self._finish(request)
        logits, past = self.lm.forward(np.array([request.prompt]), self.lm.empty_cache())
        self.tokens_drawn += 1
        if request.draw(logits[0, -1]):
            return self._finish(request)
        width, length = self._mask.shape[1], len(request.prompt)
        if self.running and length > width:  # the new row is the longest: pad the others
            self._past = [
                np.pad(p, ((0, 0), (0, 0), (length - width, 0), (0, 0))) for p in self._past
            ]
            self._mask = np.pad(self._mask, ((0, 0), (length - width, 0)))
            width = length
        if not self.running:
            width = length
        pad = width - length
        past = [np.pad(p, ((0, 0), (0, 0), (pad, 0), (0, 0))) for p in past]
        row = np.concatenate([np.zeros(pad, np.int64), np.ones(length, np.int64)])[None]
        if self.running:
            self._past = [
                np.concatenate(pair, axis=0) for pair in zip(self._past, past, strict=True)
            ]
            self._mask = np.concatenate([self._mask, row])
        else:
            self._past, self._mask = past, row
        self.running.append(request)

    def _step(self) -> None:
        """One token for every running row; rows that finish (or whose reader left) leave."""
        ids = np.array([[request.last] for request in self.running], dtype=np.int64)
        mask = np.concatenate([self._mask, np.ones((len(self.running), 1), np.int64)], axis=1)
        keep = [i for i, request in enumerate(self.running) if not request.cancelled]
        if len(keep) < len(self.running):  # readers gone: no work for their rows
            self._keep(keep, self._past, self._mask)
            return
        logits, present = self.lm.forward(ids, self._past, mask)
        self.tokens_drawn += len(self.running)
        keep = []
        for i, request in enumerate(self.running):
            if request.draw(logits[i, -1]):
                self._finish(request)
            else:
                keep.append(i)
        self._keep(keep, present, mask)

    def _keep(self, rows: list[int], past: list[np.ndarray], mask: np.ndarray) -> None:
        """Keep these rows of the batch (ending the others) and cut columns of padding only."""
        for i, request in enumerate(self.running):
            if i not in rows and request.cancelled:
                self._finish(request)
        if len(rows) < len(self.running):
            past, mask = [p[rows] for p in past], mask[rows]
            self.running = [self.running[i] for i in rows]
            used = mask.any(axis=0)
            first = int(used.argmax()) if used.any() else mask.shape[1]
            past, mask = [p[:, :, first:] for p in past], mask[:, first:]
        self._past, self._mask = past, mask

    @staticmethod
    def _finish(request: _Request) -> None:
        request.out.put(_END)
