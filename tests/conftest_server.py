"""Helpers for the chat, server and web tests (imported by them; not a pytest conftest).

`build_tiny_model` makes a random-init GPT with the small test tokenizer and exports it to
ONNX the way tests/test_export_runtime.py does, so these tests never need the pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def params_styles() -> dict:
    """The chat style presets of the repository's params.yaml, as the export stage saves them."""
    from bardlet.config import load_params

    styles = load_params(REPO / "params.yaml").chat.styles
    return {name: style.model_dump(mode="json") for name, style in styles.items()}


STYLES = params_styles()


def tiny_gpt(tokenizer, block_size: int = 64, n_embd: int = 32, logit_scale: float = 1.0):
    """A random-init GPT whose replies have text in them.

    The output head is untied and never favours special tokens: a random model with tied
    embeddings repeats its last input token (`<|assistant|>`, which ends a reply at once)."""
    import torch

    from bardlet.model import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=block_size,
        n_layer=2,
        n_head=2,
        n_embd=n_embd,
        tie_embeddings=False,
        mlp_ratio=8 / 3,
        dropout=0.0,
    )
    model = GPT(config).eval()
    with torch.no_grad():
        # logit_scale > 1 spreads the other logits so far that a special token (logit 0)
        # is never sampled: replies then run to max_tokens instead of stopping at random.
        model.lm_head.weight.mul_(logit_scale)
        model.lm_head.weight[sorted(tokenizer.special_tokens.values())] = 0.0
    return model


def build_tiny_model(
    folder: Path, tokenizer, block_size: int = 64, n_embd: int = 32, logit_scale: float = 1.0
) -> Path:
    """folder/model.onnx, bpe.json and styles.json from `tiny_gpt`; returns the folder."""
    from bardlet.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_gpt(tokenizer, block_size, n_embd, logit_scale)
    export_onnx(model, folder / "model.onnx", 23, {"tokenizer_hash": tokenizer.hash})
    tokenizer.save(folder / "bpe.json")
    (folder / "styles.json").write_text(json.dumps(STYLES))
    return folder


def build_marker_model(folder: Path, tokenizer) -> Path:
    """folder/model.onnx + bpe.json of a random GPT that often writes special tokens (their
    output rows scaled up): with Sampling(temperature=1, top_k=0, seed=0) and the prompt
    <|bos|> "KING:", its first 40 tokens hold <|system|>, then <|end|>, then <|bos|>."""
    import torch

    from bardlet.export import export_onnx
    from bardlet.model import GPT, GPTConfig

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size,
        block_size=64,
        n_layer=2,
        n_head=2,
        n_embd=32,
        tie_embeddings=False,
        mlp_ratio=8 / 3,
        dropout=0.0,
    )
    model = GPT(config).eval()
    with torch.no_grad():
        model.lm_head.weight[sorted(tokenizer.special_tokens.values())] *= 12
    export_onnx(model, folder / "model.onnx", 23, {"tokenizer_hash": tokenizer.hash})
    tokenizer.save(folder / "bpe.json")
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BARDLET_API_KEY", None)
    env.update({"PYTHONUNBUFFERED": "1", "ORT_DISABLE_TELEMETRY": "1", **extra})
    return env


class Server:
    """`bardlet serve` in its own process group on a free loopback port."""

    def __init__(
        self,
        model: Path,
        *args: str,
        env: dict[str, str] | None = None,
        threads: int = 1,
        log: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = log or model.parent / f"server-{self.port}.log"
        self.log = open(log, "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            [PYTHON, "-m", "bardlet.cli", "serve", "--model", str(model), "--port", str(self.port)]
            + ["--threads", str(threads), "--log-level", "warning", *args],
            cwd=REPO,
            env=env or child_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server did not answer /health in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
