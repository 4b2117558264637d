"""Bits per byte of a project's models on each pretraining source and on the chats, side by side.

    PYTHONPATH=. .venv/bin/python bench/source_bpb.py ../run-a ../run-b --json bench/results/corpus_mix.json
    PYTHONPATH=. .venv/bin/python bench/source_bpb.py . --quick    # 5 batches per number: seconds

Each argument is a project folder after `make pipeline` (models/, data/shards/, reports/). For
each, models/base and models/chat are scored as the evaluate stage scores models/chat: every
window of 256 tokens of the pretrain val split, but one source's rows at a time (Tiny
Shakespeare's part of a mixed corpus, ...), and the chats' val split (assistant tokens). Bits per
byte do not depend on the tokenizer, so projects with different corpora (and tokenizers)
compare. ROUGE-L is the project's reports/metrics.json.

Made for the question "pretrain on Tiny Shakespeare alone, or mixed with OASST1's message text?"
(BENCHMARKS.md "Pretraining text"): run the pipeline in two clones, one with
`dvc exp run --set-param 'prepare.corpus=[tinyshakespeare,oasst1]'`, and pass both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import run_info  # bench/common.py: this script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]


def score(root: Path, max_batches: int | None) -> dict[str, Any]:
    import numpy as np

    from bardlet.config import load_params
    from bardlet.data.loaders import PackedConversations, TokenWindows
    from bardlet.data.shards import read_tokens
    from bardlet.evaluation import measure
    from bardlet.tokenizer import Tokenizer
    from bardlet.training import checkpoint

    tokenizer = Tokenizer.load(root / "models/tokenizer/bpe.json")
    lengths = np.array(tokenizer.byte_lengths())
    tokens, sources = read_tokens(root / "data/shards/pretrain/val", tokenizer.hash)
    scores: dict[str, Any] = {}
    for name in ("base", "chat"):
        model, _ = checkpoint.load(root / "models" / name)
        block = model.config.block_size
        row = {}
        for source, rows in sources.items():
            windows = TokenWindows(tokens[rows.start : rows.stop], block, 16, 0).sequential()
            row[source] = measure(model, windows, lengths, max_batches=max_batches)["bpb"]
        chats = PackedConversations.from_split(
            root / "data/shards/sft/val", tokenizer, block, 16, 0
        )
        row["chats"] = measure(model, chats.sequential(), lengths, max_batches=max_batches)["bpb"]
        scores[name] = row
    metrics = json.loads((root / "reports/metrics.json").read_text(encoding="utf-8"))
    corpus = load_params(root / "params.yaml").prepare.corpus
    return {
        "corpus": [s if isinstance(s, str) else s.label for s in corpus],
        "scores": scores,
        "rouge_l": metrics["oasst"].get("rouge_l"),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    from bardlet.markdown import table

    sources = sorted({s for r in results for s in r["scores"]["base"]} - {"chats"})
    cells = []
    for r in results:
        base, chat = r["scores"]["base"], r["scores"]["chat"]
        cells.append(
            (
                " + ".join(r["corpus"]),
                *(f"{base[s]:.4f}" if s in base else "" for s in sources),
                *(f"{chat[s]:.4f}" if s in chat else "" for s in sources),
                f"{chat['chats']:.4f}",
                f"{r['rouge_l']:.4f}" if r["rouge_l"] is not None else "",
            )
        )
    header = " | ".join(
        [
            "pretrained on",
            *(f"base, {s} val" for s in sources),
            *(f"chat, {s} val" for s in sources),
            "chat, chats val (assistant)",
            "chat ROUGE-L",
        ]
    )
    return table(header, cells, align="l" + "r" * (len(cells[0]) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("projects", nargs="+", type=Path, help="project folders after a run")
    parser.add_argument("--quick", action="store_true", help="5 batches per number")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    args = parser.parse_args()
    import stages  # noqa: F401  (before torch: the CPU kernels the stages use)

    results = []
    for project in args.projects:
        root = project.resolve()
        if not (root / "models/chat/model.safetensors").exists():
            sys.exit(f"{root}: no models/chat: run `make pipeline` there first")
        results.append(score(root, 5 if args.quick else None))
    text = markdown(results)
    print(text)
    if args.json:
        from bardlet.files import write_json_atomic

        write_json_atomic(args.json, {**run_info(), "results": results, "table": text})


if __name__ == "__main__":
    main()
