"""Text generation on ONNX Runtime with a KV cache: numpy, onnxruntime and the tokenizer only.

The exported graph returns each layer's keys and values ("present"); feeding them back as
"past" means every new token runs the network over one position, not the whole context.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bardlet.runtime.sampling import Sampling, sample
from bardlet.tokenizer import Tokenizer

TOKENIZER_FILE = "bpe.json"


class OnnxLM:
    """An exported bardlet model: `model.onnx` with `bpe.json` beside it."""

    def __init__(self, model_path: str | Path, threads: int = 0) -> None:
        model_path = Path(model_path)
        if model_path.is_dir():
            model_path = model_path / "model.onnx"
        if not model_path.exists():
            raise FileNotFoundError(
                f"{model_path} not found: run `make pipeline` (or `dvc repro export`) first, "
                "or pass --model PATH/TO/model.onnx"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if "bardlet" not in meta:
            raise ValueError(f"{model_path} has no bardlet metadata: export it with bardlet")
        self.info = json.loads(meta["bardlet"])
        config = self.info["model"]
        self.n_layer = config["n_layer"]
        self.n_head = config["n_head"]
        self.head_dim = config["n_embd"] // config["n_head"]
        self.block_size = config["block_size"]
        tokenizer_path = model_path.parent / TOKENIZER_FILE
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
        feeds["input_ids"] = input_ids.astype(np.int64)
        logits, *present = self.session.run(None, feeds)
        return logits, present

    def stream(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        settings: Sampling,
        stop_ids: Sequence[int] = (),
    ) -> Iterator[int]:
        """Yield new token ids one by one until a stop id, max_new_tokens or the context end."""
        if not prompt:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt) >= self.block_size:
            raise ValueError(
                f"the prompt has {len(prompt)} tokens but the model's context is "
                f"{self.block_size}: shorten it"
            )
        rng = np.random.default_rng(settings.seed)
        budget = min(max_new_tokens, self.block_size - len(prompt))
        ids = np.array([prompt], dtype=np.int64)
        past = self.empty_cache()
        for _ in range(budget):
            logits, past = self.forward(ids, past)
            next_id = sample(logits[0, -1], settings, rng)
            if next_id in stop_ids:
                return
            yield next_id
            ids = np.array([[next_id]], dtype=np.int64)

    def generate_text(self, prompt: str, max_new_tokens: int, settings: Sampling) -> str:
        """Continue plain text (no chat template)."""
        bos = self.tokenizer.special_id("<|bos|>")
        ids = [bos, *self.tokenizer.encode(prompt)]
        return self.tokenizer.decode(list(self.stream(ids, max_new_tokens, settings)))
