"""Bits per byte of a project's models on each pretraining source and on the chats, side by side.

    PYTHONPATH=. .venv/bin/python bench/source_bpb.py ../run-a ../run-b --json bench/results/corpus_mix.json
    PYTHONPATH=. .venv/bin/python bench/source_bpb.py . --quick    # 5 batches per number: seconds

Each argument is a project folder after `make pipeline`; its models/base and models/chat are
scored as the evaluate stage scores, one pretraining source at a time (bits per byte compare
across tokenizers), with the ROUGE-L of its reports/metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import common  # bench/common.py: this script's folder is on sys.path

from bardlet.markdown import table


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
    sources = sorted({s for r in results for s in r["scores"]["base"]} - {"chats"})
    header = [
        "pretrained on",
        *(f"base, {s} val" for s in sources),
        *(f"chat, {s} val" for s in sources),
        "chat, chats val (assistant)",
        "chat ROUGE-L",
    ]
    cells = [
        (
            " + ".join(r["corpus"]),
            *(
                f"{r['scores'][m][s]:.4f}" if s in r["scores"][m] else ""
                for m in ("base", "chat")
                for s in sources
            ),
            f"{r['scores']['chat']['chats']:.4f}",
            f"{r['rouge_l']:.4f}" if r["rouge_l"] is not None else "",
        )
        for r in results
    ]
    return table(header, cells, align="lr")


def main() -> None:
    parser = common.parser(__doc__, "5 batches per number")
    parser.add_argument("projects", nargs="+", type=Path, help="project folders after a run")
    args = common.parse(parser)
    import stages  # noqa: F401  (before torch: the CPU kernels the stages use)

    results = []
    for project in args.projects:
        common.require(project.resolve(), "models/chat/model.safetensors")
        results.append(score(project.resolve(), 5 if args.quick else None))
    text = markdown(results)
    print(text)
    common.save(args.json, {**common.run_info(), "results": results, "table": text})


if __name__ == "__main__":
    main()
