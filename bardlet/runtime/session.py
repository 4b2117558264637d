"""Text generation on ONNX Runtime with a KV cache: numpy, onnxruntime and the tokenizer only.

The exported graph returns each layer's keys and values ("present"); feeding them back as
"past" means every new token runs the network over one position, not the whole context.

Batched generation without an attention mask: the graph has no mask input (the model's
attention is causal only), so prompts of different lengths cannot be left-padded. Instead
every row advances in lock step, one position per call: the batch is prefilled with the
first `min(len(prompt))` tokens of every prompt, and from then on a row whose prompt is
longer is fed its own next prompt token ("forced") while shorter rows already feed their
sampled tokens. Every row's cache then has the same length at every step, no position
attends to a pad, and each row's tokens are exactly what `stream` gives for that prompt
alone. Rows that finish leave the batch (their slice of the cache is dropped).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bardlet.runtime.sampling import Sampling, sample
from bardlet.tokenizer import Tokenizer

TOKENIZER_FILE = "bpe.json"
METADATA_KEY = "bardlet"


def session_options(threads: int = 0, spin: bool = False) -> ort.SessionOptions:
    """CPU settings for small autoregressive graphs.

    `threads` = intra-op threads (0 = onnxruntime's default, one per core). Nodes run one
    after another (sequential execution, one inter-op thread): a decoding step is a chain of
    small ops, so running branches in parallel only adds thread hand-offs. Idle worker
    threads sleep instead of spinning unless `spin`: on a shared or 2-core machine a spinning
    thread takes the core the busy one needs (bench/inference.py: 2 threads went from ~4.5
    to ~2-3.6 ms/token with spinning off; 1 thread, which never spins, was fastest).
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
    session = ort.InferenceSession(
        str(path), session_options(threads, spin), providers=["CPUExecutionProvider"]
    )
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ValueError(f"{path} has no bardlet metadata: export it with bardlet")
    info: dict[str, Any] = json.loads(meta[METADATA_KEY])
    return session, info


class OnnxLM:
    """An exported bardlet model: `model.onnx` (or `model.int8.onnx`) with `bpe.json` beside it."""

    def __init__(
        self,
        model_path: str | Path,
        threads: int = 0,
        tokenizer_path: str | Path | None = None,
        spin: bool = False,
    ) -> None:
        model_path = Path(model_path)
        if model_path.is_dir():
            model_path = model_path / "model.onnx"
        self.path = model_path
        self.session, self.info = open_session(model_path, threads, spin)
        config = self.info["model"]
        self.n_layer: int = config["n_layer"]
        self.n_head: int = config["n_head"]
        self.head_dim: int = config["n_embd"] // config["n_head"]
        self.block_size: int = config["block_size"]
        self.vocab_size: int = config["vocab_size"]
        tokenizer_path = Path(tokenizer_path or model_path.parent / TOKENIZER_FILE)
        self.tokenizer = Tokenizer.load(tokenizer_path)
        if self.tokenizer.hash != self.info.get("tokenizer_hash"):
            raise ValueError(
                f"{tokenizer_path} is not the tokenizer {model_path.name} was trained with: "
                "re-run `dvc repro export`"
            )
        self._past_names = [
            f"past.{i}.{kind}" for i in range(self.n_layer) for kind in ("key", "value")
        ]

    def empty_cache(self, batch: int = 1) -> list[np.ndarray]:
        shape = (batch, self.n_head, 0, self.head_dim)
        return [np.zeros(shape, dtype=np.float32) for _ in self._past_names]

    def forward(
        self, input_ids: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits (batch, seq, vocab) and the extended cache."""
        feeds = dict(zip(self._past_names, past, strict=True))
        feeds["input_ids"] = np.asarray(input_ids, dtype=np.int64)
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def _check_prompt(self, prompt: Sequence[int]) -> None:
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
    ) -> Generator[int, None, None]:
        """Yield new token ids one by one until a stop id, max_new_tokens or the context end."""
        self._check_prompt(prompt)
        rng = np.random.default_rng(settings.seed)
        budget = min(max_new_tokens, self.block_size - len(prompt))
        penalize = settings.repetition_penalty != 1.0
        # Tokens the repetition penalty sees: the prompt and the reply, never the stop ids
        # (penalising <|end|> because earlier turns ended with it would make replies ramble).
        history = [t for t in prompt if t not in stop_ids] if penalize else []
        ids = np.array([prompt], dtype=np.int64)
        past = self.empty_cache()
        for _ in range(budget):
            logits, past = self.forward(ids, past)
            next_id = sample(logits[0, -1], settings, rng, history)
            if next_id in stop_ids:
                return
            yield next_id
            if penalize:
                history.append(next_id)
            ids = np.array([[next_id]], dtype=np.int64)

    def stream_text(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[str]:
        """`stream`, as pieces of text: a character split over several tokens comes out whole,
        special tokens are left out, and the text ends just before the first of
        `settings.stop` (never shown). Text that could be the start of a stop string is held
        back until it is clear that it is not."""
        decode = self.tokenizer.decode
        stops = settings.stop
        special = set(self.tokenizer.special_tokens.values())
        ids: list[int] = []
        shown = 0
        tokens = self.stream(prompt, max_new_tokens, settings, stop_ids)
        try:
            for token in tokens:
                if token in special:  # a marker, not text: never shown as "<|end|>"
                    continue
                ids.append(token)
                text = decode(ids)
                if text.endswith("\ufffd"):  # maybe a character cut in half: wait for more
                    continue
                cut, end = _stop_cut(text, stops, shown)
                if cut > shown:
                    yield text[shown:cut]
                    shown = cut
                if end:
                    return
            text = decode(ids)
            cut, _ = _stop_cut(text, stops, shown, final=True)
            if cut > shown:
                yield text[shown:cut]
        finally:
            tokens.close()

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
    ) -> list[int]:
        """All the new token ids of `stream` as one list."""
        return list(self.stream(prompt, max_new_tokens, settings, stop_ids))

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int,
        settings: Sampling,
        stop_at_end: bool = True,
    ) -> str:
        """Continue plain text (no chat template). It ends where the model writes `<|end|>`
        (a chat model's end of turn) unless `stop_at_end` is False, and before any of
        `settings.stop`; special tokens never appear in the text."""
        bos = self.tokenizer.special_id("<|bos|>")
        ids = [bos, *self.tokenizer.encode(prompt)]
        stop_ids = [self.tokenizer.special_id("<|end|>")] if stop_at_end else []
        return "".join(self.stream_text(ids, max_new_tokens, settings, stop_ids))

    def stream_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        seeds: Sequence[int | None] | None = None,
    ) -> Iterator[tuple[int, int]]:
        """Generate for several prompts at once; yield (prompt index, token id) as they come.

        Prompts may differ in length (see the module docstring: lock-step decoding with the
        longer prompts' extra tokens fed one per step, no padding). Row i samples with its own
        generator seeded `seeds[i]` (default: `settings.seed` for every row), so its tokens are
        the ones `stream(prompts[i], ...)` gives with that seed.
        """
        if not prompts:
            return
        for prompt in prompts:
            self._check_prompt(prompt)
        if seeds is None:
            seeds = [settings.seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts: give one each")
        rngs = [np.random.default_rng(seed) for seed in seeds]
        budgets = [min(max_new_tokens, self.block_size - len(p)) for p in prompts]
        penalize = settings.repetition_penalty != 1.0
        history = [[t for t in p if t not in stop_ids] if penalize else [] for p in prompts]
        made = [0] * len(prompts)
        active = [i for i, budget in enumerate(budgets) if budget > 0]
        if not active:
            return
        start = min(len(prompts[i]) for i in active)
        ids = np.array([list(prompts[i][:start]) for i in active], dtype=np.int64)
        past = self.empty_cache(len(active))
        position = start  # cache length after the next forward
        while True:
            logits, past = self.forward(ids, past)
            keep: list[int] = []
            feed: list[int] = []
            for row, i in enumerate(active):
                prompt = prompts[i]
                if position < len(prompt):  # still reading this row's prompt
                    keep.append(row)
                    feed.append(prompt[position])
                    continue
                token = sample(logits[row, -1], settings, rngs[i], history[i])
                if token in stop_ids:
                    continue
                yield i, token
                made[i] += 1
                if made[i] < budgets[i]:
                    keep.append(row)
                    feed.append(token)
                    if penalize:
                        history[i].append(token)
            if not keep:
                return
            if len(keep) < len(active):
                past = [layer[keep] for layer in past]
                active = [active[row] for row in keep]
            ids = np.array(feed, dtype=np.int64)[:, None]
            position += 1

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        seeds: Sequence[int | None] | None = None,
    ) -> list[list[int]]:
        """The new token ids for each prompt (see `stream_batch`)."""
        out: list[list[int]] = [[] for _ in prompts]
        for i, token in self.stream_batch(prompts, max_new_tokens, settings, stop_ids, seeds):
            out[i].append(token)
        return out

    def generate_text_batch(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
        seeds: Sequence[int | None] | None = None,
    ) -> list[str]:
        """`generate_text` for several prompts, run as one batch."""
        bos = self.tokenizer.special_id("<|bos|>")
        ids = [[bos, *self.tokenizer.encode(p)] for p in prompts]
        replies = self.generate_batch(ids, max_new_tokens, settings, stop_ids, seeds)
        return [cut_at_stop(self.tokenizer.decode(r), settings.stop) for r in replies]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest of the stop strings."""
    cut, _ = _stop_cut(text, stops, 0, final=True)
    return text[:cut]


def _stop_cut(text: str, stops: Sequence[str], shown: int, final: bool = False) -> tuple[int, bool]:
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
        tail = text[len(text) - size :]
        if any(s.startswith(tail) for s in stops):
            return len(text) - size, False
    return len(text), False
