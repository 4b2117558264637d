"""Inference on ONNX Runtime: numpy + onnxruntime + the tokenizer, never torch.

A deployed chatbot needs only these three; tests/test_export_runtime.py proves that importing
the runtime does not import torch. Import what you need from its modules:

- `session.OnnxLM`: load `model.onnx` (or `model.int8.onnx`) + `bpe.json`; `stream` token ids
  with a KV cache.
- `sampling.Sampling` / `sampling.sample`: greedy, temperature, top-k, top-p, min-p,
  repetition penalty, seed, stop strings; `sampling.Style`: a preset with a system prompt.
- `generation.Generation`: the one path from prompt ids to text pieces (UTF-8 safe, stop
  strings), used by the chat, the server, `bardlet generate` and the evaluate stage.
- `conversation.fit_conversation`, `conversation.reply`: chat prompts that fit the context;
  the model's reply to one (any special token ends it).
- `conversation.load_styles`, `conversation.with_settings`: the style presets saved beside a
  model; a preset with settings given explicitly, checked by type and range.
- `evaluate.measure_onnx_bpb`: loss and bits per byte of an exported graph (fp32 vs int8).
"""
