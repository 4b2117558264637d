"""The one generation path: prompt ids -> sampled ids -> text pieces, ended by stop strings.

Every front end goes through `Generation`: the terminal chat, the HTTP server, `bardlet
generate` and the samples the evaluate stage writes, so what you read in reports/samples.md
is what the chat would say. The model's tokens become text with an incremental UTF-8
decoder (a character split over two tokens comes out whole, at no cost per token); special
tokens are markers, never text; a stop string ends the text before it, and text that could
be the start of one is held back until it is clear that it is not.
"""

from __future__ import annotations

import codecs
import contextlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from bardlet.runtime.sampling import Sampling
from bardlet.runtime.session import CachedLM


class TokenIds(Protocol):
    """A reply's token ids as they are drawn; `close()` stops making more."""

    def __iter__(self) -> Iterator[int]: ...
    def __next__(self) -> int: ...
    def close(self) -> None: ...


# Makes a reply's token ids: (prompt, max_new_tokens, settings, stop_ids, scores) -> ids.
TokenSource = Callable[
    [list[int], int, Sampling, tuple[int, ...], list[np.ndarray] | None], TokenIds
]


class Generation:
    """One reply: `pieces()` yields its text; then `finish_reason` ("stop" or "length") and
    `usage()` say how it ended. `stop_ids` are the tokens that end it (a chat model's
    `<|end|>`, say); other special tokens are dropped from the text. With `top_logprobs`
    (0 or more), `logprobs()` gives each token's log-probability and that many alternatives.
    `stream` makes the token ids: `lm.stream` (this reply alone) by default, or a
    `Batcher.stream` (the server's shared decode loop), which queues the request at once."""

    def __init__(
        self,
        lm: CachedLM,
        prompt: Sequence[int],
        max_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        top_logprobs: int | None = None,
        stream: TokenSource | None = None,
    ) -> None:
        lm.check_prompt(prompt)
        self.lm, self.prompt, self.settings = lm, list(prompt), settings
        self.stop_ids = tuple(stop_ids)
        self.budget = min(max_tokens, lm.block_size - len(self.prompt))
        self.tokens: list[int] = []  # every sampled id, special ones included
        self.finish_reason = "stop"
        self.top_logprobs = top_logprobs
        self.scores: list[np.ndarray] | None = None if top_logprobs is None else []
        source = stream or lm.stream
        self._ids = source(self.prompt, self.budget, settings, self.stop_ids, self.scores)

    def pieces(self) -> Generator[str, None, None]:
        tokenizer = self.lm.tokenizer
        special = set(tokenizer.special_tokens.values())
        stops = self.settings.stop
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text, shown = "", 0
        ids = self._ids
        try:
            for token in ids:
                self.tokens.append(token)
                if token in special:
                    continue
                text += decoder.decode(tokenizer.token_bytes(token))
                cut, stopped = stop_cut(text, stops, shown)
                if cut > shown:
                    yield text[shown:cut]
                    shown = cut
                if stopped:
                    return
        finally:
            ids.close()
        text += decoder.decode(b"", final=True)
        cut, _ = stop_cut(text, stops, shown, final=True)
        if cut > shown:
            yield text[shown:cut]
        if len(self.tokens) >= self.budget:
            self.finish_reason = "length"

    def text(self) -> str:
        return "".join(self.pieces())

    def ready(self) -> bool:
        """True if the next token is already made (by a `Batcher`): reading it will not wait."""
        ready = getattr(self._ids, "ready", None)
        return bool(ready and ready())

    def cancel(self) -> None:
        """Stop making tokens (the reader is gone); safe from another thread with a
        `Batcher`, whose rows leave the batch at the next token."""
        # A plain generator running in another thread refuses (ValueError); it ends by itself.
        with contextlib.suppress(ValueError):
            self._ids.close()

    def logprobs(self, first: int = 0) -> list[dict[str, Any]]:
        """OpenAI's `logprobs.content` for the tokens from `first` on (special ones left out):
        each token, its log-probability under the model (before temperature and the other
        settings), its bytes, and the `top_logprobs` most likely tokens at that step."""
        tokenizer = self.lm.tokenizer
        special = set(tokenizer.special_tokens.values())

        def entry(token: int, logprob: float) -> dict[str, Any]:
            data = tokenizer.token_bytes(token)
            text = data.decode("utf-8", errors="replace")
            return {"token": text, "logprob": logprob, "bytes": list(data)}

        entries = []
        for step in range(first, len(self.tokens)):
            token = self.tokens[step]
            if self.scores is None or token in special:
                continue
            row = self.scores[step].astype(np.float64)
            row = row - row.max()
            row -= np.log(np.exp(row).sum())  # log-softmax
            best = np.argsort(-row, kind="stable")[: self.top_logprobs or 0]
            entries.append(
                entry(token, float(row[token]))
                | {"top_logprobs": [entry(int(t), float(row[t])) for t in best]}
            )
        return entries

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": len(self.prompt),
            "completion_tokens": len(self.tokens),
            "total_tokens": len(self.prompt) + len(self.tokens),
        }


def stop_cut(text: str, stops: Sequence[str], shown: int, final: bool = False) -> tuple[int, bool]:
    """How much of `text` may be shown, and whether a stop string ended it.

    With a stop string in the text: everything before it, and True. Otherwise, unless this is
    the final text, hold back the longest tail that is the start of some stop string.
    """
    if not stops:
        return len(text), False
    longest = max(map(len, stops))
    # A stop string cannot start inside text already shown (that tail was held back).
    search_from = max(0, shown - longest)
    found = [i for i in (text.find(s, search_from) for s in stops) if i >= 0]
    if found:
        return max(min(found), shown), True
    if final:
        return len(text), False
    for size in range(min(longest - 1, len(text) - shown), 0, -1):
        if any(s.startswith(text[len(text) - size :]) for s in stops):
            return len(text) - size, False
    return len(text), False


def continue_text(
    lm: CachedLM,
    text: str,
    max_tokens: int,
    settings: Sampling,
    stop_at_end: bool = True,
    stream: TokenSource | None = None,
) -> Generation:
    """A plain-text continuation (no chat template): `<|bos|>` + `text`. It ends where the model
    writes `<|end|>` (a chat model's end of turn) unless `stop_at_end` is False."""
    tokenizer = lm.tokenizer
    prompt = [tokenizer.special_id("<|bos|>"), *tokenizer.encode(text)]
    stop_ids = [tokenizer.special_id("<|end|>")] if stop_at_end else []
    return Generation(lm, prompt, max_tokens, settings, stop_ids, stream=stream)
