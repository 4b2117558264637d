"""ONNX export of the GPT with its KV cache, and a parity check in onnxruntime.

The graph takes `input_ids` (batch, seq), `attention_mask` (batch, past_seq + seq; 1 = a token,
0 = left padding, so rows of different lengths can decode in one batch) and, per layer,
`past.{i}.key` / `past.{i}.value` (batch, key/value heads, past_seq, head_dim; past_seq may be
0 for the prompt), and returns `logits`
and `present.{i}.key` / `present.{i}.value`, the cache to feed into the next call. The model's
config, the tokenizer hash and the special token ids travel inside the file as metadata, so
the runtime needs nothing but the .onnx file and the tokenizer.

`quantize_int8` writes the int8 variant (`model.int8.onnx`): weights stored as int8 with a
scale per output channel, activations quantized on the fly (onnxruntime's dynamic
quantization). About 3.5x smaller; measure its quality with
`bardlet.runtime.evaluate.measure_onnx_bpb` against the fp32 graph on the same batches.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from bardlet.files import atomic_path, write_json_atomic
from bardlet.model import GPT
from bardlet.runtime.conversation import STYLES_FILE
from bardlet.runtime.sampling import Style
from bardlet.runtime.session import METADATA_KEY, TOKENIZER_FILE
from bardlet.tokenizer import AnyTokenizer, HFTokenizer
from bardlet.tokenizer.hf import export_hf


class _WithFlatCache(nn.Module):
    """The GPT with its cache as flat tensors: ONNX graphs take and return flat lists."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past_flat: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        logits, _, present = self.model(input_ids, past=past, key_mask=attention_mask)
        return (logits, *[t for kv in present for t in kv])


def cache_names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(n_layer) for kind in ("key", "value")]


def export_onnx(model: GPT, path: Path, opset: int, metadata: dict[str, Any]) -> None:
    """Write `path` (atomically) with dynamic batch, sequence and cache length.

    torch.export traces the model (its cache path writes attention and rotary embedding as
    ONNX's own operators, opset 23), then the exporter translates and optimizes the graph."""
    config = model.config
    model = model.cpu().eval()
    inputs = cache_names(config.n_layer, "past")
    outputs = cache_names(config.n_layer, "present")
    # Two rows and a non-empty past, so no size is specialised to 0 or 1 while tracing.
    dummy_ids = torch.zeros((2, 3), dtype=torch.long)
    dummy_mask = torch.ones((2, 5), dtype=torch.long)
    dummy_past = tuple(torch.zeros(2, config.kv_heads, 2, config.head_dim) for _ in inputs)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    past_seq, total_seq = torch.export.Dim("past_seq"), torch.export.Dim("total_seq")
    dynamic_shapes = (
        {0: batch, 1: seq},
        {0: batch, 1: total_seq},
        tuple({0: batch, 2: past_seq} for _ in inputs),
    )
    with atomic_path(path) as tmp, warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names and deprecations
        program = torch.onnx.export(
            _WithFlatCache(model).eval(),
            (dummy_ids, dummy_mask, *dummy_past),
            input_names=["input_ids", "attention_mask", *inputs],
            output_names=["logits", *outputs],
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
        assert program is not None
        proto = program.model_proto
        _drop_exporter_notes(proto)
        entry = proto.metadata_props.add()
        entry.key = METADATA_KEY
        entry.value = json.dumps({"model": config.to_dict(), **metadata}, sort_keys=True)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))


def _drop_exporter_notes(proto: onnx.ModelProto) -> None:
    """Remove what the exporter notes on each node and value for debugging: the Python stack
    that made it, with absolute file paths and line numbers. Kept, the file's bytes would
    depend on where the repo is cloned (and on model.py's line numbers), so a fresh clone's
    `make pipeline` could not reproduce the committed dvc.lock."""
    graph = proto.graph
    for items in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for item in items:
            del item.metadata_props[:]
    del graph.metadata_props[:]


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs each of its steps, and a warning per optional package it lacks."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def write_model_folder(
    model: GPT,
    tokenizer: AnyTokenizer,
    folder: Path,
    opset: int,
    styles: Mapping[str, Style],
) -> Path:
    """Everything the runtime needs, in `folder`: model.onnx (config, tokenizer hash and
    special ids inside as metadata), the tokenizer (bpe.json, and tokenizer.json for Hugging
    Face) and the chat style presets (styles.json). Returns model.onnx's path."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"tokenizer_hash": tokenizer.hash, "special_tokens": tokenizer.special_tokens}
    export_onnx(model, folder / "model.onnx", opset, metadata)
    if isinstance(tokenizer, HFTokenizer):  # a pretrained model's own tokenizer.json
        tokenizer.save(folder / "tokenizer.json")
    else:  # ours, and its Hugging Face copy
        tokenizer.save(folder / TOKENIZER_FILE)
        export_hf(tokenizer, folder / "tokenizer.json")
    presets = {name: style.model_dump() for name, style in styles.items()}
    write_json_atomic(folder / STYLES_FILE, presets)
    return folder / "model.onnx"


def _torch_steps(model: GPT, prompt: list[int], steps: int) -> list[np.ndarray]:
    """Logits of the prompt, then of `steps` greedy tokens, each from a pass over the whole
    sequence without a cache: the arithmetic training used, which the graph must match."""
    out = []
    with torch.no_grad():
        ids = torch.tensor([prompt])
        logits, _, _ = model(ids)
        out.append(logits[0].numpy())
        for _ in range(steps):
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
            logits, _, _ = model(ids)
            out.append(logits[0, -1:].numpy())
    return out


def check_parity(model: GPT, onnx_path: Path, prompt: list[int], steps: int) -> float:
    """Largest absolute logit difference between PyTorch (whole sequences, as in training) and
    onnxruntime (the prompt, then `steps` tokens fed back one at a time with its KV cache);
    NaN when either side computes a non-finite logit (a model trained into NaN)."""
    model = model.cpu().eval()
    expected = _torch_steps(model, prompt, steps)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    config = model.config
    feeds: dict[str, np.ndarray] = {
        name: np.zeros((1, config.kv_heads, 0, config.head_dim), dtype=np.float32)
        for name in cache_names(config.n_layer, "past")
    }
    feeds["input_ids"] = np.array([prompt], dtype=np.int64)
    worst, total = 0.0, len(prompt)
    for reference in expected:
        feeds["attention_mask"] = np.ones((1, total), dtype=np.int64)
        logits, *present = session.run(None, feeds)
        total += 1
        difference = float(np.abs(logits[0] - reference).max())
        if not np.isfinite(difference):  # NaN weights: max(0.0, nan) would say 0.0
            return float("nan")
        worst = max(worst, difference)
        feeds = dict(zip(cache_names(config.n_layer, "past"), present, strict=True))
        # Feed PyTorch's choice so both sides see the same tokens even if argmax ties differ.
        feeds["input_ids"] = reference[-1:].argmax(-1).reshape(1, 1).astype(np.int64)
    return worst


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    """Write `dst` (atomically): `src` with its weight matrices in int8 (dynamic quantization).

    Quantized: every MatMul whose second input is a weight (attention and MLP projections, the
    output head) and the token embedding's Gather. Activation x activation products (attention
    scores) stay fp32. The bardlet metadata is kept, with `"quantization": "int8-dynamic"`
    added, so the runtime loads the file exactly like model.onnx.
    """
    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in meta:
        raise ValueError(f"{src} has no bardlet metadata: export it with export_onnx first")
    with atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            # Only these: the quantizer would take ONNX's Attention for onnxruntime's own
            # (com.microsoft) Attention and write a QAttention the graph cannot load.
            op_types_to_quantize=["MatMul", "Gather"],
            extra_options={"MatMulConstBOnly": True},
        )
        quantized = onnx.load(str(tmp))
        info = json.loads(meta[METADATA_KEY])
        info["quantization"] = "int8-dynamic" + ("-per-channel" if per_channel else "")
        del quantized.metadata_props[:]
        for key, value in meta.items():
            entry = quantized.metadata_props.add()
            entry.key = key
            entry.value = json.dumps(info, sort_keys=True) if key == METADATA_KEY else value
        onnx.checker.check_model(quantized)
        onnx.save(quantized, str(tmp))
