"""The model card: the Hugging Face style README.md that travels with an exported model.

Front matter (license, datasets, tags, a `model-index` with the numbers the Hub shows), then
CARD: what the model is, how to run it, its results and limits, how it was made. Numbers come
from reports/metrics.json and export.json; a missing one is "not measured", not an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

import yaml

from bardlet.markdown import fmt, fmt_bytes, table

LICENSE = "mit"  # pyproject.toml: license = { text = "MIT" }
TAGS = ["gpt", "llama", "from-scratch", "onnx", "bardlet"]
NOT_MEASURED = "not measured"
METRICS = {  # key in reports/metrics.json: (model-index type, column heading, decimals)
    "bpb": ("bits_per_byte", "bits per byte", 3),
    "loss": ("loss", "loss (nats per token)", 3),
    "perplexity": ("perplexity", "perplexity (per token)", 1),
    "rouge_l": ("rougeL", "ROUGE-L of greedy replies", 3),
}
DATASETS = {  # key in reports/metrics.json: (name, Hub id, the metrics it has)
    "shakespeare": ("Tiny Shakespeare", "karpathy/tiny_shakespeare", ("bpb", "loss", "perplexity")),
    "oasst": ("OpenAssistant OASST1 (English)", "OpenAssistant/oasst1", tuple(METRICS)),
}
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")  # in the card's first table

CARD = Template("""# $name

A tiny chatbot language model trained from scratch with bardlet: $params parameters, small
enough to read every part of and to run on any CPU. It writes Shakespeare-flavoured English
and answers in the shape of an assistant, not with knowledge.

| | |
| --- | --- |
| architecture | decoder-only transformer, Llama-shaped (RMSNorm, rotary, SwiGLU, no biases) |
| parameters | $params |
| layers / attention heads / width | $n_layer / $n_head / $n_embd |
| context | $block_size tokens |
| vocabulary | $vocab_size tokens (byte-level BPE, trained on the same data) |
| output head | $head the token embedding |

## How to run it

With bardlet (from its project folder, after `make pipeline`), or anywhere with only numpy
and onnxruntime: copy `model.onnx` (or `model.int8.onnx`), `bpe.json` and bardlet's
`scripts/onnx_infer.py`.

```bash
bardlet chat                                      # multi-turn chat in the terminal
bardlet generate "ROMEO:" --max-new-tokens 100    # continue a text
python onnx_infer.py --model model.onnx --chat    # the same without bardlet
python onnx_infer.py --model model.onnx --prompt "ROMEO:" --max-new-tokens 50 --seed 1
```

With Hugging Face transformers, from the folder `bardlet export-hf` writes (or the Hub):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("models/hf")  # or the Hub repo id, "USER/NAME"
model = AutoModelForCausalLM.from_pretrained("models/hf")
messages = [{"role": "user", "content": "Who are you?"}]
inputs = tokenizer.apply_chat_template(
    messages, add_generation_prompt=True, sanitize_control_tokens=True, return_tensors="pt"
)
output = model.generate(**inputs, max_new_tokens=60)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

`sanitize_control_tokens=True` keeps a message that contains `<|assistant|>` as text from
forging a turn; pass `split_special_tokens=True` to `tokenizer(...)` for untrusted text.

## Evaluation

Measured by bardlet's evaluate stage on held-out data: the last 10% of Tiny Shakespeare
(nanoGPT's split) and OASST1's validation conversations (split by message tree; assistant
tokens only). Bits per byte do not depend on the tokenizer: lower is better, and they compare
with character-level models.

$evaluation

ONNX export: the graph's logits match PyTorch's within $parity (a prompt, then cached
steps); int8 model: $int8.

## Limitations

- It is tiny. It has learned the look of English and of a dialogue, not facts: it knows
  nothing about the world and cannot follow instructions reliably.
- It often writes nonsense, repeats itself, or mixes Shakespeare into answers.
- English only: other languages come out as bytes it has rarely seen.
- Its data includes text by internet volunteers and plays four centuries old: it can write
  offensive, biased or false text. It is a teaching model, not for anything that matters.

## How it was made

With bardlet, which trains a small GPT chatbot from scratch as one reproducible DVC pipeline
(every setting in its `params.yaml`): its own byte-level BPE tokenizer, then

1. pretraining on [Tiny Shakespeare][shakespeare], about 1 MB of plays (the first 90% of the
   file; the last 10% is held out);
2. fine-tuning for chat on [OpenAssistant OASST1][oasst1]: the best-ranked path through each
   English conversation tree, loss on the assistant's tokens only, in the format
   `<|bos|> [<|system|> text <|end|>] <|user|> text <|end|> <|assistant|> text <|end|> ...`;
3. evaluation, ONNX export (with an int8 variant) and this card.

[shakespeare]: https://github.com/karpathy/char-rnn/tree/master/data/tinyshakespeare
[oasst1]: https://huggingface.co/datasets/OpenAssistant/oasst1
""")


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
    metrics, export = metrics or {}, export_report or {}
    front_matter = {
        "license": LICENSE,
        "language": ["en"],
        "library_name": library_name,
        "pipeline_tag": "text-generation",
        "tags": TAGS,
        "datasets": [hub_id for _, hub_id, _ in DATASETS.values()],
        "model-index": [{"name": name, "results": model_index(metrics)}],
    }
    int8 = NOT_MEASURED
    if isinstance(allowed := export.get("int8_max_bpb_delta_percent"), int | float):
        int8 = (
            f"{fmt_bytes(export.get('int8_bytes'))} instead of "
            f"{fmt_bytes(export.get('onnx_bytes'))}, bits per byte within {allowed:g}% of fp32"
        )
    tied = model_config.get("tie_embeddings", True)
    card = CARD.substitute(
        {key: fmt(model_config.get(key)) for key in SHAPE},
        name=name,
        params=fmt(num_params),
        head="shared with" if tied else "separate from",
        evaluation=evaluation_table(metrics),
        parity=number(export.get("parity_tolerance"), 1, "e"),
        int8=int8,
    )
    header = yaml.safe_dump(front_matter, sort_keys=False, allow_unicode=True)
    return f"---\n{header}---\n\n{card}"


def model_index(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One result per dataset that has numbers (the Hub's model-index schema)."""
    out = []
    for key, (dataset, hub_id, _) in DATASETS.items():
        measured = metrics.get(key) or {}
        values = [
            {"type": kind, "name": label, "value": round(float(measured[field]), 4)}
            for field, (kind, label, _) in METRICS.items()
            if isinstance(measured.get(field), int | float)
        ]
        if values:
            task = {"type": "text-generation", "name": "Text Generation"}
            data = {"name": dataset, "type": hub_id, "split": "validation"}
            out.append({"task": task, "dataset": data, "metrics": values})
    return out


def evaluation_table(metrics: Mapping[str, Any]) -> str:
    rows = []
    for key, (dataset, _, has) in DATASETS.items():
        measured = metrics.get(key) or {}
        cells = [
            number(measured.get(f), d) if f in has else "n/a" for f, (*_, d) in METRICS.items()
        ]
        rows.append((dataset, *cells))
    text = table(("dataset", *(label for _, label, _ in METRICS.values())), rows, align="lr")
    if not metrics:
        text += f"\n\nEvaluation: {NOT_MEASURED} (no reports/metrics.json when this was made)."
    return text


def number(value: object, decimals: int, style: str = "f") -> str:
    """`value` to `decimals` places (style "e": scientific), or "not measured"."""
    if not isinstance(value, int | float):
        return NOT_MEASURED
    return f"{float(value):.{decimals}{style}}"
