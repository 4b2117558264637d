"""The model card: a Hugging Face style README.md that travels with an exported model.

It opens with YAML front matter (license, datasets, tags, and a `model-index` with the
evaluation numbers, which the Hub shows beside the model), then says in plain English what
the model is, what it learned from, how to run it, how well it does and what it cannot do.

Everything comes from arguments: the model's config (the "model" section of a checkpoint's
config.json), its parameter count, and the two reports the pipeline writes,
reports/metrics.json (evaluate) and reports/export.json (export). A report that is missing
shows up as "not measured" rather than as an error, so a card can be made at any point.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

LICENSE = "mit"  # pyproject.toml: license = { text = "MIT" }
TAGS = ["gpt", "llama", "from-scratch", "onnx", "bardlet"]

# Where the training text came from (params.yaml `download.sources` pins the exact files).
# Hub ids for the front matter: the same Tiny Shakespeare text is on the Hub as
# karpathy/tiny_shakespeare; OASST1 is OpenAssistant's own release.
DATASETS = ["karpathy/tiny_shakespeare", "OpenAssistant/oasst1"]
SHAKESPEARE_URL = "https://github.com/karpathy/char-rnn/tree/master/data/tinyshakespeare"
OASST_URL = "https://huggingface.co/datasets/OpenAssistant/oasst1"

NOT_MEASURED = "not measured"

# (key in reports/metrics.json, model-index metric type, human name, decimals)
METRICS = [
    ("bpb", "bits_per_byte", "bits per byte", 3),
    ("loss", "loss", "loss (nats per token)", 3),
    ("perplexity", "perplexity", "perplexity (per token)", 1),
    ("rouge_l", "rougeL", "ROUGE-L of greedy replies", 3),
]
# (key in reports/metrics.json, dataset name, Hub id, what was measured, metrics it has)
EVALUATIONS = [
    (
        "shakespeare",
        "Tiny Shakespeare",
        "karpathy/tiny_shakespeare",
        "validation: the last 10% of the file's bytes (nanoGPT's split)",
        ("bpb", "loss", "perplexity"),
    ),
    (
        "oasst",
        "OpenAssistant OASST1 (English)",
        "OpenAssistant/oasst1",
        "validation conversations (split by message tree), assistant tokens only",
        ("bpb", "loss", "perplexity", "rouge_l"),
    ),
]


def read_report(path: Path) -> dict[str, Any] | None:
    """A JSON report, or None when it does not exist (yet) or is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def render_model_card(
    model_config: Mapping[str, Any],
    num_params: int,
    metrics: Mapping[str, Any] | None = None,
    export_report: Mapping[str, Any] | None = None,
    *,
    name: str = "bardlet",
    library_name: str = "transformers",
) -> str:
    """README.md text for a model with this config (GPTConfig fields) and these reports."""
    front_matter = {
        "license": LICENSE,
        "language": ["en"],
        "library_name": library_name,
        "pipeline_tag": "text-generation",
        "tags": TAGS,
        "datasets": DATASETS,
        "model-index": [{"name": name, "results": _model_index_results(metrics)}],
    }
    header = "---\n" + yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True) + "---\n"
    sections = [
        _what_it_is(name, model_config, num_params),
        _training_data(),
        _how_to_run(),
        _evaluation(metrics, export_report),
        _limitations(),
        _how_it_was_made(model_config),
    ]
    return header + "\n" + "\n\n".join(section.strip() for section in sections) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain file beside the target (not mkstemp, which would make it private: mode 0600).
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- the parts of the card ------------------------------------------------------------------


def _model_index_results(metrics: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One result per dataset that has numbers (the Hub's model-index schema)."""
    results = []
    for key, dataset_name, dataset_id, _, _ in EVALUATIONS:
        measured = (metrics or {}).get(key) or {}
        values = [
            {"type": metric_type, "name": label, "value": round(float(measured[field]), 4)}
            for field, metric_type, label, _ in METRICS
            if isinstance(measured.get(field), int | float)
        ]
        if values:
            results.append(
                {
                    "task": {"type": "text-generation", "name": "Text Generation"},
                    "dataset": {"name": dataset_name, "type": dataset_id, "split": "validation"},
                    "metrics": values,
                }
            )
    return results


def _what_it_is(name: str, config: Mapping[str, Any], num_params: int) -> str:
    tied = "shared with" if config.get("tie_embeddings", True) else "separate from"
    return f"""
# {name}

A tiny chatbot language model trained from scratch with
[bardlet](#how-it-was-made): {num_params:,} parameters, small enough to read every part
of and to run on any CPU. It writes Shakespeare-flavoured English and answers in the
shape of an assistant, not with knowledge.

| | |
| --- | --- |
| architecture | decoder-only transformer, Llama-shaped (RMSNorm, rotary positions, SwiGLU, no biases) |
| parameters | {num_params:,} |
| layers | {config.get("n_layer")} |
| width (hidden size) | {config.get("n_embd")} |
| attention heads | {config.get("n_head")} |
| context | {config.get("block_size")} tokens |
| vocabulary | {config.get("vocab_size"):,} tokens (byte-level BPE, trained on the same data) |
| output head | {tied} the token embedding |
"""


def _training_data() -> str:
    return f"""
## Training data

1. Pretraining: [Tiny Shakespeare]({SHAKESPEARE_URL}), about 1 MB of Shakespeare's
   plays (the first 90% of the file; the last 10% is held out).
2. Fine-tuning for chat: [OpenAssistant OASST1]({OASST_URL}), English conversations
   written and ranked by volunteers; the best-ranked path through each message tree,
   loss on the assistant's tokens only.

The chat format, with special tokens that typed text can never produce in bardlet:

```
<|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...
```
"""


def _how_to_run() -> str:
    return """
## How to run it

With bardlet (from the project folder, after `make pipeline`), on onnxruntime:

```bash
bardlet chat                                      # multi-turn chat in the terminal
bardlet generate "ROMEO:" --max-new-tokens 100    # continue a text
```

Anywhere with only numpy and onnxruntime: copy `model.onnx` (or `model.int8.onnx`) and
`bpe.json` from bardlet's `models/onnx/`, and its `scripts/onnx_infer.py`, then

```bash
python onnx_infer.py --model model.onnx --prompt "ROMEO:" --max-new-tokens 50 --seed 1
python onnx_infer.py --model model.onnx --chat
```

The ONNX graph takes `input_ids` and the past keys and values of every layer (empty for
the prompt) and returns the logits and the new keys and values.

With Hugging Face transformers, from the folder that `bardlet export-hf` writes (or its
copy on the Hub):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = "models/hf"  # or the Hub repo id, "USER/NAME"
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
messages = [{"role": "user", "content": "Who are you?"}]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, sanitize_control_tokens=True, return_tensors="pt"
)
output = model.generate(**inputs, max_new_tokens=60)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

`sanitize_control_tokens=True` keeps bardlet's rule that a message which contains
`<|assistant|>` as text cannot forge a turn; likewise pass `split_special_tokens=True`
when you encode untrusted text with `tokenizer(...)` directly.
"""


def _evaluation(metrics: Mapping[str, Any] | None, export_report: Mapping[str, Any] | None) -> str:
    lines = [
        "## Evaluation",
        "",
        "Measured by bardlet's evaluate stage on held-out data. Bits per byte do not depend on",
        "the tokenizer: lower is better, and they compare with character-level models.",
        "",
        "| dataset | " + " | ".join(label for _, _, label, _ in METRICS) + " |",
        "| --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for key, dataset_name, _, what, applicable in EVALUATIONS:
        measured = (metrics or {}).get(key) or {}
        cells = [
            _number(measured.get(field), decimals) if field in applicable else "n/a"
            for field, _, _, decimals in METRICS
        ]
        lines.append(f"| {dataset_name}, {what} | " + " | ".join(cells) + " |")
    if not metrics:
        lines += ["", f"Evaluation: {NOT_MEASURED} (no reports/metrics.json when this was made)."]

    report = export_report or {}
    lines += ["", "ONNX export:", ""]
    parity = report.get("parity_max_abs_diff")
    lines.append(
        f"- largest logit difference between ONNX Runtime and PyTorch: {_number(parity, 1, 'e')}"
    )
    if isinstance(report.get("int8_bpb_delta_percent"), int | float):
        size = _megabytes(report.get("int8_bytes"))
        fp32_size = _megabytes(report.get("onnx_bytes"))
        delta = float(report["int8_bpb_delta_percent"])
        lines.append(
            f"- int8 model: {size} instead of {fp32_size}, bits per byte {delta:+.2f}% "
            f"({_number(report.get('int8_bpb'), 3)} vs {_number(report.get('fp32_bpb'), 3)})"
        )
    else:
        lines.append(f"- int8 model: {NOT_MEASURED}")
    return "\n".join(lines)


def _limitations() -> str:
    return """
## Limitations

- It is tiny. It has learned the look of English and of a dialogue, not facts: it knows
  nothing about the world and cannot follow instructions reliably.
- It often writes nonsense, repeats itself, or mixes Shakespeare into answers.
- English only: the training data is English, and other languages come out as bytes it has
  rarely seen.
- Its data includes text by internet volunteers and plays four centuries old; it can produce
  offensive, biased or false text. Do not use it for anything that matters: it is a
  teaching model.
"""


def _how_it_was_made(config: Mapping[str, Any]) -> str:
    settings = ", ".join(f"`{key}: {value}`" for key, value in config.items())
    return f"""
## How it was made

With bardlet, which trains a small GPT chatbot from scratch, reproducibly, as one DVC
pipeline: its own byte-level BPE tokenizer, pretraining on Tiny Shakespeare, supervised
fine-tuning on OASST1, evaluation, ONNX export (with an int8 variant) and this folder.
Every setting lives in the project's `params.yaml`; the `model` section (and the
vocabulary size from `tokenizer`) gave this network: {settings}.
"""


def _number(value: object, decimals: int, style: str = "f") -> str:
    if not isinstance(value, int | float):
        return NOT_MEASURED
    return f"{float(value):.{decimals}{style}}"


def _megabytes(value: object) -> str:
    return f"{float(value) / 1e6:.1f} MB" if isinstance(value, int | float) else "? MB"
