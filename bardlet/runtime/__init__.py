"""Inference on ONNX Runtime: numpy + onnxruntime + the tokenizer, never torch.

A deployed chatbot needs only these three; tests/test_export_runtime.py and
tests/test_runtime.py prove that importing this package does not import torch.

- `OnnxLM`: load `model.onnx` (or `model.int8.onnx`) + `bpe.json`; `stream`, `stream_text`,
  `generate_text`, batched `stream_batch` / `generate_batch` / `generate_text_batch`.
- `Sampling` / `sample`: greedy, temperature, top-k, top-p, min-p, repetition penalty,
  stop strings, seed.
- `measure_onnx_bpb`: loss and bits per byte of an exported graph (fp32 vs int8).
"""

from bardlet.runtime.evaluate import measure_onnx_bpb
from bardlet.runtime.sampling import Sampling, sample
from bardlet.runtime.session import OnnxLM, cut_at_stop, open_session, session_options

__all__ = [
    "OnnxLM",
    "Sampling",
    "cut_at_stop",
    "measure_onnx_bpb",
    "open_session",
    "sample",
    "session_options",
]
