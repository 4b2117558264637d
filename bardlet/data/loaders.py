"""Batches for training and evaluation, as numpy arrays (the trainer turns them into tensors).

Every batch is a pure function of (seed, step): no iterator state to save, so a resumed run
draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from bardlet.data.shards import read_split, rows_as_arrays
from bardlet.tokenizer import AnyTokenizer

# (inputs, targets) shaped (batch, block_size); targets are -1 where no loss is taken.
Batch = tuple[np.ndarray, np.ndarray]


class BatchSource(Protocol):
    def batch(self, step: int) -> Batch: ...


class TokenWindows:
    """Random windows from one long stream of tokens (pretraining on plain text).

    With `mix` ({source: (its range in `tokens`, weight)}) and weights that differ, a window
    comes from a source with probability proportional to its size times its weight, then from
    anywhere inside it: weight 2 makes a source count twice its size. Equal weights (or no mix)
    draw uniformly from the whole stream."""

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        mix: Mapping[str, tuple[range, float]] | None = None,
    ) -> None:
        if len(tokens) <= block_size + 1:
            raise ValueError(
                f"only {len(tokens)} tokens for windows of {block_size + 1}: "
                "lower model.block_size or add text"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self._offsets = np.arange(block_size + 1)
        self._mix: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if mix and len({weight for _, weight in mix.values()}) > 1:
            for name, (span, _) in mix.items():
                if len(span) <= block_size + 1:
                    raise ValueError(
                        f"source {name} has {len(span)} tokens, too few for windows of "
                        f"{block_size + 1}: give it more text or leave it out"
                    )
            firsts = np.array([span.start for span, _ in mix.values()])
            places = np.array([len(span) - block_size - 1 for span, _ in mix.values()])
            shares = np.array([len(span) * weight for span, weight in mix.values()])
            self._mix = firsts, places, shares / shares.sum()

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        if self._mix is None:
            starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size)
        else:
            firsts, places, shares = self._mix
            source = rng.choice(len(shares), size=self.batch_size, p=shares)
            starts = firsts[source] + rng.integers(0, places[source])
        # One fancy-indexing gather for the whole batch: no Python loop over tokens.
        windows = self.tokens[starts[:, None] + self._offsets].astype(np.int64)
        return windows[:, :-1], windows[:, 1:]

    def sequential(self) -> Iterator[Batch]:
        """Every token once, in consecutive non-overlapping windows (for exact evaluation)."""
        span = self.block_size + 1
        n_windows = (len(self.tokens) - 1) // self.block_size
        starts = np.arange(n_windows) * self.block_size
        for first in range(0, n_windows, self.batch_size):
            chunk = starts[first : first + self.batch_size]
            windows = self.tokens[chunk[:, None] + np.arange(span)].astype(np.int64)
            yield windows[:, :-1], windows[:, 1:]


class PackedConversations:
    """Chat conversations packed end to end into fixed-length rows (supervised fine-tuning).

    Each conversation starts with its BOS token and carries its loss mask; targets outside
    the mask (user turns, system prompt, padding) are -1 so they add no loss.
    """

    def __init__(
        self,
        conversations: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        block_size: int,
        batch_size: int,
        seed: int,
        pad_id: int,
    ) -> None:
        if not conversations:
            raise ValueError("no conversations to pack: check the shard stage's output")
        order = np.random.default_rng(seed).permutation(len(conversations))
        tokens = np.concatenate([conversations[i] for i in order]).astype(np.int64)
        mask = np.concatenate([masks[i] for i in order]).astype(bool)
        span = block_size + 1
        n_rows = -(-len(tokens) // span)  # ceil: pad the last row
        padded = n_rows * span - len(tokens)
        tokens = np.concatenate([tokens, np.full(padded, pad_id, dtype=np.int64)])
        mask = np.concatenate([mask, np.zeros(padded, dtype=bool)])
        self.rows = tokens.reshape(n_rows, span)
        self.masks = mask.reshape(n_rows, span)
        self.batch_size = batch_size
        self.seed = seed

    @classmethod
    def from_split(
        cls, split_dir: Path, tokenizer: AnyTokenizer, block_size: int, batch_size: int, seed: int
    ) -> PackedConversations:
        """Pack a chat split written by the shard stage (verified against its manifest)."""
        table = read_split(split_dir, tokenizer.hash)
        return cls(
            rows_as_arrays(table, "tokens"),
            rows_as_arrays(table, "loss_mask"),
            block_size=block_size,
            batch_size=batch_size,
            seed=seed,
            pad_id=tokenizer.special_id("<|pad|>"),
        )

    def _rows(self, index: np.ndarray) -> Batch:
        rows, masks = self.rows[index], self.masks[index]
        targets = np.where(masks[:, 1:], rows[:, 1:], -1)
        return rows[:, :-1], targets

    def batch(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        return self._rows(rng.integers(0, len(self.rows), size=self.batch_size))

    def sequential(self) -> Iterator[Batch]:
        for first in range(0, len(self.rows), self.batch_size):
            yield self._rows(np.arange(first, min(first + self.batch_size, len(self.rows))))
