"""An exported model on ONNX Runtime with a KV cache: numpy, onnxruntime and the tokenizer only.

The exported graph returns each layer's keys and values ("present"); feeding them back as
"past" means every new token runs the network over one position, not the whole context.
`OnnxLM.stream` yields sampled token ids; bardlet.runtime.generation turns them into text.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bardlet.runtime.sampling import Sampling, sample
from bardlet.tokenizer import AnyTokenizer, load_tokenizer

TOKENIZER_FILE = "bpe.json"
METADATA_KEY = "bardlet"
LOOKUP_TOKENS = 8  # guessed tokens a greedy pass checks at most (see CachedLM.stream)


def session_options(threads: int = 0, spin: bool = False) -> ort.SessionOptions:
    """CPU settings for small autoregressive graphs.

    `threads` = intra-op threads (0 = onnxruntime's default, one per core). Nodes run one
    after another (sequential execution, one inter-op thread): a decoding step is a chain of
    small ops, so running branches in parallel only adds thread hand-offs. Idle worker
    threads sleep instead of spinning unless `spin`: on a shared or 2-core machine a spinning
    thread takes the core the busy one needs (measured in BENCHMARKS.md).
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = one per core), got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def cache_shape(config: dict[str, Any]) -> tuple[int, int]:
    """(heads, head_dim) of each layer's cached keys and values: fewer heads than n_head with
    grouped-query attention (n_kv_head)."""
    return config.get("n_kv_head") or config["n_head"], config["n_embd"] // config["n_head"]


def open_session(
    path: str | Path, threads: int = 0, spin: bool = False
) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """An onnxruntime session for an exported bardlet model, and the metadata inside it."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: run `make pipeline` (or `dvc repro export`) first, "
            "or pass --model PATH/TO/model.onnx"
        )
    try:
        session = ort.InferenceSession(
            str(path), session_options(threads, spin), providers=["CPUExecutionProvider"]
        )
        meta = session.get_modelmeta().custom_metadata_map
        info: dict[str, Any] = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}
    except Exception as error:  # onnxruntime raises its own types for a damaged file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(
            f"{path} is not a readable ONNX model ({reason}): rebuild it with `dvc repro export`"
        ) from None
    if not info:
        raise ValueError(f"{path} has no bardlet metadata: export it with bardlet")
    return session, info


class CachedLM:
    """A language model behind the runtime's generation path: `forward` runs it over new
    tokens with a KV cache; `stream` (below) turns that into sampled token ids. `OnnxLM` is
    the exported graph; the evaluate stage puts the PyTorch model here too, so its replies
    take the path `bardlet chat` takes without exporting first."""

    def __init__(
        self, config: dict[str, Any], tokenizer: AnyTokenizer, lookup_tokens: int = LOOKUP_TOKENS
    ) -> None:
        self.tokenizer = tokenizer
        # Guessed tokens checked per pass (0 = none); see `stream`.
        self.lookup_tokens = lookup_tokens
        self.n_layer: int = config["n_layer"]
        self.cache_heads, self.head_dim = cache_shape(config)
        self.block_size: int = config["block_size"]
        self.vocab_size: int = config["vocab_size"]

    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray], mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (batch, seq, vocab) and the extended cache. `mask` (batch, past + seq): 1 for
        a token, 0 for left padding (rows of different lengths in one batch); all 1 if None."""
        raise NotImplementedError

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        """Each layer's keys and values, holding no position yet."""
        shape = (batch, self.cache_heads, 0, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * self.n_layer)]

    def check_prompt(self, prompt: Sequence[int]) -> None:
        if len(prompt) == 0:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) >= self.block_size:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens but the model's context is "
                f"{self.block_size}: shorten it"
            )

    def stream(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        scores: list[np.ndarray] | None = None,
    ) -> Generator[int, None, None]:
        """Yield new token ids one by one until a stop id, max_new_tokens or the context end.
        `scores`: a list that gets each step's logits (vocab,) before the token is drawn.

        With `self.lookup_tokens` > 0 each step also feeds up to that many guessed tokens
        (`PromptLookup`: what followed the last few tokens where they appeared before) and
        checks them all in the same pass: the token drawn at each position is the one the
        plain loop would draw, and while it equals the guess, the next position's logits are
        the right ones too. So the tokens, the random draws and the scores are those of one
        token a step; only the number of passes changes (one pass reads the weights once,
        whatever its length, and the per-call cost is most of a step here). Each guessed
        position costs 5-12% of a step, so the number guessed follows how they fare:
        2 more after a pass whose guesses were all right, 1 fewer after a wrong one (Hugging
        Face's schedule for assisted generation). Greedy replies only: a sampled reply at the
        styles' temperatures copies earlier text too rarely to pay (BENCHMARKS.md)."""
        self.check_prompt(prompt)
        rng = np.random.default_rng(settings.seed)
        budget = min(max_new_tokens, self.block_size - len(prompt))
        penalize = settings.repetition_penalty != 1.0
        # Tokens the repetition penalty sees: the prompt and the reply, never the stop ids
        # (penalising <|end|> because earlier turns ended with it would make replies ramble).
        history = [t for t in prompt if t not in stop_ids] if penalize else []
        lookup = PromptLookup(prompt)
        feed, past, made = list(prompt), self.empty_cache(), 0
        size = self.lookup_tokens if settings.temperature <= 0 else 0
        while made < budget:
            guess = lookup.guess(min(size, budget - made - 1))
            logits, past = self.forward(np.array([feed + guess], dtype=np.int64), past)
            fed = len(feed)  # positions that hold the text so far; the guesses come after
            for position in range(len(guess) + 1):
                step = logits[0, fed - 1 + position]
                if scores is not None:
                    scores.append(step.copy())  # not a view of every position's logits
                next_id = sample(step, settings, rng, history)
                if next_id in stop_ids:
                    return
                yield next_id
                made += 1
                lookup.append(next_id)
                if penalize:
                    history.append(next_id)
                if position == len(guess) or next_id != guess[position]:
                    break
            if guess:  # guess more after a pass whose guesses were all right, else fewer
                right = position == len(guess)
                size = min(self.lookup_tokens, size + 2) if right else max(1, size - 1)
            # Keep the cache of the guesses that were right; the rest never happened.
            kept = past[0].shape[2] - len(guess) + position
            if kept < past[0].shape[2]:
                past = [layer[:, :, :kept] for layer in past]
            feed = [next_id]


class OnnxLM(CachedLM):
    """An exported bardlet model: `model.onnx` (or `model.int8.onnx`) with `bpe.json` beside it."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        tokenizer_path: str | Path | None = None,
        spin: bool = False,
        lookup_tokens: int = LOOKUP_TOKENS,
    ) -> None:
        model_path = Path(model_path)
        if model_path.is_dir():
            model_path = model_path / "model.onnx"
        self.path = model_path
        self.session, self.info = open_session(model_path, threads, spin)
        tokenizer_path = Path(tokenizer_path or model_path.parent)  # bpe.json or tokenizer.json
        tokenizer = load_tokenizer(tokenizer_path)
        # Not guessing for an int8 graph: it quantizes a pass's activations with one scale for
        # all its positions, so a pass of several positions would not give the logits of one
        # position, and the reply would change.
        lookup_tokens = 0 if self.info.get("quantization") else lookup_tokens
        super().__init__(self.info["model"], tokenizer, lookup_tokens)
        if self.tokenizer.hash != self.info.get("tokenizer_hash"):
            raise ValueError(
                f"{tokenizer_path} is not the tokenizer {model_path.name} was trained with: "
                "re-run `dvc repro export`"
            )
        self._past_names = [
            f"past.{i}.{kind}" for i in range(self.n_layer) for kind in ("key", "value")
        ]
        if "attention_mask" not in {i.name for i in self.session.get_inputs()}:
            raise ValueError(
                f"{model_path} was exported by an older bardlet (no attention_mask input): "
                "re-run `dvc repro export`"
            )

    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray], mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call of the graph (see CachedLM.forward)."""
        feeds = dict(zip(self._past_names, past, strict=True))
        feeds["input_ids"] = np.asarray(input_ids, dtype=np.int64)
        if mask is None:
            batch, seq = feeds["input_ids"].shape
            mask = np.ones((batch, past[0].shape[2] + seq), dtype=np.int64)
        feeds["attention_mask"] = mask
        logits, *present = self.session.run(None, feeds)
        return logits, present


class PromptLookup:
    """Guesses what comes next by copying: finds the last `longest` (then fewer) tokens earlier
    in the text and proposes what followed them there ("prompt lookup decoding", as in
    Hugging Face's `prompt_lookup_num_tokens` and vLLM's n-gram speculator). Free to make: a
    table from each short run of tokens to where it last ended, kept up to date per token."""

    def __init__(self, ids: Sequence[int], longest: int = 3) -> None:
        self.ids: list[int] = []
        self.sizes = range(longest, 0, -1)
        self.ends: dict[tuple[int, ...], int] = {}  # a run of tokens -> the index after it
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        # The run that ends here is followed by `token`: remember where, before adding it.
        end = len(self.ids)
        for size in self.sizes:
            if end >= size:
                self.ends[tuple(self.ids[end - size :])] = end
        self.ids.append(token)

    def guess(self, count: int) -> list[int]:
        """`count` tokens that followed the latest copy of the longest run at the text's end."""
        if count <= 0:
            return []
        for size in self.sizes:
            start = self.ends.get(tuple(self.ids[-size:])) if len(self.ids) >= size else None
            if start is not None:
                # Past the end the copy reads its own output: a loop goes on looping.
                guess = self.ids[start : start + count]
                period = len(self.ids) - start
                while len(guess) < count:
                    guess.append(guess[-period])
                return guess
        return []
